"""Packing efficiency and rank balance on real text (the stdlib corpus and its docstring chats).

    python bench/data_packing.py [--max-len 512] [--tokens 4096] [--dp 4] [--grad-accum 2]

Over one full epoch of each corpus, prints the non-padding share of the tokens delivered with
pack = none / greedy / dynamic, and, for dynamic batching over `dp` ranks, max/mean target tokens
per rank per step (the slowest rank sets the step time). Every figure is measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def epoch(sources, tok, dp, **kw):
    """Per step: list over ranks of (slots, real tokens, target tokens). One loader per rank."""
    from runtime.data import build_loader

    lds = [build_loader(sources, tok, dp_rank=r, dp_size=dp, log=lambda m: None, **kw) for r in range(dp)]
    its = [iter(ld) for ld in lds]
    steps = []
    while lds[0].epoch == 0:
        per_rank = []
        for it in its:
            slots = real = tgt = 0
            for mb in next(it):
                slots += mb["input_ids"].numel()
                real += int((mb["input_ids"] != PAD).sum())  # <pad> never comes out of text
                tgt += int((mb["labels"] != -100).sum())
            per_rank.append((slots, real, tgt))
        steps.append(per_rank)
    return steps


def main():
    global PAD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dp", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--pad-multiple", type=int, default=8, help="row lengths rounded up to this multiple")
    args = ap.parse_args()

    from planc.demo_assets import make_demo_assets
    from runtime.data import Source, load_tokenizer

    demo = make_demo_assets(REPO / "data" / "demo")
    tok = load_tokenizer(demo["tokenizer"])
    PAD = tok.pad_token_id
    corpora = {
        "stdlib code (pretrain)": [Source(name="code", path=demo["jsonl"])],
        "stdlib chats (sft)": [Source(name="chat", path=demo["chat"], kind="sft")],
    }
    print(f"max_len {args.max_len}; greedy/none: {args.dp} ranks x {args.grad_accum} micro-batches x "
          f"{args.micro_batch} rows; dynamic: {args.dp} ranks x {args.grad_accum} micro-batches of "
          f"<= {args.tokens} tokens, rows padded to a multiple of {args.pad_multiple}")
    for name, sources in corpora.items():
        kw = dict(max_len=args.max_len, grad_accum=args.grad_accum, chat_template="chatml",
                  pad_to_multiple_of=args.pad_multiple)
        print(f"\n{name}")
        for pack in ("none", "greedy", "dynamic"):
            t0 = time.perf_counter()
            extra = {"tokens": args.tokens} if pack == "dynamic" else {"micro_batch": args.micro_batch}
            steps = epoch(sources, tok, args.dp, pack=pack, **kw, **extra)
            slots = sum(r[0] for s in steps for r in s)
            real = sum(r[1] for s in steps for r in s)
            steady = steps[:-1] or steps  # the epoch's last step may be part-empty by design
            s_slots = sum(r[0] for s in steady for r in s)
            s_real = sum(r[1] for s in steady for r in s)
            line = (f"  pack={pack:<8} efficiency (non-padding share) {real / slots:7.2%} over the epoch, "
                    f"{s_real / s_slots:7.2%} without its last step;  {len(steps)} steps, {real:,} tokens")
            if pack == "dynamic":
                budget = len(steady) * args.dp * args.grad_accum * args.tokens
                line += f"\n  token budget filled (without the last step): {s_real / budget:7.2%}"
            if pack == "dynamic":
                ratios = [max(r[2] for r in s) / (sum(r[2] for r in s) / len(s)) for s in steps
                          if sum(r[2] for r in s) > 0]
                body = ratios[:-1] or ratios
                line += (f"\n  rank balance max/mean target tokens per rank per step: mean {sum(body) / len(body):.3f}"
                         f", worst {max(body):.3f} (all steps but the epoch's last); last step {ratios[-1]:.3f}")
            print(line + f"   [{time.perf_counter() - t0:.1f}s]")


PAD = 0
if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
