"""generated/demo.py end to end on a tiny model: FSDP2 and HSDP parity with one process, exact
resume (ignoring a crash's leftovers), DCP resharding to one process, and the HF export.

Launches (each a few seconds of compute): 1 process (plain python), FSDP2 on 2, HSDP 2x2 on 4,
and a 2-process run stopped after step 3 then resumed, then that checkpoint resumed on 1 process.
"""
import json
import math

import pytest
import torch

from launch import REPO, torchrun
from runtime.metrics import read_metrics

DEMO = REPO / "generated/demo.py"
STEPS = ["--train.steps", "6", "--checkpoint.every", "3"]
pytestmark = pytest.mark.multiproc


def _metrics(run_dir):
    return read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def single(tmp_path_factory, demo_overrides, python_run):
    d = tmp_path_factory.mktemp("single")
    python_run(DEMO, [*demo_overrides, *STEPS, "--mesh.dp_shard", "1", "--checkpoint.dir", d / "ckpt",
                      "--checkpoint.export", "none"], log_dir=d / "logs")
    return d / "ckpt"


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, demo_overrides):
    d = tmp_path_factory.mktemp("fsdp")
    torchrun(DEMO, 2, [*demo_overrides, *STEPS, "--checkpoint.dir", d / "ckpt"], log_dir=d / "logs")
    return d / "ckpt"


@pytest.fixture(scope="module")
def hsdp(tmp_path_factory, demo_overrides):
    d = tmp_path_factory.mktemp("hsdp")
    torchrun(DEMO, 4, [*demo_overrides, *STEPS, "--mesh.dp_replicate", "2", "--mesh.dp_shard", "2",
                       "--checkpoint.dir", d / "ckpt", "--checkpoint.export", "none"], log_dir=d / "logs")
    return d / "ckpt"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo_overrides):
    """A 2-process run stopped after step 3, a crash's leftovers planted, then --resume auto to 6."""
    d = tmp_path_factory.mktemp("resumed")
    ckpt = d / "ckpt"
    common = [*demo_overrides, "--checkpoint.every", "3", "--checkpoint.dir", ckpt, "--checkpoint.export", "none"]
    torchrun(DEMO, 2, [*common, "--train.steps", "3"], log_dir=d / "logs1")
    first = _metrics(ckpt)
    # what a crash while writing step 5 leaves behind, and a stray step dir without DCP metadata
    (ckpt / "step_5.tmp" / "rng").mkdir(parents=True)
    (ckpt / "step_5.tmp" / "__0_0.distcp").write_bytes(b"partial")
    (ckpt / "step_4").mkdir()
    proc = torchrun(DEMO, 2, [*common, "--train.steps", "6", "--resume", "auto"], log_dir=d / "logs2")
    return {"dir": ckpt, "first": first, "logs": d / "logs2", "stdout": proc.stdout}


@pytest.fixture(scope="module")
def resharded(tmp_path_factory, demo_overrides, resumed, python_run):
    """The 2-process step_3 checkpoint continued on ONE process for one step."""
    d = tmp_path_factory.mktemp("resharded")
    python_run(DEMO, [*demo_overrides, "--mesh.dp_shard", "1", "--train.steps", "4", "--checkpoint.every", "4",
                      "--resume", resumed["dir"] / "step_3", "--checkpoint.dir", d / "ckpt",
                      "--checkpoint.export", "none"], log_dir=d / "logs")
    return d / "ckpt"


def _close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


@pytest.mark.parametrize("layout", ["fsdp", "hsdp"])
def test_parity_with_one_process(layout, single, request):
    ref = _metrics(single)
    got = _metrics(request.getfixturevalue(layout))
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in ref]
    for a, b in zip(got, ref):
        assert a["tokens"] == b["tokens"], f"step {a['step']}: different global batch"
        assert _close(a["loss"], b["loss"], 1e-5), f"step {a['step']} loss {a['loss']} vs {b['loss']}"
        assert _close(a["grad_norm"], b["grad_norm"], 1e-5), \
            f"step {a['step']} grad norm {a['grad_norm']} vs {b['grad_norm']}"
        assert a["lr"] == b["lr"]
    assert all(math.isfinite(r["loss"]) for r in got)


def test_resume_continues_exactly_and_ignores_crash_leftovers(resumed, fsdp):
    full = _metrics(fsdp)
    got = _metrics(resumed["dir"])
    assert [r["step"] for r in resumed["first"]] == [1, 2, 3]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]     # steps 1-3 kept, 4-6 appended once
    for a, b in zip(got, full):  # same data order, weights, optimizer, schedule: bitwise equal
        assert (a["loss"], a["grad_norm"], a["lr"], a["tokens"]) == (b["loss"], b["grad_norm"], b["lr"], b["tokens"]), a["step"]
    rank0 = "".join(p.read_text() for p in resumed["logs"].rglob("*.log"))
    assert "resumed from" in rank0 and "step_3 after step 3" in rank0
    names = sorted(p.name for p in resumed["dir"].iterdir())
    assert "step_3" in names and "step_6" in names  # keep = 2: both kept


def test_checkpoint_saved_on_two_ranks_resumes_on_one(resharded, fsdp):
    got = _metrics(resharded)
    ref = {r["step"]: r for r in _metrics(fsdp)}
    assert [r["step"] for r in got] == [4]  # a new output dir: only the steps run here
    step4 = got[-1]
    # weights, optimizer state and data position of step 3 came from a 2-rank checkpoint
    assert _close(step4["loss"], ref[4]["loss"], 1e-6) and _close(step4["grad_norm"], ref[4]["grad_norm"], 1e-5)
    assert step4["tokens"] == ref[4]["tokens"]


def _dcp_weights(step_dir, config_dir):
    """The model weights of a DCP training checkpoint, loaded on this one process (no process group)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(step_dir))
    model.load_state_dict(state["model"])
    return model


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_export_loads_on_one_process_and_matches_the_checkpoint(fsdp, demo_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = fsdp / "hf"
    exported = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert tok.eos_token == "</s>" and len(tok) == exported.config.vocab_size
    assert json.loads((hf / "config.json").read_text())["model_type"] == "llama"
    ckpt = _dcp_weights(fsdp / "step_6", hf)
    for (k, a), (k2, b) in zip(exported.state_dict().items(), ckpt.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ids = torch.tensor([tok.encode("def main():\n    return 0\n")])
    with torch.no_grad():
        la = exported(input_ids=ids, use_cache=False).logits
        lb = ckpt(input_ids=ids, use_cache=False).logits
    assert torch.equal(la, lb)
    # and training moved the weights away from the seeded init
    from runtime.model import load_config
    torch.manual_seed(0)
    init = AutoModelForCausalLM.from_config(load_config(hf))
    assert not torch.equal(init.model.embed_tokens.weight, exported.model.embed_tokens.weight)


def test_loss_falls(fsdp):
    losses = [r["loss"] for r in _metrics(fsdp)]
    assert losses[-1] < losses[0]


def test_wrong_world_size_is_a_clear_error(demo_overrides, tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(DEMO), *demo_overrides, "--checkpoint.dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "the mesh needs 2 processes (dp_replicate=1 * dp_shard=2 * sp=1 * tp=1) but 1 were launched" in proc.stderr
    assert "Traceback" not in proc.stderr
