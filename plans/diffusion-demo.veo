# The block-diffusion demo: a ~0.6M-parameter Qwen3 trained as a LLaDA2-style block-diffusion model
# (dFactory's objective) with FSDP2 on 2 CPU processes, on conversations about Python's standard
# library (made by `planc demo-data --diffusion`: the demo's chats and its tokenizer plus <|mask|>).
plan "diffusion-demo"

model {
  config    = "plans/models/tiny-qwen3-diffusion"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  device = cpu }

parallelize {
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}

data {
  source "chat" { path = "data/demo/stdlib_chat.jsonl"  kind = sft }
  tokenizer     = "data/demo/tokenizer-mask"
  max_len       = 256
  pack          = greedy
  chat_template = chatml
}

train {
  steps = 40  global_batch = 8  micro_batch = 2
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  objective = block_diffusion { block = 32  noise = [0.3, 0.8]  mask_token = "<|mask|>" }
}

checkpoint { dir = "out/diffusion-demo"  every = 20 }
