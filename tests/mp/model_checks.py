"""Driver for tests/test_runtime_model.py, run under torchrun (2 gloo processes).

For each tiny config given (Llama, and Qwen3 with tied embeddings) it checks, against one-process
references built on every rank: meta build -> activation checkpointing -> FSDP2 -> seeded init
equals `from_config`; rotary buffers are rebuilt; one forward/backward over a batch split across
ranks gives the single-process loss, gradients and gradient norm (FSDP2, FSDP2 with CPU offload,
plain replication); loading HF safetensors shard by shard is exact; the HF export reloads with
`from_pretrained` to the same weights and logits. Rank 0 writes {check: {"ok": bool, "detail":
str}} as JSON to argv[1].

usage: model_checks.py OUT.json WORK_DIR CONFIG_DIR [CONFIG_DIR ...]
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from runtime import dist, loss, model as models, optim
from runtime.checkpoint.export import export_hf
from runtime.parallel.checkpointing import apply_activation_checkpointing
from runtime.parallel.ddp import apply_replicate
from runtime.parallel.fsdp import apply_fsdp

out_path, work = Path(sys.argv[1]), Path(sys.argv[2])
config_dirs = [Path(p) for p in sys.argv[3:]]
info = dist.init("cpu")
mesh = dist.build_mesh(info, dp_shard=info.world)
results = {}


def record(name, ok, detail=""):
    results[name] = {"ok": bool(ok), "detail": str(detail)}


def reference(config_dir, seed):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(models.load_config(config_dir), dtype=torch.float32)


def sharded(config_dir, *, seed=0, weights=None):
    m = models.build_meta(config_dir)
    apply_activation_checkpointing(m, ["model.layers.*"])
    apply_fsdp(m, mesh.fsdp, ["model.layers.*"])
    models.materialize(m, info.device, seed=seed, weights=weights)
    return m


def full_state(m):
    return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def compare_states(got, ref):
    """Names that differ (or are missing), comparing exactly."""
    return [k for k, v in ref.items() if k not in got or not torch.equal(got[k], v)]


def batch(seed, rows=4, length=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 4096, (rows, length), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((rows, 1), loss.IGNORE)], dim=1)
    labels[0, 5:] = loss.IGNORE  # uneven target counts across ranks
    pos = torch.arange(length).repeat(rows, 1)
    pos[1, 10:] = torch.arange(length - 10)  # a packed second document in row 1
    return [{"input_ids": ids[i:i + 1], "labels": labels[i:i + 1], "position_ids": pos[i:i + 1]}
            for i in range(rows)]


for cdir in config_dirs:
    fam = models.load_config(cdir).model_type
    ref = reference(cdir, seed=0)
    ref_sd = ref.state_dict()

    # 1. seeded init on the sharded model == one-process from_config
    m = sharded(cdir, seed=0)
    got = full_state(m)
    bad = compare_states(got, ref_sd)
    record(f"{fam}.init_equals_from_config", not bad and len(got) == len(ref_sd), bad[:5])
    ref_bufs = dict(ref.named_buffers())
    bad = [n for n, b in m.named_buffers() if n in ref_bufs and not torch.equal(b, ref_bufs[n])]
    record(f"{fam}.rotary_buffers_rebuilt", not bad and any("inv_freq" in n for n, _ in m.named_buffers()), bad)
    if ref.config.tie_word_embeddings:
        record(f"{fam}.tied_head_stays_tied", m.lm_head.weight is m.model.embed_tokens.weight)

    # 2. one step's loss, gradients and norm == one process (batch split over the ranks)
    mbs = batch(1)
    per = len(mbs) // info.world
    mine = mbs[info.rank * per:(info.rank + 1) * per]
    n = loss.count_targets(mine, mesh.loss_group)
    local = torch.zeros((), dtype=torch.float64)
    for mb in mine:
        s = loss.lm_loss_sum(m, mb)
        (s / n).backward()
        local += s.detach()
    step_loss = loss.step_loss(local, n, mesh.loss_group)
    norm = optim.clip_grad_norm(m.parameters(), 0.0).item()
    grads = {k: p.grad.full_tensor() for k, p in m.named_parameters()}
    ref_sum = torch.zeros((), dtype=torch.float64)
    for mb in mbs:
        s = loss.lm_loss_sum(ref, mb)
        (s / n).backward()
        ref_sum += s.detach()
    ref_loss = float(ref_sum) / n
    ref_norm = optim.clip_grad_norm(ref.parameters(), 0.0).item()
    worst = max(((grads[k] - p.grad).abs().max() / p.grad.abs().max()).item() for k, p in ref.named_parameters())
    record(f"{fam}.loss_parity", abs(step_loss - ref_loss) <= 1e-6 * ref_loss, f"{step_loss} vs {ref_loss}")
    record(f"{fam}.grad_parity", worst <= 1e-5, f"worst relative max-abs difference {worst:.3g}")
    record(f"{fam}.grad_norm_parity", abs(norm - ref_norm) <= 1e-6 * ref_norm, f"{norm} vs {ref_norm}")

    # 2b. plain replication (DDP): the same gradients, every rank holding all of them
    rep = models.build_meta(cdir)
    apply_replicate(rep, mesh.fsdp)
    models.materialize(rep, info.device, seed=0)
    for mb in mine:
        (loss.lm_loss_sum(rep, mb) / n).backward()
    rep_grads = {k: (p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad) for k, p in rep.named_parameters()}
    worst = max(((rep_grads[k] - p.grad).abs().max() / p.grad.abs().max()).item() for k, p in ref.named_parameters())
    record(f"{fam}.replicate_grad_parity", worst <= 1e-5, f"worst relative max-abs difference {worst:.3g}")

    # 2c. FSDP with parameters and gradients offloaded to CPU memory: the same gradients
    off = models.build_meta(cdir)
    apply_fsdp(off, mesh.fsdp, ["model.layers.*"], offload=True)
    models.materialize(off, info.device, seed=0)
    for mb in mine:
        (loss.lm_loss_sum(off, mb) / n).backward()
    off_grads = {k: p.grad.full_tensor() for k, p in off.named_parameters()}
    worst = max(((off_grads[k] - p.grad).abs().max() / p.grad.abs().max()).item() for k, p in ref.named_parameters())
    record(f"{fam}.offload_grad_parity", worst <= 1e-5, f"worst relative max-abs difference {worst:.3g}")

    # 3. foreach choice: all parameters DTensors on one mesh -> torch decides; mixed -> off
    params = list(m.parameters())
    record(f"{fam}.foreach_choice", optim._foreach_ok(params) is None
           and optim._foreach_ok(params + [torch.nn.Parameter(torch.zeros(2))]) is False
           and all(isinstance(p, DTensor) for p in params))

    # 4. weights from safetensors, each rank reading its shards
    wdir = work / f"{fam}_weights"
    ref2 = reference(cdir, seed=1)
    if info.rank == 0:
        ref2.save_pretrained(wdir)
    tdist.barrier()
    found = models.weights_dir(wdir)
    m2 = sharded(wdir, seed=0, weights=found)  # the seed must not matter here
    bad = compare_states(full_state(m2), ref2.state_dict())
    record(f"{fam}.load_safetensors_exact", found == wdir and not bad, bad[:5])

    # 5. HF export from all ranks -> from_pretrained on one process: same weights, same logits
    edir = export_hf(work / f"{fam}_export", m2)
    if info.rank == 0:
        back = AutoModelForCausalLM.from_pretrained(edir)
        bad = compare_states(back.state_dict(), ref2.state_dict())
        ids = mbs[1]["input_ids"]
        with torch.no_grad():
            a = back(input_ids=ids, use_cache=False).logits
            b = ref2(input_ids=ids, use_cache=False).logits
        files = sorted(p.name for p in edir.iterdir())
        record(f"{fam}.export_reloads_exactly", not bad and torch.equal(a, b), f"{bad[:5]} files={files}")
        record(f"{fam}.export_has_no_leftovers", "sharded" not in files and "config.json" in files, files)
    tdist.barrier()

if info.rank == 0:
    out_path.write_text(json.dumps(results, indent=1))
dist.finish()
