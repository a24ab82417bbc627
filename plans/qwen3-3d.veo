# A tiny Qwen3 on a 3-D mesh of 8 processes: FSDP2 x Ulysses sp 2 x TP 2, with the model config's
# own tensor-parallel plan (q/k/v/gate/up by columns, o/down by rows, Qwen3's per-head q/k norms
# replicated with their gradients summed). 4 attention heads over tp*sp = 4 ranks: one head each.
# This machine cannot run 8 processes; `planc verify` runs the largest sub-layout that fits
# (sp 2 x tp 2 on 4 processes, FSDP over the sp ranks) and says so:
#   planc verify plans/qwen3-3d.veo
plan "qwen3-3d"

model {
  config    = "plans/models/tiny-qwen3"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  sp = 2  tp = 2  device = cpu }

parallelize {
  tp         plan = model
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
  steps = 40  global_batch = 16  micro_batch = 2
  optimizer = adamw { lr = 3e-3  weight_decay = 0.1 }
  schedule  = cosine { warmup = 4  min_lr = 0.1 }
  clip      = 1.0
}

checkpoint { dir = "out/qwen3-3d"  every = 20  keep = 2  export = hf }
