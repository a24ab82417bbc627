"""runtime.model and the HF export with vision-language configs, one process: the right auto
class, use_cache off where it acts, every non-persistent buffer rebuilt, safetensors read through
transformers' key conversion (legacy Qwen2.5-VL keys, transposed Qwen3-VL-MoE experts), and an
export that `from_pretrained` and the saved processor load."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText

from runtime import model as models
from runtime.checkpoint.export import export_hf
from runtime.data.multimodal import load_hf_processor

import vlfix

FAMILIES = list(vlfix.CONFIGS)


def keys_of(directory):
    keys = set()
    for f in directory.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            keys |= set(h.keys())
    return keys


def perturbed(name):
    """A reference model whose weights are all distinct from a fresh init (biases included)."""
    ref = vlfix.reference(name)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return ref


@pytest.mark.parametrize("name", FAMILIES)
def test_build_and_seeded_init(name):
    m = models.build_meta(vlfix.CONFIGS[name])
    assert type(m).__name__.endswith("ForConditionalGeneration")
    assert m.config.text_config.use_cache is False
    assert m.config.vision_config._attn_implementation == "sdpa"
    models.materialize(m, torch.device("cpu"), seed=3)
    ref = vlfix.reference(name, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
    bufs = dict(ref.named_buffers())
    rebuilt = [n for n, _ in m.named_buffers()]
    assert "model.visual.rotary_pos_emb.inv_freq" in rebuilt and "model.language_model.rotary_emb.inv_freq" in rebuilt
    assert all(torch.equal(b, bufs[n]) for n, b in m.named_buffers())


@pytest.mark.parametrize("name", FAMILIES)
def test_load_save_pretrained_and_export(name, tmp_path):
    ref = perturbed(name)
    ref.save_pretrained(tmp_path / "saved")
    m = models.build_meta(vlfix.CONFIGS[name])
    models.materialize(m, torch.device("cpu"), seed=0, weights=models.weights_dir(vlfix.CONFIGS[name], tmp_path / "saved"))
    want = ref.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in m.state_dict().items())
    if name.startswith("tiny-qwen2"):  # save_pretrained wrote legacy keys the tree does not have
        assert "model.layers.0.mlp.up_proj.weight" in keys_of(tmp_path / "saved")
    out = export_hf(tmp_path / "hf", m, processor=None)
    assert keys_of(out) == keys_of(tmp_path / "saved")  # the keys save_pretrained writes
    back = AutoModelForImageTextToText.from_pretrained(out)
    assert all(torch.equal(v, want[k]) for k, v in back.state_dict().items())


def test_transposed_moe_experts_are_converted(tmp_path):
    """Qwen3-VL-MoE hub checkpoints store fused experts as (E, H, 2I) / (E, I, H): transformers
    transposes them on load, and so does our loader (the same converter)."""
    ref = perturbed("tiny-qwen3-vl-moe")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    hub = {k: (v.transpose(1, 2).contiguous() if ".mlp.experts." in k else v) for k, v in state.items()}
    assert hub["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (8, 64, 96)
    (tmp_path / "hub").mkdir()
    save_file(hub, str(tmp_path / "hub" / "model.safetensors"), metadata={"format": "pt"})
    ref.config.save_pretrained(tmp_path / "hub")
    m = models.build_meta(vlfix.CONFIGS["tiny-qwen3-vl-moe"])
    models.materialize(m, torch.device("cpu"), seed=0, weights=tmp_path / "hub")
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    back = AutoModelForImageTextToText.from_pretrained(tmp_path / "hub")
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())


def test_missing_tensor_is_named(tmp_path):
    ref = perturbed("tiny-qwen3-vl")
    state = {k: v for k, v in ref.state_dict().items() if "blocks.1.mlp" not in k}
    (tmp_path / "w").mkdir()
    save_file(state, str(tmp_path / "w" / "model.safetensors"), metadata={"format": "pt"})
    m = models.build_meta(vlfix.CONFIGS["tiny-qwen3-vl"])
    with pytest.raises(RuntimeError, match="missing, e.g. .*model.visual.blocks.1.mlp"):
        models.materialize(m, torch.device("cpu"), seed=0, weights=tmp_path / "w")


def test_export_with_processor_reloads(tmp_path):
    data = vlfix.make_data(tmp_path / "data")
    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"], max_pixels=112 * 112)
    m = models.build_meta(vlfix.CONFIGS["tiny-qwen2.5-vl"])
    models.materialize(m, torch.device("cpu"), seed=0)
    out = export_hf(tmp_path / "hf", m, processor=proc)
    cfg = json.loads((out / "processor_config.json").read_text())
    assert cfg["processor_class"] == "Qwen2_5_VLProcessor"
    assert cfg["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    back = load_hf_processor(out, m.config)
    assert back.image_processor.size["longest_edge"] == 112 * 112
    assert back.tokenizer.image_token_id == 5 and back.chat_template == proc.template
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in model.state_dict().items())
