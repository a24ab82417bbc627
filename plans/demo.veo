# The demo: a ~3M-parameter Llama trained with FSDP2 on 2 CPU processes, on Python's own
# standard-library sources (made by `planc demo-data`).
plan "demo"

model {
  config    = "plans/models/tiny-llama"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  device = cpu }

parallelize {
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}

data {
  source "stdlib" { path = "data/demo/stdlib.jsonl"  format = jsonl  text = "text" }
  tokenizer = "data/demo/tokenizer"
  max_len   = 256
  pack      = greedy
}

train {
  steps = 40  global_batch = 16  micro_batch = 4
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1  betas = [0.9, 0.95] }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  clip      = 1.0
  seed      = 0
}

checkpoint { dir = "out/demo"  every = 20  keep = 2  export = hf }
