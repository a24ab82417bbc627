# A tiny Qwen3 with Ulysses sequence parallelism inside FSDP2 on 4 CPU processes (dp_shard 2 x sp 2):
# each row is split in two along the sequence; attention trades sequence slices for heads by
# all-to-all, and FSDP shards the weights over all four ranks.
# Prove it against one process first:   planc verify plans/qwen3-ulysses.veo
# Ulysses alone on 2 processes:         torchrun --standalone --nproc-per-node 2 generated/qwen3-ulysses.py --mesh.dp_shard 1
plan "qwen3-ulysses"

model {
  config    = "plans/models/tiny-qwen3"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  sp = 2  device = cpu }

parallelize {
  sp ulysses "model.layers.*.self_attn"
  fsdp       "model.layers.*"  reshard_after_forward
}

data {
  source "stdlib" { path = "data/demo/stdlib.jsonl"  format = jsonl  text = "text" }
  tokenizer = "data/demo/tokenizer"
  max_len   = 256
  pack      = greedy
}

train {
  steps = 40  global_batch = 16  micro_batch = 4
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  clip      = 1.0
}

checkpoint { dir = "out/qwen3-ulysses"  every = 20  keep = 2  export = hf }
