"""Driver for tests/test_vl_parallel.py, run under torchrun (2 gloo processes, fp32).

Each layout trains 2 steps (AdamW) on the same global step of packed vision-language
micro-batches (images, two images, a video, text only) through the runtime (meta build ->
EP / Ulysses -> activation checkpointing -> FSDP2 over the language model's layers and the
vision tower's blocks -> materialise), and every rank also trains the one-process reference on
all of it. With dp=2, rank 1's first micro-batch has no image and no video: only the dummy
vision input keeps its FSDP collectives in step with rank 0 (without it the run hangs). A
second part loads HF safetensors into the sharded model and exports it back.

Rank 0 writes {check: {"ok", "detail", ...}} to OUT.json.
usage: vl_checks.py OUT.json WORK_DIR DATA_DIR
"""
import faulthandler
import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for vlfix
import vlfix  # noqa: E402

from runtime import dist, loss, model as models, optim  # noqa: E402
from runtime.checkpoint.export import export_hf  # noqa: E402
from runtime.data.bad_records import BadRecords  # noqa: E402
from runtime.data.multimodal import Collator, RopeIndex, model_inputs  # noqa: E402
from runtime.data.multimodal.docs import VLDocMaker  # noqa: E402
from runtime.data.sources import Source, read_records  # noqa: E402
from runtime.parallel.checkpointing import apply_activation_checkpointing  # noqa: E402
from runtime.parallel.ep import apply_ep, shard_experts  # noqa: E402
from runtime.parallel.fsdp import apply_fsdp  # noqa: E402
from runtime.parallel.mesh_ep import ep_meshes  # noqa: E402
from runtime.parallel.ulysses_vl import apply_ulysses_vl, slice_labels  # noqa: E402
from runtime.parts import freeze  # noqa: E402

out_path, work, data_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
info = dist.init("cpu")
faulthandler.dump_traceback_later(600, exit=True)  # a hang (collective mismatch) shows where it is
UNITS = ["model.language_model.layers.*", "model.visual.blocks.*"]
results = {}


def record(name, ok, detail="", **extra):
    results[name] = {"ok": bool(ok), "detail": str(detail), **extra}
    print(f"[rank {info.rank}] {name}: {'ok' if ok else 'FAILED'} {detail}", flush=True)


def global_step(name, multiple=1):
    """Four micro-batches, each one packed row: [image, two images], [video, image], [text, text],
    [image]. Rank r of 2 takes micro-batches 2r and 2r+1."""
    proc = vlfix.processor(name, data_dir / "tokenizer")
    src = Source("chat", str(data_dir / "chat.jsonl"), kind="sft")
    maker = VLDocMaker(src, proc, 512, BadRecords())
    docs = [maker.make(r)[0] for r in read_records(src)]
    kinds = [tuple(k for k, _, _ in d.media) for d in docs]
    image = [d for d, k in zip(docs, kinds) if k == ("image",)]
    two = next(d for d, k in zip(docs, kinds) if k == ("image", "image"))
    video = next(d for d, k in zip(docs, kinds) if k == ("video",))
    text = [d for d, k in zip(docs, kinds) if not k]
    collate = Collator(proc, RopeIndex(proc.config), ("image", "video"), multiple)
    rows = [[image[0], two], [video, image[1]], [text[0], text[1]], [image[2]]]
    return [collate([row], 0, proc.tok.pad_token_id) for row in rows]


def train(model, micro_batches, group, steps=2, sp=None, parts=()):
    """Per-step loss and gradient norm; loss normalised by the step's global target count."""
    opt = optim.build_optimizer(model, lr=2e-3, parts=parts)
    losses, norms = [], []
    for _ in range(steps):
        mbs = [slice_labels(mb, *sp) for mb in micro_batches] if sp else micro_batches
        n = loss.count_targets(mbs, group)
        local = torch.zeros((), dtype=torch.float64)
        for mb in mbs:
            s = loss.cross_entropy_sum(model(**model_inputs(mb), use_cache=False).logits, mb["labels"])
            (s / n).backward()
            local += s.detach()
        losses.append(loss.step_loss(local, n, group))
        norms.append(optim.clip_grad_norm(model.parameters(), 1.0).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


def reference_run(name, mbs, frozen=(), parts=()):
    ref = vlfix.reference(name, seed=0)
    if frozen:
        freeze(ref, frozen)
    opt = optim.build_optimizer(ref, lr=2e-3, parts=parts)
    losses, norms = [], []
    for _ in range(2):
        n = sum(int((mb["labels"] != -100).sum()) for mb in mbs)
        total = 0.0
        for mb in mbs:
            s = loss.cross_entropy_sum(ref(**model_inputs(mb), use_cache=False).logits, mb["labels"])
            (s / n).backward()
            total += float(s.detach())
        losses.append(total / n)
        norms.append(optim.clip_grad_norm(ref.parameters(), 1.0).item())  # plain tensors: same on all ranks
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


def compare(check, got, want, tol=2e-6):
    (gl, gn), (wl, wn) = got, want
    worst = max(max(abs(a - b) / abs(b) for a, b in zip(gl, wl)), max(abs(a - b) / abs(b) for a, b in zip(gn, wn)))
    record(check, worst <= tol, f"losses {gl} vs {wl}; grad norms {gn} vs {wn}; worst relative {worst:.2e}",
           worst=worst, losses=gl, ref_losses=wl, norms=gn, ref_norms=wn)


def layout(name, *, sp=1, ep=1, frozen=()):
    mesh = dist.build_mesh(info, dp_shard=info.world // sp, sp=sp)
    m = models.build_meta(vlfix.CONFIGS[name])
    if frozen:
        freeze(m, frozen)
    if ep > 1:
        ep_mesh, ep_fsdp = ep_meshes(mesh.root, ep)
        apply_ep(m, ep_mesh)
        shard_experts(m, ep_fsdp)
    if sp > 1:
        apply_ulysses_vl(m, mesh.sp)
    apply_activation_checkpointing(m, UNITS)
    apply_fsdp(m, mesh.fsdp, UNITS)
    models.materialize(m, info.device, seed=0)
    return m, mesh


# 1. FSDP2 over 2 ranks, one of them with a text-only micro-batch (the dummy vision input).
for name in ("tiny-qwen2.5-vl", "tiny-qwen3-vl"):
    mbs = global_step(name)
    m, mesh = layout(name)
    mine = mbs[2 * mesh.dp_rank:2 * mesh.dp_rank + 2]
    record(f"{name}.rank1_has_a_textonly_micro_batch",
           tdist.get_rank() != 1 or all(int(g.prod(1).max()) == 4 for g in (mine[0]["image_grid_thw"],
                                                                        mine[0]["video_grid_thw"])))
    compare(f"{name}.fsdp2", train(m, mine, mesh.loss_group), reference_run(name, mbs))

# 1b. FSDP2 with the vision tower's blocks frozen and its merger at a tenth of the rate.
name, frozen, parts = "tiny-qwen3-vl", ["model.visual.blocks.*"], [("model.visual.merger", 2e-4)]
mbs = global_step(name)
m, mesh = layout(name, frozen=frozen)
start = {n: p.full_tensor().clone() for n, p in m.named_parameters() if not p.requires_grad}
compare(f"{name}.fsdp2_frozen_tower", train(m, mbs[2 * mesh.dp_rank:2 * mesh.dp_rank + 2], mesh.loss_group,
                                            parts=parts), reference_run(name, mbs, frozen, parts))
moved = [n for n, p in m.named_parameters() if not p.requires_grad and not torch.equal(p.full_tensor(), start[n])]
record(f"{name}.frozen_stay", start and not moved, f"{len(start)} frozen, moved: {moved[:3]}")

# 2. Ulysses SP=2: each sp rank holds half of every row; images whole on both.
for name in ("tiny-qwen2.5-vl", "tiny-qwen3-vl"):
    mbs = global_step(name, multiple=2)
    m, mesh = layout(name, sp=2)
    compare(f"{name}.sp2", train(m, mbs, mesh.loss_group, sp=(mesh.sp.get_local_rank(), 2)),
            reference_run(name, mbs))

# 3. EP=2 on Qwen3-VL-MoE (experts split over the 2 ranks, FSDP over the rest).
name = "tiny-qwen3-vl-moe"
mbs = global_step(name)
m, mesh = layout(name, ep=2)
experts = m.model.language_model.layers[0].mlp.experts
record(f"{name}.experts_split", experts.gate_up_proj.to_local().shape[0] == 4,
       f"local experts {experts.gate_up_proj.to_local().shape[0]}")
compare(f"{name}.ep2", train(m, mbs[2 * mesh.dp_rank:2 * mesh.dp_rank + 2], mesh.loss_group),
        reference_run(name, mbs), tol=5e-6)

# 4. Sharded load of save_pretrained safetensors (legacy Qwen2.5-VL keys) and export from shards.
for name in ("tiny-qwen2.5-vl", "tiny-qwen3-vl-moe"):
    saved = work / f"saved_{name}"
    ref = vlfix.reference(name, seed=7)
    if info.rank == 0:
        ref.save_pretrained(saved)
    tdist.barrier()
    mesh = dist.build_mesh(info, dp_shard=info.world)
    m = models.build_meta(vlfix.CONFIGS[name])
    apply_fsdp(m, mesh.fsdp, UNITS)
    models.materialize(m, info.device, seed=0, weights=saved)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    want = ref.state_dict()
    bad = [k for k, v in want.items() if not torch.equal(full[k], v)] if info.rank == 0 else []
    record(f"{name}.sharded_load_exact", not bad, bad[:3])
    out = export_hf(work / f"export_{name}", m)
    if info.rank == 0:
        from transformers import AutoModelForImageTextToText
        back = AutoModelForImageTextToText.from_pretrained(out).state_dict()
        bad = [k for k, v in want.items() if not torch.equal(back[k], v)]
        record(f"{name}.export_reloads_exactly", not bad, bad[:3])

if info.rank == 0:
    out_path.write_text(json.dumps(results, indent=1))
dist.finish()
