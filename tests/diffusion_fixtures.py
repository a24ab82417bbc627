"""Small helpers shared by the block-diffusion tests: tiny models of three families built from
transformers configs, packed SFT rows made the way planc's packer makes them, and the brute-force
definition of the training mask."""
from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config, Qwen3MoeConfig

from runtime.data.kinds import shifted_labels
from runtime.data.packing import collate_rows

VOCAB, MASK_ID = 96, 95
FAMILIES = ("qwen3", "llama", "qwen3_moe")


def tiny_config(family: str, attention: str = "sdpa", vocab: int = VOCAB):
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=256, use_cache=False,
                  tie_word_embeddings=False)
    if family == "qwen3":
        cfg = Qwen3Config(intermediate_size=64, **common)
    elif family == "llama":
        cfg = LlamaConfig(intermediate_size=64, **common)
    else:
        cfg = Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=16, num_experts=4,
                             num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True, **common)
    cfg._attn_implementation = attention
    return cfg


def tiny_model(family: str, attention: str = "sdpa", seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, attention), dtype=dtype)


def sft_doc(n: int, prompt: int, rng: np.random.Generator):
    """(ids, labels): n random tokens, the ones after the first `prompt` are the response."""
    ids = rng.integers(3, MASK_ID, size=n).astype(np.int32)
    target = np.arange(n) >= prompt
    return ids, shifted_labels(ids, target)


def packed_batch(rows, length: int, seed: int = 0) -> dict:
    """rows: per row a list of (n, prompt) documents -> a collated batch (pad id 0)."""
    rng = np.random.default_rng(seed)
    return collate_rows([[sft_doc(n, p, rng) for n, p in row] for row in rows], length, 0)


def layout(rows):
    """Per row: (document, position) of every token, documents laid end to end, the row padded
    with one more segment to the longest row's length (as the packer does)."""
    length = max(sum(r) for r in rows) + 1
    out = []
    for docs in rows:
        tokens = [(d, p) for d, n in enumerate(docs) for p in range(n)]
        tokens += [(len(docs), p) for p in range(length - len(tokens))]
        out.append(tokens)
    return out, length


def allowed_training(tokens, block):
    """The rules, one pair at a time: q, k index the 2L row [noisy ; clean]."""
    n = len(tokens)
    out = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q in range(2 * n):
        for k in range(2 * n):
            (dq, pq), (dk, pk) = tokens[q % n], tokens[k % n]
            if dq != dk:
                continue
            bq, bk = pq // block, pk // block
            q_clean, k_clean = q >= n, k >= n
            if not q_clean and not k_clean:
                out[q, k] = bq == bk
            elif not q_clean and k_clean:
                out[q, k] = bk < bq
            elif q_clean and k_clean:
                out[q, k] = bk <= bq
    return out
