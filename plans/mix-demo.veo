# A weighted mixture: three parts the standard library's source code, one part conversations about
# it (both made by `planc demo-data`), each sample drawn by weight.
plan "mix-demo"

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
  source "code" { path = "data/demo/stdlib.jsonl"  weight = 3 }
  source "chat" { path = "data/demo/stdlib_chat.jsonl"  kind = sft  weight = 1 }
  tokenizer     = "data/demo/tokenizer"
  chat_template = chatml
  max_len       = 256
}

train {
  steps = 40  global_batch = 16  micro_batch = 4
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
}

checkpoint { dir = "out/mix-demo"  every = 20 }
