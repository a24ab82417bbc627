"""Single-process checks of the TP / Ulysses / EP helpers and of `shrink_config`.

The layouts themselves are checked against one process in test_parallel_parity.py; here are the
parts that need no process group: masks, batch slicing, rule validation, plan conversion, and
the shrunk configs of real families.
"""
from __future__ import annotations

import types

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, DeepseekV3Config, LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config,
    Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig,
)

from runtime.parallel.ep import apply_ep, experts_modules
from runtime.parallel.mesh_ep import ep_meshes
from runtime.parallel.shrink import shrink_config
from runtime.parallel.tp import apply_tp, tp_rules_from_config
from runtime.parallel.ulysses import apply_ulysses, block_causal_mask, check_heads, slice_for_sp
from runtime.vocab import ULYSSES_ATTENTIONS


def tiny_qwen3(**kw):
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      tie_word_embeddings=kw.pop("tie", False), use_cache=False, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_qwen3_moe():
    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_experts=6, num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg)


def fake_mesh(size):
    """Enough of a DeviceMesh for the checks that run before any collective."""
    return types.SimpleNamespace(size=lambda: size)


# --- masks and Ulysses batch slicing ------------------------------------------------------------

def test_block_causal_mask_by_hand():
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    m = block_causal_mask(pos)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 0, 0, 1, 0],
                             [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    additive = block_causal_mask(pos, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected)
    assert additive.min() == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="batch, seq"):
        block_causal_mask(torch.tensor([0, 1]))


@pytest.mark.parametrize("attn", ULYSSES_ATTENTIONS)
def test_block_causal_mask_matches_transformers_packing(attn):
    """The explicit mask gives the logits transformers itself gives for packed rows."""
    model = tiny_qwen3()
    model.set_attn_implementation(attn)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]])
    inferred = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    mask = block_causal_mask(pos, torch.bool if attn == "sdpa" else torch.float32)
    explicit = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(explicit, inferred, rtol=1e-5, atol=1e-5)
    # and it does separate documents: without packing info the logits differ
    causal = model(input_ids=ids, use_cache=False).logits
    assert (causal - inferred).abs().max() > 1e-3


def test_slice_for_sp_pads_and_keeps_global_positions():
    batch = {"input_ids": torch.arange(1, 6).view(1, 5),
             "labels": torch.tensor([[2, 3, -100, 5, -100]]),
             "position_ids": torch.tensor([[0, 1, 2, 0, 1]])}
    parts = [slice_for_sp(batch, r, 2, pad_id=0) for r in range(2)]
    assert [p["input_ids"].shape[1] for p in parts] == [3, 3]
    glued = {k: torch.cat([p[k] for p in parts], dim=1) for k in batch}
    assert glued["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0]]
    assert glued["labels"].tolist() == [[2, 3, -100, 5, -100, -100]]  # the pad has no target
    assert glued["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]  # global, pad starts a document
    assert parts[1]["position_ids"].tolist() == [[0, 1, 0]]  # not renumbered per slice
    no_pad = slice_for_sp(batch, 0, 5)
    assert no_pad["input_ids"].tolist() == [[1]]


def test_slice_for_sp_refuses_what_it_cannot_keep():
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "labels": torch.ones(1, 4, dtype=torch.long),
             "position_ids": torch.arange(4).view(1, 4)}
    with pytest.raises(KeyError, match="labels"):
        slice_for_sp({k: v for k, v in batch.items() if k != "labels"}, 0, 2)
    with pytest.raises(ValueError, match="padding masks"):
        slice_for_sp({**batch, "attention_mask": torch.tensor([[1, 1, 1, 0]])}, 0, 2)
    assert "attention_mask" not in slice_for_sp({**batch, "attention_mask": torch.ones(1, 4)}, 0, 2)


def test_ulysses_head_rules():
    check_heads(8, 4, 4)
    check_heads(8, 2, 4)  # sp % kv == 0: KV repeated
    with pytest.raises(ValueError, match="attention heads"):
        check_heads(6, 2, 4)
    with pytest.raises(ValueError, match="KV heads"):
        check_heads(12, 3, 2)


def test_apply_ulysses_refuses():
    model = tiny_qwen3()
    with pytest.raises(ValueError, match="cover every attention module"):
        apply_ulysses(model, fake_mesh(2), ["model.layers.0.self_attn"])
    with pytest.raises(ValueError, match="not an attention module"):
        apply_ulysses(model, fake_mesh(2), ["model.layers.0.self_attn", "model.layers.1.self_attn", "model.norm"])
    with pytest.raises(ValueError, match=r"attention heads \(4\) divisible by sp"):
        apply_ulysses(model, fake_mesh(3))
    assert model.config._attn_implementation == "sdpa"  # nothing was switched on refusal


# --- tensor-parallel rules ----------------------------------------------------------------------

@pytest.mark.parametrize("rules, match", [
    ([("diagonal", ["lm_head"])], "unknown tp style"),
    ([("colwise", ["model.layers.9.self_attn.q_proj"])], "no module named"),
    ([("colwise", ["lm_head"]), ("rowwise", ["lm_head"])], "claimed by two"),
    ([("colwise", ["model.norm"])], "needs an nn.Linear"),
    ([("vocab", ["lm_head"])], "needs an nn.Embedding"),
    ([("sequence", ["model.layers.0.self_attn.q_proj"])], "norms"),
    ([("colwise", [])], "names no module"),
    # down_proj would read only this rank's columns of gate/up: a rowwise rule is missing
    ([("colwise", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"])], "inside a tensor-parallel block"),
    # the final norm would see only this rank's tokens under sequence parallelism
    ([("sequence", ["model.layers.0.input_layernorm"])], "would see only this rank's tokens"),
])
def test_apply_tp_rejects_bad_rules(rules, match):
    with pytest.raises(ValueError, match=match):
        apply_tp(tiny_qwen3(), fake_mesh(2), rules)


def test_apply_tp_rejects_uneven_splits_and_tied_embeddings():
    model = tiny_qwen3()
    with pytest.raises(ValueError, match="4 heads are not divisible by tp=8"):  # 32 rows split, heads not
        apply_tp(model, fake_mesh(8), [("colwise", ["model.layers.0.self_attn.q_proj"])])
    with pytest.raises(ValueError, match="out_features 32 is not divisible by tp=3"):
        apply_tp(model, fake_mesh(3), [("colwise", ["model.layers.0.self_attn.q_proj"])])
    with pytest.raises(ValueError, match="vocab size 64 is not divisible by tp=3"):
        apply_tp(model, fake_mesh(3), [("vocab", ["model.embed_tokens"])])
    with pytest.raises(ValueError, match="in_features 64 is not divisible"):
        apply_tp(model, fake_mesh(3), [("rowwise", ["model.layers.0.mlp.down_proj"])])
    with pytest.raises(ValueError, match="tied"):
        apply_tp(tiny_qwen3(tie=True), fake_mesh(2), [("loss", ["lm_head"])])
    with pytest.raises(ValueError, match="MoE experts"):
        apply_tp(tiny_qwen3_moe(), fake_mesh(2), [("sequence", ["model.norm"])])


def test_tp_rules_from_config():
    rules, skipped = tp_rules_from_config(tiny_qwen3())
    rules = dict(rules)
    assert rules["vocab"] == ["model.embed_tokens"]
    assert "lm_head" in rules["colwise"] and "model.layers.1.self_attn.k_proj" in rules["colwise"]
    assert set(rules["rowwise"]) == {f"model.layers.{i}.{m}" for i in range(2)
                                     for m in ("self_attn.o_proj", "mlp.down_proj")}
    assert {s[1] for s in skipped} == {"replicated_with_grad_allreduce"}

    rules, skipped = tp_rules_from_config(tiny_qwen3(tie=True))
    assert "vocab" not in dict(rules) and "lm_head" not in dict(rules)["colwise"]
    assert any("tied" in reason for *_, reason in skipped)

    rules, skipped = tp_rules_from_config(tiny_qwen3_moe())
    flat = [n for _, names in rules for n in names]
    assert not any("experts" in n for n in flat)
    assert any(style == "moe_tp_experts" for _, style, _ in skipped)


# --- expert parallelism ---------------------------------------------------------------------------

def test_apply_ep_refuses():
    with pytest.raises(ValueError, match="no fused MoE experts"):
        apply_ep(tiny_qwen3(), fake_mesh(2))
    model = tiny_qwen3_moe()
    assert experts_modules(model) == ["model.layers.0.mlp.experts"]
    with pytest.raises(ValueError, match=r"ep=4 must divide the number of experts \(6\)"):
        apply_ep(model, fake_mesh(4))
    with pytest.raises(ValueError, match="not a fused MoE experts module"):
        apply_ep(model, fake_mesh(2), ["model.layers.0.mlp.experts", "model.layers.0.mlp.gate"])
    with pytest.raises(ValueError, match="cover every experts module"):
        apply_ep(model, fake_mesh(2), [])
    assert not hasattr(model.model.layers[0].mlp.experts, "ep_group")  # untouched on refusal


def test_ep_meshes_refuses():
    class Root:
        mesh_dim_names = ("dp_replicate", "fsdp", "tp")

        def __getitem__(self, name):
            return fake_mesh(6)

    with pytest.raises(ValueError, match="ep=4 must divide dp_shard\\*sp=6"):
        ep_meshes(Root(), 4)
    with pytest.raises(ValueError, match="no 'dp_shard' dim"):
        ep_meshes(Root(), 2, fsdp_dim="dp_shard")


# --- shrink_config --------------------------------------------------------------------------------

FAMILIES = [LlamaConfig, Qwen2Config, Qwen3Config, MistralConfig, MixtralConfig, Qwen2MoeConfig,
            Qwen3MoeConfig, DeepseekV3Config]
MOE = (MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig, DeepseekV3Config)
DEGREES = [dict(tp=2), dict(sp=4), dict(tp=2, sp=2), dict(tp=4, dp_shard=8), dict(tp=2, sp=2, ep=4)]


def _experts(cfg):
    return next(getattr(cfg, k) for k in ("num_experts", "num_local_experts", "n_routed_experts")
                if getattr(cfg, k, None))


CASES = [(f, d) for f in FAMILIES for d in DEGREES if "ep" not in d or f in MOE]


@pytest.mark.parametrize("family, degrees", CASES,
                         ids=[f"{f.__name__}-" + "-".join(f"{k}{v}" for k, v in d.items()) for f, d in CASES])
def test_shrink_keeps_the_plan_rules(family, degrees):
    real = family()
    small = shrink_config(real, **degrees)
    assert type(small) is type(real) and small.model_type == real.model_type
    tp, sp, ep = degrees.get("tp", 1), degrees.get("sp", 1), degrees.get("ep", 1)
    q, kv = small.num_attention_heads, small.num_key_value_heads
    assert q % kv == 0 and q % (tp * sp) == 0 and kv % tp == 0
    kv_local, real_kv_local = kv // tp, (real.num_key_value_heads or real.num_attention_heads) // tp
    assert kv_local % sp == 0 or sp % kv_local == 0
    # the repeated-KV case of the real plan survives the shrink
    assert (real_kv_local % sp == 0) == (kv_local % sp == 0)
    assert small.intermediate_size % tp == 0 and small.vocab_size % tp == 0
    assert small.num_hidden_layers == 2 and small.hidden_size <= 256 and small.vocab_size <= 512
    if family in MOE:
        assert _experts(small) % ep == 0 and small.num_experts_per_tok <= _experts(small)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(small)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    attn = model.model.layers[0].self_attn
    if hasattr(attn, "k_proj"):  # the built model really has the shrunk head counts
        assert attn.k_proj.out_features == kv * attn.head_dim


def test_shrunk_moe_model_trains_a_step():
    small = shrink_config(Qwen3MoeConfig(), ep=2, tp=2)
    small.use_cache = False
    model = AutoModelForCausalLM.from_config(small)
    assert experts_modules(model)  # MoE layers survive the shrink
    ids = torch.randint(0, small.vocab_size, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_shrink_refuses_a_plan_the_real_model_breaks():
    with pytest.raises(ValueError, match="tp=3"):
        shrink_config(LlamaConfig(), tp=3)
    with pytest.raises(ValueError, match="KV heads per tp rank"):
        shrink_config(LlamaConfig(hidden_size=3072, num_attention_heads=24, num_key_value_heads=6), sp=4)
    with pytest.raises(ValueError, match="ep=7"):
        shrink_config(Qwen3MoeConfig(), ep=7)
    with pytest.raises(ValueError, match="needs an MoE model"):
        shrink_config(LlamaConfig(), ep=2)
    with pytest.raises(ValueError, match="unknown degree"):
        shrink_config(LlamaConfig(), cp=2)
