"""Training-step time of the demo model (plans/models/tiny-llama) with the fused torch kernels
(rmsnorm, swiglu, rotary, fused_ce) vs the unfused HF model, in one run, on CPU.

    python bench/kernels_step.py [--steps 10] [--batch 4] [--seq 256] [--config DIR]

A step is forward + backward + AdamW on one micro-batch (the demo's micro_batch x max_len). Both
models start from the same weights and see the same batches; their steps alternate, so load from
other processes hits both alike. Reported per variant: the median wall time and the median CPU
time of the process (time.process_time; with one thread, --threads 1, the default, it is the
compute itself and barely moves when other processes share the cores). The losses of the two
must agree and are printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from runtime.kernels import apply_kernels, fused_lm_loss_sum
from runtime.loss import lm_loss_sum

REPO = Path(__file__).resolve().parents[1]


def step(model, opt, batch, fused, total):
    opt.zero_grad()
    loss_sum = fused_lm_loss_sum(model, batch) if fused else lm_loss_sum(model, batch)
    (loss_sum / total).backward()
    opt.step()
    return loss_sum.item() / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "plans" / "models" / "tiny-llama"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config)
    plain = AutoModelForCausalLM.from_config(config)
    fused = copy.deepcopy(plain)
    chosen = apply_kernels(fused, {"rmsnorm": "torch", "swiglu": "torch", "rotary": "torch", "fused_ce": "torch"},
                           "cpu")
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in (("plain", plain), ("fused", fused))}
    models = {"plain": plain, "fused": fused}

    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps + 2):
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)
        labels = torch.cat([ids[:, 1:], torch.full((args.batch, 1), -100)], dim=1)
        pos = torch.arange(args.seq).expand(args.batch, args.seq)
        batches.append({"input_ids": ids, "position_ids": pos, "labels": labels})

    wall = {"plain": [], "fused": []}
    cpu = {"plain": [], "fused": []}
    losses = {"plain": [], "fused": []}
    for i, batch in enumerate(batches):
        total = int((batch["labels"] != -100).sum())
        order = ("plain", "fused") if i % 2 == 0 else ("fused", "plain")
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(models[name], opts[name], batch, name == "fused", total)
            if i >= 2:  # the first two steps warm up allocators and caches
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            losses[name].append(loss)

    params = sum(p.numel() for p in plain.parameters())
    print(f"demo model {Path(args.config).name}: {params / 1e6:.1f}M params, micro-batch {args.batch} x {args.seq} "
          f"tokens, fp32, {torch.get_num_threads()} threads; kernels {chosen}")
    print(f"{'variant':<8}{'wall s/step (median)':>22}{'min':>8}{'max':>8}{'cpu s/step (median)':>21}")
    for name in ("plain", "fused"):
        t = wall[name]
        print(f"{name:<8}{statistics.median(t):>22.3f}{min(t):>8.3f}{max(t):>8.3f}"
              f"{statistics.median(cpu[name]):>21.3f}")
    for label, d in (("wall", wall), ("cpu", cpu)):
        ratio = statistics.median(d["plain"]) / statistics.median(d["fused"])
        verdict = "fused faster" if ratio > 1 else "fused slower"
        print(f"{label} step time ratio plain / fused: {ratio:.2f}x ({verdict})")
    worst = max(abs(a - b) / abs(a) for a, b in zip(losses["plain"], losses["fused"]))
    print(f"losses over {len(batches)} steps: first {losses['plain'][0]:.4f}, last plain {losses['plain'][-1]:.4f} "
          f"fused {losses['fused'][-1]:.4f}, worst relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
