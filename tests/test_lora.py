"""LoRA on one process: injection on the meta device, materialisation from a seed or from
safetensors, training only the adapters, the two exports, and the layouts refused.
(FSDP2 / Ulysses / EP parity, checkpoints and exports on 2 ranks: tests/test_loop_mp.py.)"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from runtime import lora, model as models, optim  # noqa: E402

SPEC = lora.LoraSpec(rank=4, alpha=8, targets=("model.layers.*.self_attn.{q,v}_proj", "model.layers.*.mlp.down_proj"))


def _adapted(config_dir, spec=SPEC, weights=None, seed=0):
    model = models.build_meta(config_dir)
    names = lora.apply_lora(model, spec)
    lora.materialize(model, torch.device("cpu"), seed=seed, weights=weights)
    return model, names


def test_inject_on_meta_keeps_names_and_freezes_the_base(tiny_qwen3):
    model = models.build_meta(tiny_qwen3)
    names = lora.apply_lora(model, SPEC)
    assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"] + \
        [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    params = dict(model.named_parameters())
    assert all(p.device.type == "meta" for p in params.values())
    trainable = sorted(n for n, p in params.items() if p.requires_grad)
    assert trainable and all(".lora_" in n for n in trainable) and len(trainable) == 12
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in params
    assert "model.layers.0.self_attn.k_proj.weight" in params  # untouched modules keep their names
    assert "model.layers.0" in dict(model.named_modules())    # the fsdp / checkpoint globs still match


def test_materialize_seeded_base_and_adapters(tiny_qwen3):
    from transformers import AutoModelForCausalLM

    model, _ = _adapted(tiny_qwen3)
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(models.load_config(tiny_qwen3)).state_dict()
    sd = model.state_dict()
    for k, v in sd.items():
        if ".lora_B." in k:
            assert torch.count_nonzero(v) == 0  # the adapted model starts as the base
        elif ".lora_A." in k:
            assert v.abs().max() > 0
        else:
            assert torch.equal(v, plain[lora.hf_key(k)]), k
    again, _ = _adapted(tiny_qwen3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in sd.items())  # deterministic


def test_materialize_base_from_safetensors(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    src = AutoModelForCausalLM.from_config(models.load_config(tiny_qwen3))
    src.save_pretrained(tmp_path / "hf")
    model, _ = _adapted(tmp_path / "hf", weights=tmp_path / "hf")
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        if ".lora_" not in k:
            assert torch.equal(v, ref[lora.hf_key(k)]), k


def test_only_adapters_train_and_both_exports_reproduce_the_model(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, _ = _adapted(tiny_llama)
    base = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    opt = optim.build_optimizer(model, lr=1e-2)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    x = torch.randint(3, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())  # the base stayed frozen
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    lora.export(tmp_path / "out", model, base=str(tiny_llama))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    plain = AutoModelForCausalLM.from_config(merged.config)
    plain.load_state_dict({lora.hf_key(k): v for k, v in base.items()})
    adapted = PeftModel.from_pretrained(plain, tmp_path / "out" / "adapter")
    with torch.no_grad():
        assert (merged(input_ids=x).logits - logits).abs().max() < 1e-5
        assert (adapted(input_ids=x).logits - logits).abs().max() < 1e-5
    # the export merged a copy: the live model still has its own base weights
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())


def test_layouts_and_targets_refused_with_reasons(tiny_qwen3):
    with pytest.raises(ValueError, match="tensor parallelism"):
        lora.check_layout(SPEC, {"dp_shard": 2, "tp": 2})
    lora.check_layout(SPEC, {"dp_shard": 2, "sp": 2, "ep": 2}, expert_modules=["model.layers.0.mlp.experts"])
    with pytest.raises(ValueError, match="inside the experts module"):
        lora.check_layout(lora.LoraSpec(rank=2, alpha=2, targets=("model.layers.0.mlp.experts.*",)), {"ep": 2},
                          expert_modules=["model.layers.0.mlp.experts"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        lora.apply_lora(models.build_meta(tiny_qwen3), lora.LoraSpec(rank=2, alpha=2, targets=("model.layers.*",)))
    with pytest.raises(ValueError, match="rank"):
        lora.LoraSpec(rank=0, alpha=2, targets=("x",))
