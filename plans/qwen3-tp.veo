# A tiny Qwen3 with tensor parallelism inside FSDP2 on 4 CPU processes (dp_shard 2 x tp 2), with the
# full Megatron layout written out: attention and MLP projections split by columns then rows,
# sequence-parallel norms between blocks, a vocab-parallel embedding and a loss-parallel lm_head.
# Prove it against one process first:   planc verify plans/qwen3-tp.veo
# TP alone on 2 processes:              torchrun --standalone --nproc-per-node 2 generated/qwen3-tp.py --mesh.dp_shard 1
plan "qwen3-tp"

model {
  config    = "plans/models/tiny-qwen3"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  tp = 2  device = cpu }

parallelize {
  tp colwise  "model.layers.*.self_attn.{q,k,v}_proj"  "model.layers.*.mlp.{gate,up}_proj"
  tp rowwise  "model.layers.*.self_attn.o_proj"  "model.layers.*.mlp.down_proj"
  tp sequence "model.layers.*.{input,post_attention}_layernorm"  "model.norm"
  tp vocab    "model.embed_tokens"
  tp loss     "lm_head"
  fsdp        "model.layers.*"  reshard_after_forward
}

data {
  source "stdlib" { path = "data/demo/stdlib.jsonl"  format = jsonl  text = "text" }
  tokenizer = "data/demo/tokenizer"
  max_len   = 128
  pack      = greedy
}

train {
  steps = 40  global_batch = 16  micro_batch = 4
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  clip      = 1.0
}

checkpoint { dir = "out/qwen3-tp"  every = 20  keep = 2  export = hf }
