# Llama-3-70B continued pre-training on 256 GPUs (32 nodes of 8): tensor parallel inside each node,
# FSDP2 across 16 nodes, and two HSDP replicas of that. Check it here with
#   planc check plans/llama3-70b.veo --skip-files --dry-run --device-memory 80GiB
#   planc explain plans/llama3-70b.veo --svg llama3-70b.svg
# (the data and tokenizer live on the cluster; --skip-files leaves them unread).
plan "llama3-70b"

model {
  config    = "plans/models/llama3-70b"  # Meta-Llama-3-70B's public config.json
  dtype     = fp32                       # master weights; compute in bf16 below
  attention = sdpa
}

mesh { dp_replicate = 2  dp_shard = 16  tp = 8  gpus_per_node = 8  device = cuda }

parallelize {
  tp         plan = model  # the config's own plan: q/k/v/gate/up colwise, o/down rowwise
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}

data {
  source "fineweb_edu" { path = "/data/fineweb-edu/sample-350BT"  format = parquet  text = "text" }
  tokenizer = "/models/Meta-Llama-3-70B"
  max_len   = 8192
  pack      = greedy
}

train {
  steps = 5000  global_batch = 512  micro_batch = 1
  optimizer = adamw { lr = 1.5e-4  weight_decay = 0.1  betas = [0.9, 0.95] }
  schedule  = cosine { warmup = 200  min_lr = 0.1 }
  clip      = 1.0
  mixed_precision { param = bf16  reduce = fp32 }
}

checkpoint { dir = "/checkpoints/llama3-70b"  every = 500  keep = 3  export = hf }
