"""Estimates: ZeRO's published model-state figures from equivalent plans, Korthikanti's activation
formulas, the analytic shards against the dry run's real DTensors on uneven and mixed layouts,
and traffic figures worked out by hand."""
from __future__ import annotations

import json

import pytest

from planc.estimate.activations import gpt_shape, korthikanti, layer_bytes, layer_terms
from planc.estimate.comm import traffic
from planc.estimate.memory import estimate_memory, zero_model_states, zero_stage
from planc.estimate.shards import states_per_rank
from planc.frontend import check_file

# A Llama-shaped 7.5B model (h 4096, 36 layers, vocab 25600): Psi = 7,495,520,256, ZeRO's "7.5B".
ZERO_MODEL = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 25600, "max_position_embeddings": 2048,
              "tie_word_embeddings": False}
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": 128, "max_position_embeddings": 256, "tie_word_embeddings": False}


def write_plan(root, name, config, mesh, body, extra="", model_extra="", max_len=16, batch="global_batch = 8  micro_batch = 2"):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.json").write_text(json.dumps(config))
    path = root / f"{name}.veo"
    path.write_text(f'''plan "{name}"
model {{ config = "{root / name}" {model_extra} }}
mesh {{ {mesh} }}
parallelize {{
{body}
}}
data {{
  source "x" {{ path = "{root}/absent.jsonl" }}
  tokenizer = "{root}/absent"
  max_len = {max_len}
}}
train {{ steps = 1  {batch}  {extra} }}
''')
    checked = check_file(str(path), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    return checked


def test_zero_paper_figures(tmp_path):
    """Rajbhandari et al. 2020, figure 1: Psi = 7.5B, K = 12, Nd = 64 -> 120, 31.4, 16.6, 1.9 GB."""
    mp = "mixed_precision { param = bf16  reduce = fp32 }"
    ddp = write_plan(tmp_path, "zero_ddp", ZERO_MODEL, "dp_replicate = 64", "  replicate",
                     batch="global_batch = 64  micro_batch = 1")
    fsdp = write_plan(tmp_path, "zero_fsdp", ZERO_MODEL, "dp_shard = 64", '  fsdp "model.layers.*"', mp,
                      batch="global_batch = 64  micro_batch = 1")
    psi = ddp.ctx.tree.n_params
    assert round(psi / 1e9, 1) == 7.5
    per_rank = lambda c: [s["param"] + s["grad"] + s["optim"] for s in states_per_rank(c.ctx)]
    baseline, stage3 = per_rank(ddp), per_rank(fsdp)
    assert zero_stage(ddp.ctx) == 0 and zero_stage(fsdp.ctx) == 3
    # the plans' exact figures: whole states on every replica; FSDP2 shards differ by padding only
    assert set(baseline) == {16 * psi} and baseline[0] == zero_model_states(psi, 64, 0)
    assert max(stage3) - min(stage3) < 1e-3 * max(stage3)
    assert abs(sum(stage3) / 64 - zero_model_states(psi, 64, 3)) < 1e-9 * psi
    figures = [round(baseline[0] / 1e9), round(zero_model_states(psi, 64, 1) / 1e9, 1),
               round(zero_model_states(psi, 64, 2) / 1e9, 1), round(max(stage3) / 1e9, 1)]
    assert figures == [120, 31.4, 16.6, 1.9]


@pytest.mark.parametrize("s,b,h,a,t", [(2048, 1, 12288, 96, 8), (4096, 4, 4096, 32, 4), (1024, 2, 2048, 16, 1)])
def test_korthikanti_formulas(s, b, h, a, t):
    """The term-by-term accounting reduces to the paper's formulas on its GPT layer (16-bit)."""
    L = gpt_shape(h, a)
    assert layer_bytes(L, s, b, 2) == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    assert layer_bytes(L, s, b, 2, t=t) == pytest.approx(korthikanti(s, b, h, a, t))
    assert layer_bytes(L, s, b, 2, t=t, seq_tp=True) == pytest.approx(korthikanti(s, b, h, a, t, sp=True))
    assert layer_bytes(L, s, b, 2, t=t, seq_tp=True, selective=True) == pytest.approx(
        korthikanti(s, b, h, a, t, sp=True, recompute="selective"))
    assert layer_bytes(L, s, b, 2, t=t, selective=True) == pytest.approx(korthikanti(s, b, h, a, t, recompute="selective"))
    # the paper's example: GPT-3 175B layer, s 2048, t 8, with sequence parallelism and selective
    # recomputation, 34 sbh/t
    assert korthikanti(2048, 1, 12288, 96, 8, sp=True, recompute="selective") == 34 * 2048 * 12288 / 8


def test_activation_terms_of_a_real_layer():
    """Llama-style layer with sdpa: no s*s scores, SwiGLU's four intermediates, GQA K/V."""
    from planc.estimate.activations import LayerShape

    L = LayerShape(h=8192, heads=64, kv_heads=8, head_dim=128, ffn=28672)
    terms = layer_terms(L, 8192, 1, 2, t=8)
    assert "attention scores" not in terms
    assert terms["mlp intermediates"] == 4 * 2 * 8192 * 28672 / 8
    assert terms["q, k"] == 2 * 8192 * (8192 + 1024) / 8
    ulysses = layer_bytes(L, 8192, 1, 2, u=8)
    assert ulysses == pytest.approx(layer_bytes(L, 8192, 1, 2) / 8)


# small layouts where shards are uneven, tied, expert-parallel, taken from the config's TP plan...
LAYOUTS = {
    "fsdp3_odd": (dict(TINY, vocab_size=131, intermediate_size=70), "dp_shard = 3", '  fsdp "model.layers.*"',
                  "global_batch = 6  micro_batch = 2"),
    "fsdp4_tied": (dict(TINY, tie_word_embeddings=True), "dp_shard = 4", '  fsdp "model.layers.*"', None),
    "hsdp_tp_plan": (TINY, "dp_replicate = 2  dp_shard = 3  tp = 2", '  tp plan = model\n  fsdp "model.layers.*"',
                     "global_batch = 12  micro_batch = 2"),
    "tp_only": (TINY, "tp = 2", '  tp plan = model', None),
    "ep_tp_moe": ({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 32,
                   "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_experts": 6,
                   "num_experts_per_tok": 2, "vocab_size": 130, "max_position_embeddings": 256,
                   "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False},
                  "dp_shard = 6  tp = 2  ep = 3", '  tp plan = model\n  ep "model.layers.*.mlp.experts"\n'
                  '  fsdp "model.layers.*"', "global_batch = 12  micro_batch = 2"),
    "ulysses_fsdp": (TINY, "dp_shard = 3  sp = 2", '  sp ulysses "model.layers.*.self_attn"\n  fsdp "model.layers.*"',
                     "global_batch = 6  micro_batch = 2"),
    "replicate": (TINY, "dp_replicate = 4", "  replicate", None),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_analytic_shards_equal_the_dry_run(tmp_path, name):
    from planc.dryrun import dry_run

    cfg, mesh, body, batch = LAYOUTS[name]
    checked = write_plan(tmp_path, name, cfg, mesh + "  device = cpu", body,
                         batch=batch or "global_batch = 8  micro_batch = 2")
    world = checked.ctx.world
    dry = dry_run(checked, rank=0, check_ranks=[world - 1])  # the last rank built for real too
    assert dry.per_rank == states_per_rank(checked.ctx)
    if name == "fsdp3_odd":
        # torch.chunk: ceil-sized chunks, so ranks 0 and 1 hold the same and rank 2 the rest
        assert [ranks for _, ranks in dry.classes()] == [[0, 1], [2]]
        assert dry.per_rank[2]["param"] < dry.per_rank[0]["param"]
    if name == "fsdp4_tied":  # the tied embedding counts once
        n = checked.ctx.tree.n_params
        assert sum(s["param"] for s in dry.per_rank) == 4 * n


def test_fsdp_traffic_by_hand(tmp_path):
    """FSDP2 over 4 ranks of the tiny Llama, 1 micro-batch: root = embed + lm_head + norm = 8224
    elements, a layer = 9280; forward gathers root + 2 layers, backward the 2 layers again."""
    checked = write_plan(tmp_path, "fsdp4", TINY, "dp_shard = 4  device = cpu", '  fsdp "model.layers.*"')
    cols = {(c.op, c.what): c for c in traffic(checked.ctx)}
    root, layer = cols[("all_gather", "fsdp root")], cols[("all_gather", "fsdp model.layers.*")]
    assert (root.calls, root.bytes) == (1, 8224 * 4)
    assert (layer.calls, layer.bytes) == (4, 9280 * 4)
    assert cols[("reduce_scatter", "fsdp model.layers.*")].calls == 2
    assert layer.wire == pytest.approx(layer.total * 3 / 4)


def test_memory_rows_and_worst_rank(tmp_path):
    checked = write_plan(tmp_path, "odd", dict(TINY, vocab_size=131), "dp_shard = 4  device = cpu",
                         '  fsdp "model.layers.*"\n  checkpoint "model.layers.*"')
    est = estimate_memory(checked.ctx)
    assert sorted(r for row in est.rows for r in row.ranks) == [0, 1, 2, 3]
    assert est.worst.total == max(r.total for r in est.rows)
    assert all(row.parts["activations"] > 0 and row.parts["logits"] > 0 for row in est.rows)


def _saved_bytes(model, layer, **inputs) -> int:
    """Bytes autograd keeps for backward inside one decoder layer (distinct storages; parameters
    left out: FSDP's gathered weights are counted apart)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    hooks = []
    mod = model.model.layers[layer]
    state = {}
    hooks.append(mod.register_forward_pre_hook(
        lambda m, a, k: state.setdefault("ctx", torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)).__enter__(),
        with_kwargs=True))
    hooks.append(mod.register_forward_hook(lambda m, a, k, o: state["ctx"].__exit__(None, None, None), with_kwargs=True))
    model(**inputs, use_cache=False)
    for h in hooks:
        h.remove()
    return sum(seen.values())


@pytest.mark.parametrize("family,dtype", [("llama", "bf16"), ("llama", "fp32"), ("qwen3", "bf16")])
def test_activation_terms_equal_what_autograd_keeps(family, dtype):
    """The generalised terms on transformers' own layer (sdpa, grouped-query attention, SwiGLU,
    fp32 RMSNorm, Qwen3's q/k norms): equal to the bytes saved for backward, to the byte."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from planc.estimate.activations import rotary_bytes, shape_of

    cfg = AutoConfig.for_model(family, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                               num_attention_heads=8, num_key_value_heads=2, head_dim=32, vocab_size=512,
                               max_position_embeddings=1024)
    cfg._attn_implementation = "sdpa"
    torch_dtype, p = {"bf16": (torch.bfloat16, 2), "fp32": (torch.float32, 4)}[dtype]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch_dtype)
    s, b = 256, 2
    ids = torch.randint(0, 512, (b, s))
    measured = _saved_bytes(model, 1, input_ids=ids, position_ids=torch.arange(s).expand(b, s))

    class Tree:  # the module names shape_of looks at
        modules = [n for n, _ in model.named_modules()]

    L = shape_of(cfg, Tree, 1, "sdpa")
    assert L.qk_norm == (family == "qwen3")
    # one layer's terms, plus the rotary cos/sin it keeps (shared by all layers)
    assert layer_bytes(L, s, b, p) + rotary_bytes(L, s, b, p) == measured
