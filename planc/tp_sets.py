"""Named rule sets for the standard decoder families, so a real plan stays one line:

    tp plan = megatron      # q/k/v and gate/up colwise, o and down rowwise
    tp plan = megatron_sp   # the same, plus sequence-parallel norms, vocab-parallel embedding and a
                            # loss-parallel lm_head (Megatron's sequence parallelism)
    ep plan = model         # every experts module the config's own base_model_ep_plan names

planc/elaborate.py expands them into ordinary rules on the plan's line before the checks run, so
every rule check applies and the generated script spells each style out with its modules.
"""
from __future__ import annotations

ATTENTION = {"colwise": ["model.layers.*.self_attn.{q,k,v}_proj"], "rowwise": ["model.layers.*.self_attn.o_proj"]}
DENSE_MLP = {"colwise": ["model.layers.*.mlp.{gate,up}_proj"], "rowwise": ["model.layers.*.mlp.down_proj"]}
SEQUENCE = {"sequence": ["model.layers.*.{input,post_attention}_layernorm", "model.norm"],
            "vocab": ["model.embed_tokens"], "loss": ["lm_head"]}
# the HF decoder families whose module names these globs follow
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "gemma",
            # the language models of the vision-language families
            "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text", "qwen3_vl_moe_text")
NAMED = ("megatron", "megatron_sp")


def tp_set(name: str, matches, language: str = "model") -> list[tuple[str, list[str]]]:
    """[(style, globs)] of a named set; `matches(glob)` drops globs the model does not have (an MoE
    model has no dense MLP projections: its experts go to `ep`). The sets name a decoder's modules
    under `language`, the language model's module (`model.language_model` in a vision-language
    model: the sets shard the language model, never the vision tower)."""
    parts = [ATTENTION, DENSE_MLP] + ([SEQUENCE] if name == "megatron_sp" else [])
    out: dict[str, list[str]] = {}
    for part in parts:
        for style, globs in part.items():
            moved = [language + g[len("model"):] if g.startswith("model.") else g for g in globs]
            out.setdefault(style, []).extend(g for g in moved if matches(g))
    return [(style, globs) for style, globs in out.items() if globs]


def ep_globs(config, language: str = "model") -> list[str]:
    """The experts modules of the language model's own expert-parallel plan, as globs over the
    whole model (the plan lives on the text config of a vision-language model)."""
    plan = getattr(config.get_text_config(), "base_model_ep_plan", None) or {}
    return [f"{language}.{k}" for k, v in plan.items() if v == "ep_dispatch_experts"]
