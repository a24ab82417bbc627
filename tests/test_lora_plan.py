"""LoRA and activation offloading as plan statements (`train { lora ... }`, `parallelize { offload ... }`):
the estimate counts adapter gradients and optimizer state only and equals the dry run; offloading
shows the activation memory it moves off the device; and through generated scripts on 2 gloo ranks
(FSDP2) a LoRA run trains, checkpoints only its adapters, resumes exactly (in a script without
offloading: the losses are unchanged by it), and exports a peft adapter plus merged HF weights
whose logits equal the adapted model's. The runtime's own layout proofs: tests/test_loop_mp.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from planc.emit import write_script
from planc.estimate import report
from planc.frontend import check_file
from tests.planfix import base_plan, make_workspace

STEPS_LINE = "  steps = 10  global_batch = 8  micro_batch = 2\n"
LORA = '  lora "model.layers.*.self_attn.{q,v}_proj" "model.layers.*.mlp.down_proj"  rank = 4  alpha = 8\n'
OFFLOAD = ('checkpoint "model.layers.*"', 'checkpoint "model.layers.*"\n  offload "model.layers.*"')


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("loraplan"))


def _plan(ws, name: str, *, lora: bool = True, offload: bool = False, out: str = "out") -> Path:
    text = base_plan(ws).replace('plan "base"', f'plan "{name}"').replace(f"{ws}/out", f"{ws}/{out}")
    if lora:
        text = text.replace(STEPS_LINE, STEPS_LINE + LORA)
    if offload:
        text = text.replace(*OFFLOAD)
    path = ws / f"{name}.veo"
    path.write_text(text)
    return path


def _checked(path):
    checked = check_file(str(path), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    return checked


def test_estimate_counts_adapter_states_only(ws):
    """Gradients and AdamW state are the adapters' (counted on a peft-injected model), parameters
    are base + adapters; the dry run's real shards agree (report() raises otherwise)."""
    from runtime import lora, model as models

    rep = report(_checked(_plan(ws, "est")), dry_run=True)
    plain = report(_checked(_plan(ws, "est-plain", lora=False)))
    model = models.build_meta(str(ws / "llama"))
    lora.apply_lora(model, lora.LoraSpec(rank=4, alpha=8, targets=(
        "model.layers.*.self_attn.{q,v}_proj", "model.layers.*.mlp.down_proj")))
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert adapters > 0
    rows = rep.memory.rows
    assert sum(r.parts["grads"] * len(r.ranks) for r in rows) == 4 * adapters
    assert sum(r.parts["optim"] * len(r.ranks) for r in rows) == 2 * 4 * adapters
    total = lambda r: sum(x.parts["params"] * len(x.ranks) for x in r.memory.rows)  # noqa: E731
    assert total(rep) == total(plain) + 4 * adapters
    assert rep.dry is not None and rep.dry.per_rank[0]["grad"] == rows[0].parts["grads"]


def test_offload_estimate_moves_the_checkpointed_inputs(ws):
    """With `checkpoint` on every layer, offloading moves each layer's input to the host: the
    activations drop by layers x rows x tokens x hidden x 4 bytes (fp32), and a note says so."""
    on = report(_checked(_plan(ws, "off-on", lora=False, offload=True))).memory
    off = report(_checked(_plan(ws, "off-off", lora=False))).memory
    cfg = json.loads((ws / "llama" / "config.json").read_text())
    moved = cfg["num_hidden_layers"] * 2 * 64 * cfg["hidden_size"] * 4  # micro_batch 2, max_len 64
    assert off.worst.parts["activations"] - on.worst.parts["activations"] == moved
    assert any(n.startswith("offload: ") and "host memory" in n for n in on.notes), on.notes
    assert not any(n.startswith("offload") for n in off.notes)


def test_script_has_lora_and_offload_only_when_used(ws, tmp_path):
    texts = {}
    for name, kw in (("s-none", dict(lora=False)), ("s-both", dict(offload=True))):
        out, _ = write_script(_checked(_plan(ws, name, **kw)), str(tmp_path / f"{name}.py"))
        texts[name] = Path(out).read_text()
    assert "lora." not in texts["s-none"] and "trainable_only" not in texts["s-none"]
    assert "offload" not in texts["s-none"]
    both = texts["s-both"]
    for needle in ("lora.apply_lora(model, lora_spec)", "lora.materialize(", "trainable_only=True",
                   "lora.export(cfg.checkpoint.dir", 'apply_activation_offload(model, ["model.layers.*"])',
                   '"lora.rank": 4,'):
        assert needle in both, needle
    assert "models.materialize(" not in both and "export.export_hf(" not in both
    # the order that composes: adapters on the plain model, offload outside checkpointing, FSDP last
    order = [both.index(s) for s in ("lora.apply_lora(", "apply_activation_checkpointing(",
                                      "apply_activation_offload(", "apply_fsdp(")]
    assert order == sorted(order)


def _losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}


@pytest.mark.multiproc
def test_lora_script_trains_resumes_and_exports(ws, tmp_path):
    from peft import PeftModel
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.launch import torchrun

    a = Path(write_script(_checked(_plan(ws, "mp-a", offload=True, out="mp-a")), str(tmp_path / "a.py"))[0])
    b = Path(write_script(_checked(_plan(ws, "mp-b", out="mp-b")), str(tmp_path / "b.py"))[0])
    out_a, out_b = ws / "mp-a", ws / "mp-b"
    shutil.rmtree(out_a, ignore_errors=True)
    shutil.rmtree(out_b, ignore_errors=True)
    torchrun(a, 2, ["--train.steps", 4, "--checkpoint.every", 2], log_dir=tmp_path / "la")
    run_a = _losses(out_a / "metrics.jsonl")
    assert sorted(run_a) == [1, 2, 3, 4] and run_a[4] < run_a[1]
    keys = FileSystemReader(str(out_a / "step_2")).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys), model_keys  # adapters only
    assert any(".lora_" in k and "exp_avg" in k for k in keys)  # and their optimizer state
    # the same plan without offloading, resumed from a's step 2: steps 3 and 4 exactly as a ran them
    torchrun(b, 2, ["--train.steps", 4, "--resume", out_a / "step_2", "--checkpoint.export", "none"],
             log_dir=tmp_path / "lb")
    run_b = _losses(out_b / "metrics.jsonl")
    assert {s: run_b[s] for s in (3, 4)} == {s: run_a[s] for s in (3, 4)}, (run_a, run_b)
    # exports: the merged model's logits are the adapted model's (base rebuilt from the seed, as
    # lora.materialize does, with the peft adapter on top)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(ws / "llama")), dtype=torch.float32,
                                            attn_implementation="sdpa")
    ids = torch.arange(4, 36).reshape(2, 16)
    with torch.no_grad():
        before = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(out_a / "adapter")).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out_a / "hf")).eval()(input_ids=ids).logits
    assert (out_a / "hf" / "tokenizer.json").exists()
    # planc verify's export check of a LoRA run: the adapter holds the last checkpoint's tensors
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from planc.verify.export import _check_lora_export

    dcp_to_torch_save(out_a / "step_4", tmp_path / "flat.pt")
    saved = torch.load(tmp_path / "flat.pt", weights_only=False)["model"]
    assert _check_lora_export(out_a, saved, "step_4")["problems"] == []
    first = sorted(saved)[0]
    saved[first] = saved[first] + 1
    assert _check_lora_export(out_a, saved, "step_4")["problems"] == [f"base_model.model.{first.replace('.default.', '.')}: "
                                                                       "differs from the checkpoint"]
    assert not torch.allclose(adapted, before, atol=1e-6)  # training moved the adapters
    torch.testing.assert_close(merged, adapted, atol=2e-5, rtol=1e-5)
