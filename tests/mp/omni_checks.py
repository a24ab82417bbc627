"""Driver for tests/test_omni_parallel.py, run under torchrun (2 gloo processes, fp32).

Omni thinkers under the runtime's layouts against one process (2 AdamW steps, clip 1.0): FSDP2 over
the language model's layers, the vision blocks and the audio tower's layers on Qwen2.5-Omni, where
rank 1's micro-batches hold no audio (only the dummy clip keeps the audio tower's collectives in
step) and the audio tower's `audio_bos_eos_token` never gets a gradient (it must not break FSDP,
clipping or a DCP save + load); EP=2 on Qwen3-Omni-MoE; Ulysses SP=2 on Qwen2.5-Omni.

Rank 0 writes {check: {"ok", "detail", ...}} to OUT.json.
usage: omni_checks.py OUT.json WORK_DIR DATA_DIR
"""
import faulthandler
import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for omnifix
import omnifix  # noqa: E402

from runtime import dist, loss, model as models, optim  # noqa: E402
from runtime.checkpoint import dcp  # noqa: E402
from runtime.data.bad_records import BadRecords  # noqa: E402
from runtime.data.multimodal import Collator, model_inputs  # noqa: E402
from runtime.data.multimodal.docs import VLDocMaker  # noqa: E402
from runtime.data.multimodal.positions import rope_index  # noqa: E402
from runtime.data.sources import Source, read_records  # noqa: E402
from runtime.parallel.ep import apply_ep, shard_experts  # noqa: E402
from runtime.parallel.fsdp import apply_fsdp  # noqa: E402
from runtime.parallel.mesh_ep import ep_meshes  # noqa: E402
from runtime.parallel.ulysses_vl import apply_ulysses_vl, slice_labels  # noqa: E402

out_path, work, data_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
info = dist.init("cpu")
faulthandler.dump_traceback_later(300, exit=True)  # a hang (collective mismatch) shows where it is
UNITS = ["model.language_model.layers.*", "model.visual.blocks.*", "model.audio_tower.layers.*"]
results = {}


def record(name, ok, detail="", **extra):
    results[name] = {"ok": bool(ok), "detail": str(detail), **extra}
    print(f"[rank {info.rank}] {name}: {'ok' if ok else 'FAILED'} {detail}", flush=True)


def global_step(name, multiple=1):
    """Four micro-batches: [audio, image + audio], [audio, image + audio], [image, text], [image, text].
    Rank r of 2 takes micro-batches 2r and 2r+1: rank 1 has no audio at all."""
    proc = omnifix.processor(name, data_dir / "tokenizer")
    src = Source("chat", str(data_dir / "chat.jsonl"), kind="sft")
    maker = VLDocMaker(src, proc, 512, BadRecords())
    docs = [maker.make(r)[0] for r in read_records(src)]
    collate = Collator(proc, rope_index(proc.config), ("image", "audio"), multiple)
    rows = [docs[0:2], docs[4:6], docs[2:4], docs[6:8]]
    return [collate([row], 0, proc.tok.pad_token_id) for row in rows]


def train(model, micro_batches, group, steps=2, sp=None):
    opt = optim.build_optimizer(model, lr=2e-3)
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
    return losses, norms, opt


def reference_run(name, mbs):
    """The same steps on one process (every rank runs it on the whole global step)."""
    ref = omnifix.reference(name)
    opt = optim.build_optimizer(ref, lr=2e-3)
    losses, norms = [], []
    for _ in range(2):
        n = sum(int((mb["labels"] != -100).sum()) for mb in mbs)
        total = 0.0
        for mb in mbs:
            s = loss.cross_entropy_sum(ref(**model_inputs(mb), use_cache=False).logits, mb["labels"])
            (s / n).backward()
            total += float(s.detach())
        losses.append(total / n)
        norms.append(optim.clip_grad_norm(ref.parameters(), 1.0).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


def compare(check, got, want, tol=2e-6):
    (gl, gn), (wl, wn) = got, want
    worst = max(max(abs(a - b) / abs(b) for a, b in zip(gl, wl)), max(abs(a - b) / abs(b) for a, b in zip(gn, wn)))
    record(check, worst <= tol, f"losses {gl} vs {wl}; grad norms {gn} vs {wn}; worst relative {worst:.2e}")


def layout(name, ep=1, sp=1):
    mesh = dist.build_mesh(info, dp_shard=info.world // sp, sp=sp)
    m = models.build_meta(omnifix.CONFIGS[name])
    if sp > 1:
        apply_ulysses_vl(m, mesh.sp)
    if ep > 1:
        ep_mesh, ep_fsdp = ep_meshes(mesh.root, ep)
        apply_ep(m, ep_mesh)
        shard_experts(m, ep_fsdp)
    apply_fsdp(m, mesh.fsdp, UNITS)
    models.materialize(m, info.device, seed=0)
    return m, mesh


class NoData:  # dcp.save/load want a loader state
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


# 1. FSDP2 on Qwen2.5-Omni; rank 1 without audio; the never-used parameter; a DCP round trip.
name = "tiny-qwen2.5-omni-thinker"
mbs = global_step(name)
m, mesh = layout(name)
mine = mbs[2 * mesh.dp_rank:2 * mesh.dp_rank + 2]
record(f"{name}.rank1_has_no_audio", info.rank != 1 or all(mb["input_features"].shape[0] == 1 and
                                                           int(mb["feature_attention_mask"].sum()) < 8 for mb in mine))
losses, norms, opt = train(m, mine, mesh.loss_group)
compare(f"{name}.fsdp2", (losses, norms), reference_run(name, mbs))
frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
record(f"{name}.never_used_parameter_frozen", frozen == ["model.audio_tower.audio_bos_eos_token.weight"], frozen)
before = {n: p.full_tensor().clone() for n, p in m.named_parameters()}
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
path = dcp.save(work / "ckpt", 2, model=m, optimizer=opt, scheduler=sched, loader=NoData())
m2, _ = layout(name)
opt2 = optim.build_optimizer(m2, lr=2e-3)
step = dcp.load(path, model=m2, optimizer=opt2, scheduler=torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0),
                loader=NoData())
bad = [n for n, p in m2.named_parameters() if not torch.equal(p.full_tensor(), before[n])]
record(f"{name}.dcp_round_trip", step == 2 and not bad, bad[:3])
# one more step on both: the restored optimizer state continues exactly
a, _, _ = train(m, mine, mesh.loss_group, steps=1)
b, _, _ = train(m2, mine, mesh.loss_group, steps=1)
record(f"{name}.dcp_resume_same_loss", abs(a[0] - b[0]) <= 1e-6 * abs(a[0]), f"{a} vs {b}")

# 2. EP=2 on Qwen3-Omni-MoE (experts split over the 2 ranks, FSDP over the rest).
name = "tiny-qwen3-omni-moe-thinker"
mbs = global_step(name)
m, mesh = layout(name, ep=2)
experts = m.model.language_model.layers[0].mlp.experts
record(f"{name}.experts_split", experts.gate_up_proj.to_local().shape[0] == 4,
       f"local experts {experts.gate_up_proj.to_local().shape[0]}")
got = train(m, mbs[2 * mesh.dp_rank:2 * mesh.dp_rank + 2], mesh.loss_group)
compare(f"{name}.ep2", got[:2], reference_run(name, mbs), tol=5e-6)

# 3. Ulysses SP=2 on Qwen2.5-Omni: each sp rank holds half of every row; clips and images whole on both.
name = "tiny-qwen2.5-omni-thinker"
mbs = global_step(name, multiple=2)
m, mesh = layout(name, sp=2)
got = train(m, mbs, mesh.loss_group, sp=(mesh.sp.get_local_rank(), 2))
compare(f"{name}.sp2", got[:2], reference_run(name, mbs))

if info.rank == 0:
    out_path.write_text(json.dumps(results, indent=1))
dist.finish()
