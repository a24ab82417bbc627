"""Block diffusion in plans: `train.objective = block_diffusion { ... }` and `model.trust_remote_code`
are checked (one breaking plan per rule, located), compiled into the diffusion step only when a plan
uses them, and the demo's generated script trains on 2 processes; `planc verify` proves it in fp64."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from runtime.metrics import read_metrics
from tests.launch import REPO, torchrun
from tests.planfix import base_plan, make_workspace

CHAT = 'source "web" {{ path = "{ws}/chat.jsonl"  kind = sft }}\n  chat_template = chatml'
OBJECTIVE = "objective = block_diffusion { block = 16  noise = [0.3, 0.8] }"

# each rule -> its breaking edit of the diffusion plan and the text the diagnostic points at
DIFFUSION_CASES = {
    "diffusion-block": ([("block = 16", "block = 24")], "block = 24"),
    "diffusion-mask-token": ([("/tok-mask", "/tok")], "block_diffusion"),
    "diffusion-attention": ([("attention = sdpa", 'attention = flash_attention_2')], "flash_attention_2"),
    "diffusion-layout": ([("dp_shard = 2", "sp = 2"), ('checkpoint "model.layers.*"',
                                                        'sp ulysses "model.layers.*.self_attn"')], "sp ulysses"),
    "diffusion-data": ("pretrain", 'source "web"'),  # the base plan's pretraining source, kept
    "diffusion-loss": ([("checkpoint {", "kernels { fused_ce = torch }\ncheckpoint {")], "fused_ce = torch"),
    "remote-code": ([("/llama", "/remote")], '"{ws}/remote"'),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("diffusion_plan"))
    from runtime.data import load_tokenizer
    from runtime.diffusion import add_mask_token

    tok = load_tokenizer(root / "tok")
    add_mask_token(tok)
    tok.save_pretrained(str(root / "tok-mask"))
    remote = root / "remote"
    remote.mkdir()
    cfg = json.loads((root / "llama" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (remote / "config.json").write_text(json.dumps(cfg))
    return root


def diffusion_plan(ws: Path, pretrain: bool = False) -> str:
    text = base_plan(ws).replace("/tok\"", "/tok-mask\"")
    if not pretrain:
        old = f'source "web" {{ path = "{ws}/data.jsonl"  format = jsonl  text = "text" }}'
        assert old in text
        text = text.replace(old, CHAT.format(ws=ws))
    line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
    return text.replace(line, f"{line}  {OBJECTIVE}\n")


def _check(ws, text, name):
    path = ws / f"{name}.veo"
    path.write_text(text)
    return check_file(str(path)), text


def _locate(text: str, locator: str) -> tuple[int, int]:
    i = text.index(locator)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def test_diffusion_plan_is_clean_and_compiles_the_step_only_when_used(ws):
    checked, _ = _check(ws, diffusion_plan(ws), "clean")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    script = render_script(lower(checked, "generated/x.py"))
    for needle in ("from runtime import diffusion", "diffusion.mask_token_id(tokenizer, cfg.train.mask_token)",
                   "diffusion.noise_step(", "diffusion.loss_sum(model, batch, block=cfg.train.block)",
                   '"train.block": 16'):
        assert needle in script, needle
    assert "cross_entropy_sum" not in script
    plain, _ = _check(ws, base_plan(ws), "plain")
    text = render_script(lower(plain, "generated/y.py"))
    assert "from runtime import diffusion" not in text and "diffusion." not in text and "train.objective" not in text and "trust_remote_code" not in text


@pytest.mark.parametrize("rule", sorted(DIFFUSION_CASES))
def test_diffusion_rules_are_located(ws, rule):
    edits, locator = DIFFUSION_CASES[rule]
    if edits == "pretrain":
        text = diffusion_plan(ws, pretrain=True)
    else:
        text = diffusion_plan(ws)
        for old, new in edits:
            assert old in text, (rule, old)
            text = text.replace(old, new, 1)
    checked, text = _check(ws, text, rule)
    hits = [d for d in checked.diagnostics if d.rule == rule]
    assert hits, (rule, [(d.rule, d.message) for d in checked.diagnostics])
    assert hits[0].severity == "error" and not checked.ok
    assert (hits[0].span.line, hits[0].span.col) == _locate(text, locator.replace("{ws}", str(ws))), hits[0]
    assert hits[0].help


def test_trusted_remote_code_reaches_the_script(ws):
    """A trusted remote-code directory: check says its code runs; the script builds with trust."""
    d = ws / "remote-ok"
    d.mkdir(exist_ok=True)
    (d / "configuration_x.py").write_text("from transformers import LlamaConfig\n\n\nclass XConfig(LlamaConfig):\n"
                                          "    model_type = 'x_diffusion_plan'\n")
    (d / "modeling_x.py").write_text("from transformers import LlamaForCausalLM\n\nfrom .configuration_x import "
                                     "XConfig\n\n\nclass XForCausalLM(LlamaForCausalLM):\n    config_class = XConfig\n")
    cfg = json.loads((ws / "llama" / "config.json").read_text())
    cfg.update(model_type="x_diffusion_plan", architectures=["XForCausalLM"],
               auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    text = diffusion_plan(ws).replace("/llama", "/remote-ok").replace("attention = sdpa",
                                                                       "attention = sdpa\n  trust_remote_code = true")
    checked, _ = _check(ws, text, "trusted")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    assert any("trust_remote_code = true" in n for n in checked.ctx.notes), checked.ctx.notes
    script = render_script(lower(checked, "generated/x.py"))
    assert "trust_remote_code=cfg.model.trust_remote_code" in script and '"model.trust_remote_code": True' in script


@pytest.mark.multiproc
def test_demo_script_trains_on_two_processes(demo_assets, tmp_path):
    """generated/diffusion-demo.py (FSDP2, 2 gloo ranks) on the demo's chats with the mask token:
    finite losses over the masked tokens, a checkpoint and an export."""
    from planc.demo_diffusion import make_diffusion_demo

    demo = make_diffusion_demo(demo_assets["dir"])
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(open(demo["chat"], encoding="utf-8").readlines()[:200]), encoding="utf-8")
    out = tmp_path / "out"
    torchrun(REPO / "generated" / "diffusion-demo.py", 2,
             ["--train.steps", "3", "--checkpoint.every", "3", "--checkpoint.dir", out, "--data.max_len", "128",
              "--data.chat.path", chat, "--data.tokenizer", demo["tokenizer_mask"]], log_dir=tmp_path / "logs")
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3], rows
    assert all(r["tokens"] > 0 and 0 < r["loss"] < 20 for r in rows), rows
    assert (out / "hf" / "config.json").is_file()


@pytest.mark.multiproc
def test_verify_proves_the_diffusion_demo(demo_assets):
    """`planc verify` on plans/diffusion-demo.veo: the generated script on 2 processes against one
    process, in fp64 (the noise is drawn per global row, so both draw the same masks)."""
    from planc.demo_diffusion import make_diffusion_demo

    make_diffusion_demo(demo_assets["dir"])
    out = subprocess.run([sys.executable, "-m", "planc", "verify", "plans/diffusion-demo.veo", "--dtype", "fp64",
                          "--steps", "3", "--data", "demo", "--demo-data", demo_assets["dir"]],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK: diffusion-demo" in out.stdout, out.stdout[-2000:]


def test_sample_from_a_diffusion_export(demo_assets, tmp_path):
    """runtime.diffusion.sample.run (what `planc sample` calls for a diffusion export) loads the
    export and generates block by block: the same ids as the sampler on the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    from planc.demo_diffusion import make_diffusion_demo
    from runtime.data import load_tokenizer
    from runtime.diffusion import generate
    from runtime.diffusion.sample import run
    from runtime.model import load_config

    demo = make_diffusion_demo(demo_assets["dir"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(load_config(REPO / "plans/models/tiny-qwen3-diffusion"))
    model.save_pretrained(tmp_path / "hf")
    tok = load_tokenizer(demo["tokenizer_mask"])
    tok.save_pretrained(str(tmp_path / "hf"))
    text = run(tmp_path / "hf", "def main(argv):", block=8, steps=4, max_new_tokens=12)
    ids = generate(model.eval(), tok("def main(argv):", add_special_tokens=False)["input_ids"], mask_id=demo["mask_id"],
                   block=8, steps=4, gen_length=12, eos_id=tok.eos_token_id)
    assert text == tok.decode(ids.tolist(), skip_special_tokens=True)
    assert "<|mask|>" not in text
    with pytest.raises(SystemExit, match="no single token"):
        run(tmp_path / "hf", "x", block=8, mask_token="<|nomask|>")
    # `planc sample --block` is this sampler (default steps: one token per iteration)
    from contextlib import redirect_stdout
    from io import StringIO

    from planc.cli import main

    out = StringIO()
    with redirect_stdout(out):
        assert main(["sample", str(tmp_path / "hf"), "--prompt", "def main(argv):", "--block", "8",
                     "--max-new-tokens", "12"]) == 0
    assert out.getvalue() == "def main(argv):" + run(tmp_path / "hf", "def main(argv):", block=8,
                                                     max_new_tokens=12) + "\n"


def test_the_estimate_sees_the_doubled_row(ws):
    from planc.estimate.comm import workload

    checked, _ = _check(ws, diffusion_plan(ws), "estimate")
    plain, _ = _check(ws, diffusion_plan(ws).replace("  " + OBJECTIVE + "\n", ""), "estimate-plain")
    assert workload(checked.ctx).seq == 2 * workload(plain.ctx).seq == 2 * checked.plan["data.max_len"]


@pytest.mark.parametrize("edits,rule,locator", [
    ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp loss "lm_head"')], "diffusion-loss", 'tp loss'),
    ([("checkpoint {", 'validation {\n  source "held" { path = "PATH"  kind = sft }\n}\ncheckpoint {')],
     "diffusion-loss", "validation {"),
    ([("checkpoint {", "checkpoint {"), ("objective = block_diffusion", "moe_aux_loss = 0.01\n  objective = block_diffusion")],
     "diffusion-loss", "moe_aux_loss"),
    ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp sequence "model.norm"')], "diffusion-layout",
     "tp sequence"),
])
def test_more_refusals(ws, edits, rule, locator):
    text = diffusion_plan(ws)
    for old, new in edits:
        text = text.replace(old, new, 1)
    checked, text = _check(ws, text, "more")
    hits = [d for d in checked.diagnostics if d.rule == rule]
    assert hits and (hits[0].span.line, hits[0].span.col) == _locate(text, locator), \
        [(d.rule, d.message, d.span) for d in checked.diagnostics]
