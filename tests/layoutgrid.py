"""Small layouts x tiny configs x rule sets, for comparing `planc check` with its dry run.

`plan_text(cfg_dir, layout, flavour)` writes a plan whose mesh is `layout` (tp, sp, ep, dp_shard)
and whose parallelize block holds the rules a person would write for it; `verdicts(path)` gives
(check's errors, the dry run's error or None). Used by tests/test_check_vs_dryrun.py.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2,
          "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_QWEN3_MOE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": 2,
              "max_position_embeddings": 256, "decoder_sparse_step": 1, "mlp_only_layers": [],
              "tie_word_embeddings": False, "num_experts_per_tok": 2}

# name -> config: heads / KV heads / experts / vocab / intermediate sizes chosen so that different
# degrees fail for different reasons (per-rank heads after tp, KV repetition, experts, vocab, MLP)
CONFIGS = {
    "gqa4x2": dict(_LLAMA, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=8, vocab_size=128),
    "mha6": dict(_LLAMA, hidden_size=48, intermediate_size=96, num_attention_heads=6, num_key_value_heads=6,
                 head_dim=8, vocab_size=130),
    "gqa12x6": dict(_LLAMA, hidden_size=48, intermediate_size=90, num_attention_heads=12, num_key_value_heads=6,
                    head_dim=4, vocab_size=128),
    "mqa8": dict(_LLAMA, hidden_size=32, intermediate_size=64, num_attention_heads=8, num_key_value_heads=1,
                 head_dim=4, vocab_size=126),
    "qwen3_gqa8x4": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": 2,
                     "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 8,
                     "num_key_value_heads": 4, "head_dim": 4, "vocab_size": 128, "max_position_embeddings": 256,
                     "tie_word_embeddings": False},
    "moe6": dict(_QWEN3_MOE, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, num_experts=6, vocab_size=128),
    "moe8x3": dict(_QWEN3_MOE, hidden_size=48, intermediate_size=64, moe_intermediate_size=12,
                   num_attention_heads=6, num_key_value_heads=3, head_dim=8, num_experts=8, vocab_size=128),
}

TP_FLAVOURS = {  # what a person writes for tp > 1
    "model": "tp plan = model",
    "megatron": "tp plan = megatron",
    "megatron_sp": "tp plan = megatron_sp",
    "mlp": 'tp colwise "model.layers.*.mlp.{gate,up}_proj"\n  tp rowwise "model.layers.*.mlp.down_proj"',
    "attn": 'tp colwise "model.layers.*.self_attn.{q,k,v}_proj"\n  tp rowwise "model.layers.*.self_attn.o_proj"',
    "ends": 'tp plan = megatron\n  tp vocab "model.embed_tokens"\n  tp loss "lm_head"',
}
DEGREES = range(1, 5)


def make_configs(root: Path) -> dict[str, Path]:
    out = {}
    for name, cfg in CONFIGS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = d
    return out


def is_moe(name: str) -> bool:
    return "num_experts" in CONFIGS[name]


def flavours(name: str, tp: int) -> list[str]:
    if tp == 1:
        return ["none"]
    if is_moe(name):  # no dense MLP projections to shard
        return ["model", "megatron", "megatron_sp", "attn", "ends"]
    return list(TP_FLAVOURS)


def layouts():
    """(tp, sp, ep, dp_shard) with every degree in 1..4."""
    return list(itertools.product(DEGREES, DEGREES, DEGREES, DEGREES))


def plan_text(cfg_dir: Path, layout, flavour: str, max_len: int = 24, attention: str = "sdpa") -> str:
    tp, sp, ep, dp_shard = layout
    rules = ['fsdp "model.layers.*"']
    if flavour != "none":
        rules.append(TP_FLAVOURS[flavour])
    if sp > 1:
        rules.append('sp ulysses "model.layers.*.self_attn"')
    if ep > 1:
        rules.append('ep "model.layers.*.mlp.experts"')
    body = "\n  ".join(rules)
    return f'''plan "grid"
model {{ config = "{cfg_dir}"  dtype = fp32  attention = {attention} }}
mesh {{ dp_shard = {dp_shard}  tp = {tp}  sp = {sp}  ep = {ep}  device = cpu }}
parallelize {{
  {body}
}}
data {{
  source "web" {{ path = "unused.jsonl"  format = jsonl }}
  tokenizer = "unused"
  max_len   = {max_len}
}}
train {{ steps = 4  global_batch = {dp_shard}  micro_batch = 1 }}
'''


def verdicts(path: Path, dry: bool = True):
    """(check's error diagnostics, the dry run's error message or None; None too when the check
    refused and `dry` is False)."""
    from planc.dryrun import StepFailed, dry_run
    from planc.frontend import check_file

    checked = check_file(str(path), skip_files=True)
    errors = [d for d in checked.diagnostics if d.severity == "error"]
    if not dry:
        return errors, None
    if errors and checked.plan is None:
        return errors, "not resolved"
    if checked.ctx is None or checked.ctx.degrees is None:
        return errors, "no mesh"
    try:
        dry_run(checked)
    except StepFailed as e:
        return errors, str(e)
    return errors, None
