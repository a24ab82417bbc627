# A tiny Qwen3-MoE (8 experts, 2 active) with expert parallelism inside FSDP2 on 4 CPU processes:
# ep 2 borrows ranks from dp_shard 4, so each rank holds 4 experts, FSDP-sharded again over the
# 2 ranks that hold the same ones; tokens travel to their experts and back by all-to-all.
# Prove it against one process first:   planc verify plans/qwen3-moe-ep.veo
# EP over 2 processes:                  torchrun --standalone --nproc-per-node 2 generated/qwen3-moe-ep.py --mesh.dp_shard 2
plan "qwen3-moe-ep"

model {
  config    = "plans/models/tiny-qwen3-moe"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 4  ep = 2  device = cpu }

parallelize {
  ep   "model.layers.*.mlp.experts"
  fsdp "model.layers.*"  reshard_after_forward
}

data {
  source "stdlib" { path = "data/demo/stdlib.jsonl"  format = jsonl  text = "text" }
  tokenizer = "data/demo/tokenizer"
  max_len   = 128
  pack      = greedy
}

train {
  steps = 40  global_batch = 16  micro_batch = 2
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  clip      = 1.0
}

checkpoint { dir = "out/qwen3-moe-ep"  every = 20  keep = 2  export = hf }
