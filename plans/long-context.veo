# Llama-3.1-8B at its full 128K context on 64 GPUs: Ulysses sequence parallelism of 8 inside each
# node splits every 131072-token row into 16384-token slices (attention trades them for heads by
# all-to-all), FSDP2 shards the model over all 64 ranks. Check it here with
#   planc check plans/long-context.veo --skip-files --dry-run --device-memory 80GiB
plan "long-context"

model {
  config    = "plans/models/llama3.1-8b"  # Llama-3.1-8B's public config.json (rope scaled to 128K)
  dtype     = fp32
  attention = sdpa
}

mesh { dp_shard = 8  sp = 8  gpus_per_node = 8  device = cuda }

parallelize {
  sp ulysses "model.layers.*.self_attn"
  fsdp       "model.layers.*"  reshard_after_forward
  checkpoint "model.layers.*"
}

data {
  source "books" { path = "/data/long-books"  format = jsonl  text = "text" }
  tokenizer = "/models/Llama-3.1-8B"
  max_len   = 131072
  pack      = greedy
}

train {
  steps = 1000  global_batch = 64  micro_batch = 1
  optimizer = adamw { lr = 1e-5  weight_decay = 0.1 }
  schedule  = cosine { warmup = 50 }
  mixed_precision { param = bf16  reduce = fp32 }
}

checkpoint { dir = "/checkpoints/long-context"  every = 100  keep = 2  export = hf }
