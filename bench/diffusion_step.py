"""Block-diffusion training step vs the plain SFT step of the same model on the same tokens, in
one run, on CPU.

    python bench/diffusion_step.py [--steps 10] [--batch 4] [--seq 256] [--block 32] [--config DIR]

Both variants see the same packed SFT rows (documents of random tokens, the first 30% of each a
prompt) and start from the same weights. A plain step is forward + backward + AdamW on the (B, L)
rows with the causal-LM loss; a diffusion step first draws the noise (runtime.diffusion.noise_step,
counted in the step, as the train loop runs it), then forward + backward + AdamW on the (B, 2L)
``[x_t ; x_0]`` rows under the block-diffusion mask. Steps alternate, so load from other processes
hits both alike. Reported: median wall and process CPU time per variant, their ratio (the 2L input
should cost about 2x, attention somewhat more), and the noise draw alone.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from runtime.data.kinds import shifted_labels
from runtime.data.packing import collate_rows
from runtime.diffusion import loss_sum, noise_step
from runtime.loss import lm_loss_sum

REPO = Path(__file__).resolve().parents[1]


def packed_rows(n_rows: int, seq: int, vocab: int, rng: np.random.Generator) -> dict:
    rows = []
    for _ in range(n_rows):
        docs, room = [], seq
        while room >= 16:
            n = int(rng.integers(16, min(seq, room) + 1))
            ids = rng.integers(3, vocab - 1, size=n).astype(np.int32)
            docs.append((ids, shifted_labels(ids, np.arange(n) >= int(0.3 * n))))
            room -= n
        rows.append(docs)
    return collate_rows(rows, seq, 0)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "plans" / "models" / "tiny-qwen3-diffusion"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = AutoConfig.from_pretrained(args.config)
    config.use_cache = False
    mask_id = config.vocab_size - 1
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(config, attn_implementation=args.attention)
    diffusion = copy.deepcopy(plain)
    opts = {"plain": torch.optim.AdamW(plain.parameters(), lr=1e-3),
            "diffusion": torch.optim.AdamW(diffusion.parameters(), lr=1e-3)}
    rng = np.random.default_rng(1)
    batches = [packed_rows(args.batch, args.seq, config.vocab_size, rng) for _ in range(args.steps + 2)]

    def plain_step(batch):
        opts["plain"].zero_grad()
        total = int((batch["labels"] != -100).sum())
        loss = lm_loss_sum(plain, batch)
        (loss / total).backward()
        opts["plain"].step()
        return loss.item() / total

    def diffusion_step(batch, step):
        opts["diffusion"].zero_grad()
        (noised,), t_noise, _ = timed(lambda: noise_step([batch], mask_id=mask_id, noise=(0.3, 0.8), seed=0,
                                                          step=step, dp_rank=0))
        total = int((noised["labels"] != -100).sum())
        loss = loss_sum(diffusion, noised, block=args.block)
        (loss / total).backward()
        opts["diffusion"].step()
        return loss.item() / total, t_noise

    times = {"plain": [], "diffusion": [], "noise": []}
    for i, batch in enumerate(batches):
        p, wall_p, cpu_p = timed(lambda: plain_step(batch))
        (d, t_noise), wall_d, cpu_d = timed(lambda: diffusion_step(batch, i + 1))
        if i >= 2:  # the first two steps warm up allocators and kernels
            times["plain"].append((wall_p, cpu_p))
            times["diffusion"].append((wall_d, cpu_d))
            times["noise"].append(t_noise)
        print(f"step {i + 1}: plain loss {p:.4f} {wall_p * 1e3:.0f} ms | diffusion loss {d:.4f} "
              f"{wall_d * 1e3:.0f} ms", flush=True)

    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in times.items() if k != "noise"}
    tokens = args.batch * args.seq
    print(f"\nmodel {Path(args.config).name}, {args.attention}, rows {args.batch} x {args.seq} "
          f"({tokens} tokens; diffusion input {args.batch} x {2 * args.seq}), block {args.block}, "
          f"{args.threads} thread(s), median of {args.steps} steps")
    for k, (w, c) in med.items():
        print(f"  {k:9s} wall {w * 1e3:8.1f} ms   cpu {c * 1e3:8.1f} ms")
    print(f"  ratio     wall {med['diffusion'][0] / med['plain'][0]:.2f}x   "
          f"cpu {med['diffusion'][1] / med['plain'][1]:.2f}x   (diffusion / plain)")
    print(f"  noise draw (in the diffusion step): {statistics.median(times['noise']) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
