# Qwen3-30B-A3B (128 experts, 8 active) on 64 GPUs: FSDP2 over all 64 ranks, and expert
# parallelism of 8 inside each node (experts borrow the FSDP ranks: 16 experts per rank, then
# FSDP-sharded over the 8 ranks that hold the same experts). Check it here with
#   planc check plans/qwen3-moe.veo --skip-files --dry-run --device-memory 80GiB
plan "qwen3-moe"

model {
  config    = "plans/models/qwen3-30b-a3b"  # Qwen3-30B-A3B's public config.json
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 64  ep = 8  gpus_per_node = 8  device = cuda }

parallelize {
  ep         "model.layers.*.mlp.experts"
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}

data {
  source "mix" { path = "/data/pretrain-mix"  format = jsonl  text = "text" }
  tokenizer = "/models/Qwen3-30B-A3B"
  max_len   = 4096
  pack      = greedy
}

train {
  steps = 20000  global_batch = 512  micro_batch = 2
  optimizer = adamw { lr = 3e-4  weight_decay = 0.1 }
  schedule  = cosine { warmup = 500  min_lr = 0.1 }
  mixed_precision { param = bf16  reduce = fp32 }
}

checkpoint { dir = "/checkpoints/qwen3-moe"  every = 1000  keep = 2  export = hf }
