"""A model that ships its own modeling code (as LLaDA2 checkpoints do: `auto_map`,
`trust_remote_code`): built by the runtime only when trusted, on the meta device; trained with the
block-diffusion objective; exported with its code; the export reloads and generates."""
from __future__ import annotations

import json
import uuid

import pytest
import torch
from transformers import AutoModelForCausalLM

from runtime import model as models
from runtime.checkpoint.export import export_hf
from runtime.diffusion import generate, loss_sum, noise_batch
from runtime.loss import count_targets
from tests.diffusion_fixtures import MASK_ID, packed_batch

CONFIGURATION = '''from transformers import LlamaConfig


class TinyDiffusionConfig(LlamaConfig):
    model_type = "{model_type}"
'''
MODELING = '''from transformers import LlamaForCausalLM

from .configuration_tiny_diffusion import TinyDiffusionConfig


class TinyDiffusionForCausalLM(LlamaForCausalLM):
    """A decoder whose code lives in the checkpoint directory, not in transformers."""
    config_class = TinyDiffusionConfig
    shipped_with_the_checkpoint = True
'''


@pytest.fixture
def remote_dir(tmp_path):
    """A checkpoint directory with config.json (auto_map) and its own modeling files; a fresh
    model_type per test, so no earlier trusted load in this process has registered it."""
    model_type = f"tiny_diffusion_{uuid.uuid4().hex[:8]}"
    d = tmp_path / "remote"
    d.mkdir()
    (d / "configuration_tiny_diffusion.py").write_text(CONFIGURATION.format(model_type=model_type))
    (d / "modeling_tiny_diffusion.py").write_text(MODELING)
    (d / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["TinyDiffusionForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_tiny_diffusion.TinyDiffusionConfig",
                     "AutoModelForCausalLM": "modeling_tiny_diffusion.TinyDiffusionForCausalLM"},
        "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
        "tie_word_embeddings": False}))
    return d


def test_refused_without_trust(remote_dir):
    with pytest.raises(SystemExit, match="ships its own modeling code.*trust_remote_code = true"):
        models.build_meta(remote_dir)
    with pytest.raises(SystemExit, match="trust_remote_code"):
        models.load_config(remote_dir, trust_remote_code=False)


def test_trusted_builds_on_meta_trains_exports_and_generates(remote_dir, tmp_path):
    model = models.build_meta(remote_dir, trust_remote_code=True)
    assert getattr(type(model), "shipped_with_the_checkpoint", False)
    assert all(p.device.type == "meta" for p in model.parameters())
    models.materialize(model, torch.device("cpu"), seed=0)
    assert getattr(type(model), "shipped_with_the_checkpoint", False)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = packed_batch([[(20, 5), (12, 4)], [(30, 6)]], 32, seed=0)
    losses = []
    for step in range(1, 16):
        micro = [noise_batch(batch, mask_id=MASK_ID, noise=(0.3, 0.8), seed=0, step=step, first_row=0)]
        tokens = count_targets(micro)
        loss = loss_sum(model, micro[0], block=4) / tokens
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses  # it learns (4.5 -> ~3.5 here)

    out = export_hf(tmp_path / "hf", model)
    assert (out / "modeling_tiny_diffusion.py").is_file() and (out / "configuration_tiny_diffusion.py").is_file()
    back = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert getattr(type(back), "shipped_with_the_checkpoint", False)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    ids = generate(back, [5, 6, 7, 8, 9], mask_id=MASK_ID, block=4, steps=2, gen_length=8)
    assert ids.shape == (8,) and not bool((ids == MASK_ID).any())


@pytest.mark.multiproc
def test_planc_verify_runs_the_trusted_code(remote_dir, demo_assets, tmp_path, monkeypatch, capsys):
    """`planc verify` on a block-diffusion plan whose model is the remote-code directory: refused
    without `trust_remote_code = true` (exit 2, located); with it, the shrunk model keeps the
    directory's code, FSDP2 on 2 processes matches one process in fp64, and the export the layout
    wrote carries that code and loads as the shipped class."""
    import subprocess
    import sys

    from planc.cli import main
    from planc.demo_diffusion import make_diffusion_demo
    from tests.launch import REPO

    cfg = json.loads((remote_dir / "config.json").read_text())
    (remote_dir / "config.json").write_text(json.dumps({**cfg, "vocab_size": 4160}))  # covers <|mask|> (4096)
    make_diffusion_demo(demo_assets["dir"])
    demo = (REPO / "plans" / "diffusion-demo.veo").read_text()
    plain = demo.replace('"plans/models/tiny-qwen3-diffusion"', f'"{remote_dir}"')
    assert plain != demo
    untrusted, trusted = tmp_path / "untrusted.veo", tmp_path / "trusted.veo"
    untrusted.write_text(plain)
    trusted.write_text(plain.replace("attention = sdpa", "attention = sdpa\n  trust_remote_code = true"))
    monkeypatch.chdir(REPO)
    assert main(["verify", str(untrusted), "--data", "demo", "--demo-data", demo_assets["dir"]]) == 2
    assert "error[remote-code]" in capsys.readouterr().err

    keep = tmp_path / "keep"
    r = subprocess.run([sys.executable, "-m", "planc", "verify", str(trusted), "--dtype", "fp64", "--steps", "2",
                        "--data", "demo", "--demo-data", demo_assets["dir"], "--keep", str(keep)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "OK: diffusion-demo" in r.stdout, r.stdout[-4000:] + r.stderr[-3000:]
    assert "modeling_tiny_diffusion.py" in r.stdout and "trusted by the plan" in r.stdout
    assert "HF export (fp64): loads with from_pretrained on one process; its" in r.stdout
    export = keep / "runs" / "fp64" / "layout_dp_shard2" / "checkpoints" / "hf"
    assert (export / "modeling_tiny_diffusion.py").is_file()
    back = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    assert getattr(type(back), "shipped_with_the_checkpoint", False)
