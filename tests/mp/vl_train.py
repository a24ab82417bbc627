"""Train a vision-language model the way a generated script will (tests/test_vl_train.py runs it).

Written by hand in the generated scripts' shape, top to bottom, so it doubles as the template the
compiler's vision-language wiring follows: settings with command-line overrides, mesh, meta build,
(Ulysses on the language model), activation checkpointing, FSDP2 over the language model's layers
and the vision tower's blocks, materialise, optimizer with the vision tower at its own rate, the
offline processor and the VL loader, resume, the loop, DCP checkpoints and the HF export with its
processor. Launch:
    torchrun --standalone --nproc-per-node 2 tests/mp/vl_train.py --data.chat.path D/chat.jsonl --data.tokenizer D/tokenizer
"""
import torch

from runtime import config, dist, loss, metrics, model as models, optim
from runtime.checkpoint import dcp, export
from runtime.data import Source
from runtime.data.multimodal import build_processor, build_vl_loader, model_inputs
from runtime.parallel.checkpointing import apply_activation_checkpointing
from runtime.parallel.fsdp import apply_fsdp
from runtime.parallel.ulysses_vl import apply_ulysses_vl, slice_labels

SETTINGS = {
    "model.config": "plans/models/tiny-qwen2.5-vl",
    "model.dtype": "fp32",
    "model.attention": "sdpa",
    "mesh.dp_shard": 2,
    "mesh.sp": 1,
    "mesh.device": "cpu",
    "data.chat.path": "data/vl_demo/chat_hf.jsonl",
    "data.tokenizer": "data/vl_demo/tokenizer",
    "data.max_len": 512,
    "data.pack": "dynamic",
    "data.tokens": 1024,
    "data.patches": 256,
    "data.min_pixels": 28 * 28,
    "data.max_pixels": 96 * 96,
    "data.video_fps": 4.0,
    "data.video_min_frames": 2,
    "data.video_max_frames": 8,
    "data.video_min_pixels": 28 * 28,
    "data.video_max_pixels": 64 * 64,
    "train.steps": 6,
    "train.global_batch": 4,
    "train.micro_batch": 1,
    "train.lr": 2e-3,
    "train.vision_lr": 5e-4,
    "train.clip": 1.0,
    "train.seed": 0,
    "checkpoint.dir": "out/vl",
    "checkpoint.every": 3,
    "checkpoint.keep": 2,
}

cfg = config.load(SETTINGS, prog="tests/mp/vl_train.py")

# --- distributed init + mesh ---
info = dist.init(cfg.mesh.device)
mesh = dist.build_mesh(info, dp_shard=cfg.mesh.dp_shard, sp=cfg.mesh.sp)
log = metrics.Metrics(cfg.checkpoint.dir, steps=cfg.train.steps, rank=info.rank)

# --- model on the meta device: AutoModelForImageTextToText for a config with a vision tower ---
model = models.build_meta(cfg.model.config, dtype=cfg.model.dtype, attention=cfg.model.attention)

# --- parallelize ---
sp = mesh.sp.size()
if sp > 1:  # a plan with `sp ulysses` would emit this line unconditionally
    # whole rows through the vision tower on every sp rank; the language model gets its slice
    apply_ulysses_vl(model, mesh.sp)
apply_activation_checkpointing(model, ["model.language_model.layers.*", "model.visual.blocks.*"])
apply_fsdp(model, mesh.fsdp, ["model.language_model.layers.*", "model.visual.blocks.*"], reshard_after_forward=True)

# --- materialise this rank's shards ---
models.materialize(model, info.device, seed=cfg.train.seed, weights=models.weights_dir(cfg.model.config))
torch.manual_seed(cfg.train.seed)

# --- optimizer + schedule: the vision tower at its own learning rate ---
optimizer = optim.build_optimizer(model, lr=cfg.train.lr, parts=[("model.visual", cfg.train.vision_lr)])
scheduler = optim.build_schedule(optimizer, kind="cosine", steps=cfg.train.steps, warmup=1)

# --- data: the processor (tokenizer + chat template + media settings), whole samples packed ---
grad_accum = mesh.grad_accum(cfg.train.global_batch, cfg.train.micro_batch)
processor = build_processor(cfg.data.tokenizer, model.config, min_pixels=cfg.data.min_pixels,
                            max_pixels=cfg.data.max_pixels, video_fps=cfg.data.video_fps,
                            video_min_frames=cfg.data.video_min_frames, video_max_frames=cfg.data.video_max_frames,
                            video_min_pixels=cfg.data.video_min_pixels, video_max_pixels=cfg.data.video_max_pixels)
sources = [Source(name="chat", path=cfg.data.chat.path, kind="sft")]
loader = build_vl_loader(sources, processor, max_len=cfg.data.max_len, pack=cfg.data.pack,
                         micro_batch=cfg.train.micro_batch, grad_accum=grad_accum, dp_rank=mesh.dp_rank,
                         dp_size=mesh.dp_size, seed=cfg.train.seed, tokens=cfg.data.tokens,
                         patches=cfg.data.patches, pad_to_multiple_of=sp)

# --- resume ---
resume_from = dcp.resolve_resume(cfg.resume, cfg.checkpoint.dir)
start = 0
if resume_from is not None:
    start = dcp.load(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
    log.info(f"resumed from {resume_from} after step {start}")
log.start_at(start)

# --- train ---
model.train()
batches = iter(loader)
for step in range(start + 1, cfg.train.steps + 1):
    micro_batches = next(batches)
    if sp > 1:  # this sp rank's slice of the labels (the logits come out sliced)
        micro_batches = [slice_labels(mb, mesh.sp.get_local_rank(), sp) for mb in micro_batches]
    tokens = loss.count_targets(micro_batches, mesh.loss_group)
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    for batch in micro_batches:
        batch = {k: v.to(info.device) for k, v in batch.items()}
        # attention_mask stays None and use_cache False: packed samples attend only within themselves
        out = model(**model_inputs(batch), use_cache=False)
        micro_loss = loss.cross_entropy_sum(out.logits, batch["labels"])
        (micro_loss / tokens).backward()
        loss_sum += micro_loss.detach()
    grad_norm = optim.clip_grad_norm(model.parameters(), cfg.train.clip)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    log.log(step, loss=loss.step_loss(loss_sum, tokens, mesh.loss_group), grad_norm=grad_norm.item(),
            lr=lr, tokens=tokens)
    if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
        path = dcp.save(cfg.checkpoint.dir, step, model=model, optimizer=optimizer,
                        scheduler=scheduler, loader=loader, keep=cfg.checkpoint.keep)
        log.info(f"checkpoint {path}")

# --- export for Hugging Face: safetensors + config + processor ---
log.info(f"exported {export.export_hf(f'{cfg.checkpoint.dir}/hf', model, processor=processor)}")

dist.finish()
