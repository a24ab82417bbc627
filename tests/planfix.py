"""A small valid plan with everything it names (model config, data, tokenizer) made in a temp dir,
for compiler tests that break one rule at a time."""
from __future__ import annotations

import json
from pathlib import Path

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}

TINY_QWEN3_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 32,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 128,
    "max_position_embeddings": 256, "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False,
}


def word_tokenizer(n: int) -> dict:
    """A WordLevel tokenizer.json with n tokens (ids 0..n-1): enough for checks that read files."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for i in range(4, n):
        vocab[f"w{i}"] = i
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in list(vocab.items())[:4]],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def make_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    variants = (("llama", TINY_LLAMA), ("moe", TINY_QWEN3_MOE),
                ("tied", dict(TINY_LLAMA, tie_word_embeddings=True)), ("oddvocab", dict(TINY_LLAMA, vocab_size=129)))
    for name, cfg in variants:
        (root / name).mkdir(exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
    (root / "tok").mkdir(exist_ok=True)
    (root / "tok" / "tokenizer.json").write_text(json.dumps(word_tokenizer(100)))
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))
    (root / "bigtok").mkdir(exist_ok=True)
    (root / "bigtok" / "tokenizer.json").write_text(json.dumps(word_tokenizer(300)))
    (root / "data.jsonl").write_text("".join(json.dumps({"text": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(4, 40)))
    (root / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                              {"role": "assistant", "content": "w5"}]}) + "\n")
    (root / "bad.jsonl").write_text("{not json\n")
    (root / "afile").write_text("x")
    return root


def base_plan(root: Path) -> str:
    """A valid plan; line numbers matter to the rule tests (keep them stable)."""
    return f'''plan "base"
model {{
  config    = "{root}/llama"
  dtype     = fp32
  attention = sdpa
}}
mesh {{ dp_shard = 2  device = cpu }}
parallelize {{
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}}
data {{
  source "web" {{ path = "{root}/data.jsonl"  format = jsonl  text = "text" }}
  tokenizer = "{root}/tok"
  max_len   = 64
  pack      = greedy
}}
train {{
  steps = 10  global_batch = 8  micro_batch = 2
  optimizer = adamw {{ lr = 1e-3 }}
  schedule  = cosine {{ warmup = 2 }}
}}
checkpoint {{ dir = "{root}/out"  every = 5 }}
'''
