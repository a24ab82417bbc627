"""A plan's `kernels` block through the compiler and the generated script, on one process.

The tiny demo model trained 3 steps from a plan with every dense kernel on the torch path
(rmsnorm, swiglu, rotary, fused_ce) must give the losses and grad norms of the same plan without
the block (1e-5 relative); and 2 steps with `= triton` under TRITON_INTERPRET=1 likewise. The
plans keep the demo's parallelize block, so the swapped layers are recomputed by activation
checkpointing in backward (FSDP2 leaves a one-process run unwrapped; the kernels under FSDP2 on
two ranks are tested in test_kernels_models.py).
"""
import pytest

from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from runtime.metrics import read_metrics

PLAN = '''plan "{name}"
model {{ config = "{config}" }}
mesh {{ dp_shard = 1  device = cpu }}
parallelize {{
  fsdp       "model.layers.*" reshard_after_forward
  checkpoint "model.layers.*"
}}
data {{
  source "stdlib" {{ path = "{corpus}"  format = jsonl }}
  tokenizer = "{tokenizer}"
  max_len = 32
}}
train {{
  steps = 3  global_batch = 4  micro_batch = 2
  optimizer = adamw {{ lr = 1e-2  weight_decay = 0.1 }}
  schedule = constant
}}
{kernels}
'''
OPS = ("rmsnorm", "swiglu", "rotary", "fused_ce")


def kernels_block(impl, ops=OPS):
    return "kernels { " + "  ".join(f"{op} = {impl}" for op in ops) + " }" if impl else ""


@pytest.fixture(scope="module")
def compile_plan(tmp_path_factory, demo_assets, small_corpus, tiny_llama):
    d = tmp_path_factory.mktemp("kernels_plan")

    def make(name, impl, config=tiny_llama, ops=OPS, train_extra=""):
        plan = d / f"{name}.veo"
        text = PLAN.format(name=name, config=config, corpus=small_corpus,
                           tokenizer=demo_assets["tokenizer"], kernels=kernels_block(impl, ops))
        plan.write_text(text.replace("schedule = constant", f"schedule = constant  {train_extra}"))
        checked = check_file(str(plan))
        assert checked.ok, [str(x) for x in checked.diagnostics]
        script = d / f"train_{name}.py"  # not triton.py: the script's folder comes first on sys.path
        script.write_text(render_script(lower(checked, str(script))))
        return script, checked

    return make


def run(python_run, script, out, steps):
    """Train the compiled script on one process; its metrics records and its output."""
    proc = python_run(script, ["--train.steps", steps, "--train.output", out], log_dir=out / "logs")
    return read_metrics(out / "metrics.jsonl"), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def plain(compile_plan, python_run, tmp_path_factory):
    script, _ = compile_plan("plain", None)
    assert "apply_kernels" not in script.read_text()
    return run(python_run, script, tmp_path_factory.mktemp("plain"), 3)[0]


def assert_same_training(got, ref, steps):
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for a, b in zip(got, ref):
        assert a["tokens"] == b["tokens"], f"step {a['step']}: different batches"
        assert a["lr"] == b["lr"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * abs(b["grad_norm"]), \
            (a["step"], a["grad_norm"], b["grad_norm"])


def test_torch_kernels_train_like_the_unfused_model(compile_plan, python_run, plain, tmp_path):
    script, _ = compile_plan("fused", "torch")
    text = script.read_text()
    assert "apply_kernels(model" in text and "fused_lm_loss_sum(model, batch)" in text
    got, out = run(python_run, script, tmp_path, 3)
    assert "kernels: {'rmsnorm': 'torch', 'swiglu': 'torch', 'rotary': 'torch', 'fused_ce': 'torch'}" in out
    assert_same_training(got, plain, 3)
    assert plain[-1]["loss"] < plain[0]["loss"]  # it trained: not a comparison of untouched models


def test_triton_kernels_under_the_interpreter(compile_plan, python_run, plain, tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # run_python hands this process's environment on
    script, checked = compile_plan("with-triton", "triton")  # a plan named `triton` would shadow the package
    # a CPU plan asking for triton is told what runs instead (a warning, not an error)
    assert {d.rule for d in checked.diagnostics if d.severity == "warning"} >= {"kernel-device"}
    got, out = run(python_run, script, tmp_path, 2)
    assert "kernels: {'rmsnorm': 'triton', 'swiglu': 'triton', 'rotary': 'triton', 'fused_ce': 'triton'}" in out
    assert_same_training(got, plain, 2)


def test_moe_plan_with_fused_loss_keeps_the_router_loss(compile_plan, python_run, tmp_path, repo_root):
    """With fused_ce the model returns no logits, but the MoE load-balancing loss still joins the
    backward: the tiny Qwen3-MoE with fused_ce + grouped experts trains like the plain plan, both
    with a router-loss weight (0.5) large enough that dropping it would move the gradient norm."""
    config = repo_root / "plans/models/tiny-qwen3-moe"
    aux = "moe_aux_loss = 0.5"
    plain_script, _ = compile_plan("moe-plain", None, config=config, train_extra=aux)
    fused_script, _ = compile_plan("moe-fused", "torch", config=config, ops=("fused_ce", "moe"), train_extra=aux)
    for script in (plain_script, fused_script):
        assert "cfg.train.moe_aux_loss" in script.read_text()
    assert "fused_lm_loss_sum(model, batch, with_aux_loss=True)" in fused_script.read_text()
    ref, _ = run(python_run, plain_script, tmp_path / "plain", 2)
    got, out = run(python_run, fused_script, tmp_path / "fused", 2)
    assert "kernels: {'fused_ce': 'torch', 'moe': 'torch'}" in out
    assert_same_training(got, ref, 2)
