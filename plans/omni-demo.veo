# The Omni (audio) demo: a ~0.3M-parameter Qwen2.5-Omni thinker (audio tower + vision tower + language
# model) fine-tuned with FSDP2 on 2 CPU processes, on conversations about real recordings (made by
# `planc demo-data --omni`: CPython's own test recordings of a plucked string, in every encoding it
# ships, and a few variants of it).
plan "omni-demo"

model {
  config    = "plans/models/tiny-qwen2.5-omni-thinker"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  device = cpu }

parallelize {
  fsdp "model.language_model.layers.*"  "model.visual.blocks.*"  "model.audio_tower.layers.*"  reshard_after_forward
}

data {
  source "plucks" { path = "data/omni_demo/chat_hf.jsonl"  kind = sft }
  tokenizer = "data/omni_demo/tokenizer"
  max_len   = 256
  pack      = dynamic { tokens = 1024 }
  media {
    max_pixels = 9216  video_min_pixels = 784  video_max_pixels = 4096  video_max_frames = 8  audio_max_seconds = 4.0
  }
}

train {
  steps = 30  global_batch = 4  micro_batch = 1
  optimizer = adamw { lr = 3e-3 }
}

checkpoint { dir = "out/omni-demo"  every = 15 }
