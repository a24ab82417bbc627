"""Parity driver: each layout trains 5 steps and is compared with one process on the same batches.

Run under torchrun (gloo, CPU): ``parallel_parity.py OUT.json LAYOUT [LAYOUT ...]``. Every rank
also trains the single-process reference itself (same seed, same global batches: cheap for these
tiny models), so one launch checks many layouts. Rank 0 writes, per layout, the per-step losses
and gradient norms of both runs, the worst relative differences, and tokens/s.

Data: bytes of this Python's own stdlib sources (vocab 256), split into documents and packed
into rows whose position_ids restart per document, labels already shifted (-100 at ends/pads).
"""
from __future__ import annotations

import copy
import json
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig

from runtime import dist as rdist
from runtime.loss import cross_entropy_sum
from runtime.optim import clip_grad_norm
from runtime.parallel.ep import apply_ep, experts_modules, shard_experts
from runtime.parallel.fsdp import sum_gradients
from runtime.parallel.mesh_ep import ep_meshes
from runtime.parallel.tp import apply_tp, loss_context, tp_rules_from_config
from runtime.parallel.ulysses import apply_ulysses, block_causal_mask, slice_for_sp

STEPS, ROWS, LR, CLIP, SEED = 5, 8, 2e-3, 1.0, 1234

# name: (model kind, degrees, tp rules flavour, seq length)
#   flavour "full": colwise/rowwise + sequence-parallel norms + vocab embedding + loss-parallel head
#   flavour "hf":   the model's own base_model_tp_plan (colwise/rowwise, gathered lm_head)
LAYOUTS = {
    "fsdp2":         ("dense", dict(dp_shard=2), None, 32),
    "tp2":           ("dense", dict(tp=2), "full", 32),
    "tp2_hf_plan":   ("dense", dict(tp=2), "hf", 32),
    "sp2":           ("dense", dict(sp=2), None, 29),
    "fsdp2_moe":     ("moe", dict(dp_shard=2), None, 32),
    "ep2":           ("moe", dict(dp_shard=2, ep=2), None, 32),
    "fsdp4":         ("dense", dict(dp_shard=4), None, 32),
    "fsdp2xtp2":     ("dense", dict(dp_shard=2, tp=2), "full", 32),
    "fsdp2xsp2":     ("dense", dict(dp_shard=2, sp=2), None, 29),
    "sp2xtp2":       ("dense", dict(sp=2, tp=2), "full", 32),
    "fsdp4_moe":     ("moe", dict(dp_shard=4), None, 32),
    "fsdp4xep2":     ("moe", dict(dp_shard=4, ep=2), None, 32),
    "fsdp2xtp2xep2": ("moe", dict(dp_shard=2, tp=2, ep=2), "hf", 32),
    "hsdp2x2xep2":   ("moe", dict(dp_replicate=2, dp_shard=2, ep=2), None, 32),
    # Ulysses around the model's own eager attention (an additive float mask, built by Ulysses)
    "fsdp2xsp2_eager": ("dense_eager", dict(dp_shard=2, sp=2), None, 29),
    "sp4_eager":     ("dense_eager", dict(sp=4), None, 29),  # 2 KV heads over 4 ranks: repeated
    "sp2xtp2_eager": ("dense_eager", dict(sp=2, tp=2), "full", 32),
}


def model_config(kind: str):
    common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  tie_word_embeddings=False, use_cache=False)
    if kind.startswith("dense"):
        cfg = Qwen3Config(intermediate_size=128, **common)
    else:
        cfg = Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                             num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True, **common)
    cfg._attn_implementation = "eager" if kind.endswith("_eager") else "sdpa"
    return cfg


def stdlib_bytes() -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"".join((root / f).read_bytes() for f in ("functools.py", "textwrap.py", "shlex.py"))


def make_batches(seq: int, steps: int, rows: int, seed: int) -> list[dict]:
    """Packed global batches: whole documents of 5..seq tokens per row, a pad document at the end."""
    text = torch.tensor(list(stdlib_bytes()), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        ids = torch.zeros(rows, seq, dtype=torch.long)
        labels = torch.full((rows, seq), -100, dtype=torch.long)
        pos = torch.zeros(rows, seq, dtype=torch.long)
        for r in range(rows):
            at = 0
            while at < seq:
                n = int(torch.randint(5, seq + 1, (1,), generator=g))
                if at + n > seq:
                    n = seq - at  # the rest of the row: a pad document (targets -100)
                    pos[r, at:] = torch.arange(n)
                    break
                start = int(torch.randint(0, len(text) - n, (1,), generator=g))
                doc = text[start:start + n]
                ids[r, at:at + n] = doc
                labels[r, at:at + n - 1] = doc[1:]  # shifted inside the document
                pos[r, at:at + n] = torch.arange(n)
                at += n
        batches.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return batches


def build(kind: str):
    torch.manual_seed(SEED)
    return AutoModelForCausalLM.from_config(model_config(kind))


def optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0, foreach=False)


def train_reference(kind: str, batches):
    model = build(kind)
    opt = optimizer(model)
    losses, norms = [], []
    for b in batches:
        out = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False)
        count = int((b["labels"] != -100).sum())
        loss = cross_entropy_sum(out.logits, b["labels"]) / count
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, norms


def tp_rules(model, flavour: str):
    if flavour == "hf":
        rules, _ = tp_rules_from_config(model)
        return rules
    layers = range(model.config.num_hidden_layers)
    return [
        ("colwise", [f"model.layers.{i}.self_attn.{p}_proj" for i in layers for p in "qkv"]
                    + [f"model.layers.{i}.mlp.{p}_proj" for i in layers for p in ("gate", "up")]),
        ("rowwise", [f"model.layers.{i}.self_attn.o_proj" for i in layers]
                    + [f"model.layers.{i}.mlp.down_proj" for i in layers]),
        ("sequence", [f"model.layers.{i}.{n}" for i in layers for n in ("input_layernorm", "post_attention_layernorm")]
                     + ["model.norm"]),
        ("vocab", ["model.embed_tokens"]),
        ("loss", ["lm_head"]),
    ]


def parallelize(kind, degrees, flavour, mesh):
    """The one order that composes: TP/EP, then (Ulysses attention), then FSDP bottom-up."""
    model = build(kind)
    if flavour:
        apply_tp(model, mesh.tp, tp_rules(model, flavour))
    ep = degrees.get("ep", 1)
    if ep > 1:
        ep_mesh, ep_fsdp = ep_meshes(mesh.root, ep)
        apply_ep(model, ep_mesh)
        shard_experts(model, ep_fsdp)
    if degrees.get("sp", 1) > 1:
        apply_ulysses(model, mesh.sp)
    if mesh.fsdp.size() > 1:
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh.fsdp)
        fully_shard(model, mesh=mesh.fsdp, reshard_after_forward=False)
        sum_gradients(model)
    return model


def train_layout(name, batches, info):
    kind, degrees, flavour, _ = LAYOUTS[name]
    mesh = rdist.build_mesh(info, **{k: v for k, v in degrees.items() if k != "ep"})
    model = parallelize(kind, degrees, flavour, mesh)
    opt = optimizer(model)
    dp, sp = mesh.dp_size, mesh.sp.size()
    seq_tp = flavour == "full"
    losses, norms, seconds, sharded_logits = [], [], [], []
    for b in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        per = ROWS // dp
        local = {k: v[mesh.dp_rank * per:(mesh.dp_rank + 1) * per] for k, v in b.items()}
        if sp > 1:
            local = slice_for_sp(local, mesh.sp.get_local_rank(), sp)
        kwargs = dict(input_ids=local["input_ids"], position_ids=local["position_ids"], use_cache=False)
        if seq_tp and sp == 1:
            # Sequence-parallel TP: HF would infer the mask from the local length; give the real one.
            kwargs["attention_mask"] = block_causal_mask(local["position_ids"])
        count = (local["labels"] != -100).sum()
        dist.all_reduce(count, group=mesh.loss_group)
        logits = model(**kwargs).logits
        sharded_logits.append(isinstance(logits, DTensor))
        with loss_context(logits):  # vocab-sharded logits: cross-entropy and backward on shards
            local_sum = cross_entropy_sum(logits, local["labels"])
            (local_sum / count).backward()
        total = (local_sum.full_tensor() if isinstance(local_sum, DTensor) else local_sum).detach()
        dist.all_reduce(total, group=mesh.loss_group)
        norms.append(float(clip_grad_norm(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(float(total / count))
        seconds.append((time.perf_counter() - t0, time.process_time() - c0))
    extra = {**check_layout(model, name, degrees), "loss_parallel": all(sharded_logits)}
    return losses, norms, seconds, extra


def check_layout(model, name, degrees) -> dict:
    """Layout facts worth asserting: what got sharded over which mesh."""
    out = {}
    if degrees.get("ep", 1) > 1:
        experts = experts_modules(model)
        p = model.get_submodule(experts[0]).gate_up_proj
        out["experts_mesh_ndim"] = p.device_mesh.ndim
        out["experts_local_rows"] = p.to_local().shape[0]
    return out


def qwen2_moe_ep_check(info) -> dict:
    """EP leaves Qwen2-MoE's shared expert and the router's aux loss alone: one forward/backward on
    rank-local data, EP over all ranks vs the same model on one process."""
    cfg = Qwen2MoeConfig(vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         decoder_sparse_step=1, output_router_logits=True, router_aux_loss_coef=0.02,
                         tie_word_embeddings=False, use_cache=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    ref = AutoModelForCausalLM.from_config(cfg)
    par = copy.deepcopy(ref)
    mesh = rdist.build_mesh(info, dp_shard=info.world)
    ep_mesh, _ = ep_meshes(mesh.root, info.world)
    apply_ep(par, ep_mesh)
    g = torch.Generator().manual_seed(100 + info.rank)
    ids = torch.randint(0, 256, (2, 16), generator=g)
    a, b = ref(input_ids=ids, labels=ids), par(input_ids=ids, labels=ids)  # HF's loss + aux loss
    a.loss.backward()
    b.loss.backward()
    shared = [n for n, p in par.named_parameters() if "shared_expert" in n]
    rel = lambda x, y: float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
    ref_params = dict(ref.named_parameters())
    worst_dense, worst_expert = 0.0, 0.0
    for n, p in par.named_parameters():
        g_ref = ref_params[n].grad
        if isinstance(p, DTensor):
            # An expert's gradient holds the tokens every rank sent it: the sum of all ranks'
            # single-process gradients, cut to this rank's experts.
            g_ref = g_ref.clone()
            dist.all_reduce(g_ref)
            g_ref = g_ref.chunk(ep_mesh.size())[ep_mesh.get_local_rank()]
            worst_expert = max(worst_expert, rel(p.grad.to_local(), g_ref))
        else:  # router, attention, shared expert: only this rank's own tokens
            worst_dense = max(worst_dense, rel(p.grad, g_ref))
    return {
        "shared_expert_params": len(shared),
        "shared_expert_plain": all(not isinstance(dict(par.named_parameters())[n], DTensor) for n in shared),
        "experts_implementation": par.config._experts_implementation,
        "loss_rel": abs(float(a.loss.detach()) - float(b.loss.detach())) / abs(float(a.loss.detach())),
        "aux_rel": abs(float(a.aux_loss.detach()) - float(b.aux_loss.detach())) / abs(float(a.aux_loss.detach())),
        "aux_loss": float(b.aux_loss.detach()),
        "logits_rel": rel(b.logits.detach(), a.logits.detach()),
        "grad_rel_non_expert": worst_dense,
        "grad_rel_expert": worst_expert,
    }


def main():
    out_path, names = sys.argv[1], sys.argv[2:]
    info = rdist.init("cpu")
    torch.set_num_threads(1)
    results = {}
    for name in names:
        if name == "qwen2_moe_ep":
            results[name] = qwen2_moe_ep_check(info)
            continue
        kind, degrees, flavour, seq = LAYOUTS[name]
        batches = make_batches(seq, STEPS, ROWS, SEED)
        ref_losses, ref_norms = train_reference(kind, batches)
        losses, norms, seconds, extra = train_layout(name, batches, info)
        rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))
        # Wall: a step lasts as long as its slowest rank. CPU: the processor seconds all ranks
        # spent, which other jobs on a shared machine inflate far less than wall time. Medians
        # over steps 2..5 (the first warms up); only ratios between layouts mean anything.
        wall, cpu = torch.tensor(seconds, dtype=torch.float64).unbind(1)
        wall, cpu = wall.contiguous(), cpu.contiguous()
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        dist.all_reduce(cpu)
        step_s, step_cpu_s = float(wall[1:].median()), float(cpu[1:].median())
        results[name] = {
            "kind": kind, "degrees": degrees, "world": info.world,
            "losses": losses, "ref_losses": ref_losses, "grad_norms": norms, "ref_grad_norms": ref_norms,
            "worst_loss_rel": rel(losses, ref_losses), "worst_grad_norm_rel": rel(norms, ref_norms),
            "tokens_per_s": ROWS * seq / step_s, "tokens_per_cpu_s": ROWS * seq / step_cpu_s, **extra,
        }
    for name, r in results.items():  # speed relative to FSDP2 alone on the same world and model kind
        if "kind" in r:
            base = next((results[n] for n in results if results[n].get("kind") == r["kind"]
                         and LAYOUTS[n][1] == {"dp_shard": r["world"]}), None)
            r["speed_vs_fsdp"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
            r["cpu_speed_vs_fsdp"] = r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"] if base else None
    if info.rank == 0:
        Path(out_path).write_text(json.dumps(results, indent=1))
        for name, r in results.items():
            per_step = ("losses", "ref_losses", "grad_norms", "ref_grad_norms")
            print(name, {k: v for k, v in r.items() if k not in per_step})
    rdist.finish()


if __name__ == "__main__":
    main()
