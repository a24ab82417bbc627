# Supervised fine-tuning on the demo's conversations about Python's standard library (questions on
# docstrings and signatures, made by `planc demo-data`): one epoch, a validation loss every 20 steps.
plan "sft-demo"

model {
  config    = "plans/models/tiny-llama"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  device = cpu }

parallelize {
  fsdp "model.layers.*"  reshard_after_forward
}

data {
  source "chat" { path = "data/demo/stdlib_chat.jsonl"  kind = sft }
  tokenizer     = "data/demo/tokenizer"
  chat_template = chatml
  max_len       = 256
  pack          = greedy
}

train {
  epochs = 1  global_batch = 16  micro_batch = 4
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
}

# the demo makes no held-out split: these are conversations the run also trains on
validation {
  source "chat" { path = "data/demo/stdlib_chat.jsonl"  kind = sft }
  every = 20  batches = 4
}

checkpoint { dir = "out/sft-demo"  keep = 1 }
