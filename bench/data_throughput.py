"""Data pipeline throughput on one core, against the training step of the tiny demo model.

    python bench/data_throughput.py [--max-len 512] [--micro-batch 4]

Pipeline: stdlib records -> read -> tokenise -> documents -> packed micro-batches (tensors), for
one epoch, map-style (tokenise everything, then batch) and streaming (tokenise on the fly). Model:
plans/models/tiny-llama, fp32, forward + backward + AdamW on one micro-batch. Both on one thread;
the printed ratio says how many model steps' worth of tokens the pipeline makes in one step's time.
Times are this process's CPU seconds (one thread), so other load on the machine does not skew them.
"""
from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"          # the fast tokenizer's thread pool: one core
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pipeline(sources, tok, **kw):
    """(tokens delivered, seconds) for building the loader and batching one epoch."""
    from runtime.data import build_loader
    from runtime.data import loader as loader_mod

    loader_mod._STORE_CACHE.clear()  # measure tokenisation too, not a cached store
    t0 = time.process_time()
    ld = build_loader(sources, tok, log=lambda m: None, **kw)
    it = iter(ld)
    real = 0
    while ld.epoch == 0:
        for mb in next(it):
            real += int((mb["input_ids"] != tok.pad_token_id).sum())
    return real, time.process_time() - t0


def model_step(max_len, micro_batch, steps=3):
    """Tokens per second of forward + backward + AdamW on the tiny demo model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(REPO / "plans" / "models" / "tiny-llama"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, cfg.vocab_size, (micro_batch, max_len))
    pos = torch.arange(max_len).repeat(micro_batch, 1)

    def one():
        out = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    one()  # warm-up
    t0 = time.process_time()
    for _ in range(steps):
        one()
    dt = (time.process_time() - t0) / steps
    return micro_batch * max_len / dt, dt


def main():
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=4)
    args = ap.parse_args()

    from planc.demo_assets import make_demo_assets
    from runtime.data import Source, load_tokenizer

    demo = make_demo_assets(REPO / "data" / "demo")
    tok = load_tokenizer(demo["tokenizer"])
    runs = {
        "code, map-style, greedy": ([Source(name="code", path=demo["jsonl"])],
                                    dict(pack="greedy", micro_batch=args.micro_batch, grad_accum=4)),
        "code, streaming, dynamic": ([Source(name="code", path=demo["jsonl"], streaming=True)],
                                     dict(pack="dynamic", tokens=args.micro_batch * args.max_len, grad_accum=4)),
        "chats (sft), map-style, dynamic": ([Source(name="chat", path=demo["chat"], kind="sft")],
                                            dict(pack="dynamic", tokens=args.micro_batch * args.max_len,
                                                 grad_accum=4, chat_template="chatml")),
    }
    model_tps, step_s = model_step(args.max_len, args.micro_batch)
    print(f"model: tiny-llama fp32 fwd+bwd+AdamW, ({args.micro_batch}, {args.max_len}) per step: "
          f"{step_s * 1000:.0f} CPU ms/step, {model_tps:,.0f} tokens/s (1 thread)")
    for name, (sources, kw) in runs.items():
        real, dt = pipeline(sources, tok, max_len=args.max_len, **kw)
        tps = real / dt
        print(f"pipeline {name:<34} {tps:>12,.0f} tokens/s (1 core; {real:,} tokens in {dt:.1f}s)"
              f"  = {tps / model_tps:6.1f}x the model step")


if __name__ == "__main__":
    main()
