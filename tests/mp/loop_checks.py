"""Training-loop features on 2 gloo ranks against one process, in one launch.

    torchrun --nproc-per-node 2 tests/mp/loop_checks.py OUT.json CORPUS TOKENIZER WORKDIR

Every rank also computes the one-process reference itself (same seed, same global batches), and
rank 0 writes one JSON record per check:
- validation: FSDP2 (dp 2, greedy and dynamic packing) and Ulysses sp 2 validation losses vs one
  process; and the same loss twice (the loader restarts at every pass);
- lora_<layout>: LoRA (rank 4 on q/v/down) built on the meta device, materialised, trained 3
  steps with activation checkpointing, on FSDP2, Ulysses sp 2 and FSDP2 x EP2 (a MoE model) vs
  one process; then (FSDP2) a trainable-only DCP checkpoint resumed into a fresh model, the merged
  HF export's logits and the peft adapter directory's logits against the adapted model's;
- offload_<layout>: activation offloading, alone and with checkpointing, vs neither, on FSDP2, TP 2
  (the model's own TP plan), Ulysses sp 2 and FSDP2 x EP 2 (a MoE model).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as tdcp
from transformers import AutoModelForCausalLM

from runtime import dist as rdist, lora, model as models, optim
from runtime.checkpoint import dcp
from runtime.data import Source, build_loader, load_tokenizer
from runtime.loss import count_targets, cross_entropy_sum, step_loss
from runtime.parallel.checkpointing import apply_activation_checkpointing
from runtime.parallel.ep import apply_ep, shard_experts
from runtime.parallel.fsdp import apply_fsdp
from runtime.parallel.globs import expand
from runtime.parallel.mesh_ep import ep_meshes
from runtime.parallel.offload import OffloadStats, apply_activation_offload
from runtime.parallel.tp import apply_tp, tp_rules_from_config
from runtime.parallel.ulysses import apply_ulysses, slice_for_sp
from runtime.validation import ValTotals, build_val_loader

SEED, STEPS, LR = 0, 3, 3e-3
DENSE = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 8, "vocab_size": 4096, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
         "eos_token_id": 2}
MOE = {**DENSE, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "moe_intermediate_size": 16,
       "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "norm_topk_prob": True,
       "router_aux_loss_coef": 0.0}
SPEC = lora.LoraSpec(rank=4, alpha=8, targets=("model.layers.*.self_attn.{q,v}_proj", "model.layers.*.mlp.down_proj"))
MOE_SPEC = lora.LoraSpec(rank=4, alpha=8, targets=("model.layers.*.self_attn.{q,v}_proj",))


def write_config(work: Path, name: str, cfg: dict) -> Path:
    d = work / name
    if dist.get_rank() == 0:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg))
    dist.barrier()
    return d


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def forward_loss(model, batch):
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    return cross_entropy_sum(out.logits, batch["labels"])


def reference_model(config_dir, spec=None):
    """One process, no sharding: the model every layout must reproduce."""
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(models.load_config(config_dir))
    if spec is not None:
        lora.apply_lora(model, spec)
        model.load_state_dict(lora.adapter_init(model, SEED), strict=False)  # lora.materialize's adapters
    return model


def train(model, loader, steps, group=None, sp_mesh=None):
    """The generated script's step: global target-token normalisation, float64 clipping, AdamW.
    group=None: the one-process reference (counts and losses stay on this rank)."""
    opt = optim.build_optimizer(model, lr=LR)
    it, losses, norms = iter(loader), [], []
    for _ in range(steps):
        micro = next(it)
        if sp_mesh is not None:
            micro = [slice_for_sp(b, sp_mesh.get_local_rank(), sp_mesh.size()) for b in micro]
        tokens = count_targets(micro, group) if group is not None else \
            sum(int((b["labels"] != -100).sum()) for b in micro)
        total = torch.zeros((), dtype=torch.float64)
        for b in micro:
            loss = forward_loss(model, b)
            (loss / tokens).backward()
            total += loss.detach()
        if group is None:  # plain tensors, whole on this rank: torch's own clipping (float64 for parity)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads]))
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), 1.0, norm)
            norms.append(float(norm))
            losses.append(float(total) / tokens)
        else:
            norms.append(float(optim.clip_grad_norm(model.parameters(), 1.0)))
            losses.append(step_loss(total, tokens, group))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms, opt


def check_validation(info, cfg_dir, src, tok):
    """FSDP2 (dp 2) with greedy and dynamic packing, and Ulysses sp 2 (each rank a slice of every
    row), against one process."""
    out = {}
    for name, degrees, pack, extra, micro in (("greedy", {"dp_shard": 2}, "greedy", {}, 2),
                                              ("dynamic", {"dp_shard": 2}, "dynamic", {"tokens": 128}, 1),
                                              ("sp2", {"sp": 2}, "dynamic", {"tokens": 128}, 1)):
        mesh = rdist.build_mesh(info, **degrees)
        sp = degrees.get("sp", 1)
        global_rows = 8
        model = models.build_meta(cfg_dir)
        if sp > 1:
            apply_ulysses(model, mesh.sp, expand(model, ["model.layers.*.self_attn"]))
        apply_fsdp(model, mesh.fsdp, ["model.layers.*"])
        models.materialize(model, info.device, seed=SEED)
        ref = reference_model(cfg_dir)
        vl = build_val_loader([src], tok, batches=3, max_len=64, pack=pack, micro_batch=micro,
                              grad_accum=global_rows // (micro * mesh.dp_size), dp_rank=mesh.dp_rank,
                              dp_size=mesh.dp_size, pad_to_multiple_of=sp, **extra)
        rl = build_val_loader([src], tok, batches=3, max_len=64, pack=pack, micro_batch=micro,
                              grad_accum=global_rows // micro, **extra)
        results = []
        for m, loader in ((model, vl), (model, vl), (ref, rl)):
            m.eval()
            totals = ValTotals(info.device)
            with torch.no_grad():
                for micro_batches in loader:
                    for b in micro_batches:
                        if m is model and sp > 1:
                            b = slice_for_sp(b, mesh.sp.get_local_rank(), sp)
                        totals.add(forward_loss(m, b), b["labels"])
            if m is model:  # the layout: reduced over the dp ranks
                results.append(totals.result(mesh.loss_group))
            else:  # the one-process reference saw the whole set itself
                results.append({"val_loss": float(totals.sums[0] / totals.sums[1]), "val_tokens": int(totals.sums[1])})
        (a, again, r) = results
        out[name] = {"layout": a["val_loss"], "again": again["val_loss"], "reference": r["val_loss"],
                     "tokens": a["val_tokens"], "ref_tokens": r["val_tokens"], "ppl": a["val_ppl"],
                     "rel": rel(a["val_loss"], r["val_loss"])}
    return out


def lora_layout(info, degrees, cfg_dir, spec):
    """(model, mesh, sp_mesh) for a LoRA layout, materialised."""
    mesh = rdist.build_mesh(info, **{k: v for k, v in degrees.items() if k != "ep"})
    lora.check_layout(spec, {**degrees, "tp": 1})
    model = models.build_meta(cfg_dir)
    lora.apply_lora(model, spec)
    if degrees.get("ep", 1) > 1:
        ep_mesh, experts_fsdp = ep_meshes(mesh.root, degrees["ep"])
        apply_ep(model, ep_mesh, expand(model, ["model.layers.*.mlp.experts"]))
    if degrees.get("sp", 1) > 1:
        apply_ulysses(model, mesh.sp, expand(model, ["model.layers.*.self_attn"]))
    apply_activation_checkpointing(model, ["model.layers.*"])
    if degrees.get("ep", 1) > 1:
        shard_experts(model, experts_fsdp)
    apply_fsdp(model, mesh.fsdp, ["model.layers.*"])
    lora.materialize(model, info.device, seed=SEED)
    return model, mesh


def check_lora(info, name, degrees, cfg_dir, spec, src, tok, work):
    model, mesh = lora_layout(info, degrees, cfg_dir, spec)
    kw = dict(max_len=64, pack="greedy", micro_batch=2, seed=SEED)
    loader = build_loader([src], tok, grad_accum=8 // (2 * mesh.dp_size), dp_rank=mesh.dp_rank,
                          dp_size=mesh.dp_size, log=lambda m: None, **kw)
    sp_mesh = mesh.sp if degrees.get("sp", 1) > 1 else None
    losses, norms, opt = train(model, loader, STEPS, mesh.loss_group, sp_mesh)
    ref = reference_model(cfg_dir, spec)
    ref_losses, ref_norms, _ = train(ref, build_loader([src], tok, grad_accum=4, log=lambda m: None, **kw), STEPS)
    out = {"losses": losses, "ref_losses": ref_losses, "norms": norms, "ref_norms": ref_norms,
           "loss_rel": max(map(rel, losses, ref_losses)), "norm_rel": max(map(rel, norms, ref_norms)),
           "trainable": sum(p.numel() for g in opt.param_groups for p in g["params"]),
           "frozen_grads": sum(p.grad is not None for p in model.parameters() if not p.requires_grad)}
    full = {k: v for k, v in lora._gather(model, adapters_only=True).items()}
    if info.rank == 0:
        ref_sd = ref.state_dict()
        out["adapter_rel"] = max(float((v - ref_sd[k]).abs().max() / ref_sd[k].abs().max().clamp_min(1e-12))
                                 for k, v in full.items() if ".lora_A." in k)
    if name != "fsdp2":
        return out
    # resume: a trainable-only checkpoint into a fresh model (same base from the seed)
    ckpt = work / "lora_ckpt"
    sched = optim.build_schedule(opt, kind="constant", steps=10)
    path = dcp.save(ckpt, STEPS, model=model, optimizer=opt, scheduler=sched, loader=loader, trainable_only=True)
    if info.rank == 0:
        keys = tdcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        out["checkpoint_frozen_keys"] = sorted(k for k in keys if k.startswith("model.") and ".lora_" not in k)
        out["checkpoint_adapter_keys"] = sum(k.startswith("model.") and ".lora_" in k for k in keys)
    fresh, _ = lora_layout(info, degrees, cfg_dir, spec)
    fopt = optim.build_optimizer(fresh, lr=LR)
    fsched = optim.build_schedule(fopt, kind="constant", steps=10)
    floader = build_loader([src], tok, grad_accum=8 // (2 * mesh.dp_size), dp_rank=mesh.dp_rank,
                           dp_size=mesh.dp_size, log=lambda m: None, **kw)
    step = dcp.load(path, model=fresh, optimizer=fopt, scheduler=fsched, loader=floader, trainable_only=True)
    resumed = lora._gather(fresh, adapters_only=True)
    if info.rank == 0:
        out["resume_step"] = step
        out["resume_max_diff"] = max(float((resumed[k] - full[k]).abs().max()) for k in full)
    # export: merged HF weights and the peft adapter, against the adapted model's logits
    x = torch.randint(3, 4096, (2, 24), generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits
    export_dir = work / "lora_export"
    lora.export(export_dir, model, tok, base=str(cfg_dir))
    if info.rank == 0:
        from peft import PeftModel
        merged = AutoModelForCausalLM.from_pretrained(export_dir / "hf")
        with torch.no_grad():
            out["merged_logits_diff"] = float((merged(input_ids=x).logits - logits).abs().max())
        base = reference_model(cfg_dir)  # the frozen base: seeded like the run's
        adapted = PeftModel.from_pretrained(base, export_dir / "adapter")
        with torch.no_grad():
            out["adapter_logits_diff"] = float((adapted(input_ids=x).logits - logits).abs().max())
        out["logits_scale"] = float(logits.abs().max())
        out["adapter_files"] = sorted(p.name for p in (export_dir / "adapter").iterdir())
    return out


def check_offload(info, cfg_dir, src, tok, degrees):
    """Training with offloading (with and without checkpointing) equals training without."""
    mesh = rdist.build_mesh(info, **{k: v for k, v in degrees.items() if k != "ep"})
    sp = degrees.get("sp", 1)
    out = {}
    for mode in ("plain", "offload", "checkpoint+offload"):
        model = models.build_meta(cfg_dir)
        stats = OffloadStats()
        if degrees.get("tp", 1) > 1:
            apply_tp(model, mesh.tp, tp_rules_from_config(model)[0])
        if degrees.get("ep", 1) > 1:
            ep_mesh, experts_fsdp = ep_meshes(mesh.root, degrees["ep"])
            apply_ep(model, ep_mesh, expand(model, ["model.layers.*.mlp.experts"]))
        if sp > 1:
            apply_ulysses(model, mesh.sp, expand(model, ["model.layers.*.self_attn"]))
        if "checkpoint" in mode:
            apply_activation_checkpointing(model, ["model.layers.*"])
        if "offload" in mode:
            apply_activation_offload(model, ["model.layers.*"], min_bytes=0, stats=stats)
        if degrees.get("ep", 1) > 1:
            shard_experts(model, experts_fsdp)
        apply_fsdp(model, mesh.fsdp, ["model.layers.*"])
        models.materialize(model, info.device, seed=SEED)
        loader = build_loader([src], tok, max_len=64, pack="greedy", micro_batch=2, grad_accum=4 // mesh.dp_size,
                              dp_rank=mesh.dp_rank, dp_size=mesh.dp_size, seed=SEED, log=lambda m: None)
        # plain (no checkpointing) as the reference: recomputation is exact here too
        losses, norms, _ = train(model, loader, STEPS, mesh.loss_group, mesh.sp if sp > 1 else None)
        out[mode] = {"losses": losses, "norms": norms, "moved_bytes": stats.moved_bytes,
                     "kept_bytes": stats.kept_bytes}
    return out


def main(out_path, corpus, tokenizer, workdir):
    info = rdist.init("cpu")
    work = Path(workdir)
    tok = load_tokenizer(tokenizer)
    src = Source(name="stdlib", path=corpus, format="jsonl", text="text")
    dense, moe = write_config(work, "dense", DENSE), write_config(work, "moe", MOE)
    results = {"validation": check_validation(info, dense, src, tok),
               "offload_fsdp2": check_offload(info, dense, src, tok, {"dp_shard": 2}),
               "offload_tp2": check_offload(info, dense, src, tok, {"tp": 2}),
               "offload_sp2": check_offload(info, dense, src, tok, {"sp": 2}),
               "offload_ep2": check_offload(info, moe, src, tok, {"dp_shard": 2, "ep": 2}),
               "lora_fsdp2": check_lora(info, "fsdp2", {"dp_shard": 2}, dense, SPEC, src, tok, work),
               "lora_sp2": check_lora(info, "sp2", {"sp": 2}, dense, SPEC, src, tok, work),
               "lora_ep2": check_lora(info, "ep2", {"dp_shard": 2, "ep": 2}, moe, MOE_SPEC, src, tok, work)}
    if info.rank == 0:
        Path(out_path).write_text(json.dumps(results, indent=1))
    rdist.finish()


if __name__ == "__main__":
    main(*sys.argv[1:5])
