# The vision-language demo: a ~0.3M-parameter Qwen2.5-VL (vision tower + language model) fine-tuned
# with FSDP2 on 2 CPU processes, on conversations about real photographs and a video panned over one
# (made by `planc demo-data --vl`: scikit-image's sample photographs, its docstrings as answers).
plan "vl-demo"

model {
  config    = "plans/models/tiny-qwen2.5-vl"
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 2  device = cpu }

parallelize {
  fsdp       "model.language_model.layers.*"  "model.visual.blocks.*"  reshard_after_forward
  checkpoint "model.language_model.layers.*"  "model.visual.blocks.*"
}

data {
  source "photos" { path = "data/vl_demo/chat_hf.jsonl"  kind = sft }
  tokenizer = "data/vl_demo/tokenizer"
  max_len   = 512
  pack      = dynamic { tokens = 1024  patches = 1024 }
  media { max_pixels = 9216  video_min_pixels = 784  video_max_pixels = 4096  video_max_frames = 8 }
}

train {
  steps = 30  global_batch = 4  micro_batch = 1
  optimizer = adamw { lr = 2e-3 }
  lr "model.visual"  scale = 0.25
}

checkpoint { dir = "out/vl-demo"  every = 15 }
