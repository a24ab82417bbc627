# Block diffusion on a tiny Qwen3-MoE backbone (8 experts, 2 active; LLaDA2's backbones are MoE) with
# expert parallelism inside FSDP2 on 4 CPU processes: ep 2 borrows ranks from dp_shard 4, each rank
# holds 4 experts; the [x_t ; x_0] rows' tokens travel to their experts and back by all-to-all.
# Trained as plans/diffusion-demo.veo is (`planc demo-data --diffusion` makes its data), without the
# MoE load-balancing loss (as dFactory trains LLaDA2).
# Prove it against one process first:   planc verify plans/diffusion-moe-ep.veo
plan "diffusion-moe-ep"

model {
  config    = "plans/models/tiny-qwen3-moe-diffusion"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 4  ep = 2  device = cpu }

parallelize {
  ep   "model.layers.*.mlp.experts"
  fsdp "model.layers.*"  reshard_after_forward
}

data {
  source "chat" { path = "data/demo/stdlib_chat.jsonl"  kind = sft }
  tokenizer     = "data/demo/tokenizer-mask"
  max_len       = 256
  pack          = greedy
  chat_template = chatml
}

train {
  steps = 40  global_batch = 16  micro_batch = 2
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  objective = block_diffusion { block = 32  noise = [0.3, 0.8]  mask_token = "<|mask|>" }
}

checkpoint { dir = "out/diffusion-moe-ep"  every = 20  keep = 2  export = hf }
