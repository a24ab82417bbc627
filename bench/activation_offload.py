"""Activation memory with and without offloading: bytes of saved activations held on the device.

    python bench/activation_offload.py [--model plans/models/tiny-llama] [--batch 4] [--seq 1024]

One forward + backward of the model on a (batch, seq) batch of real text tokens, four ways: plain,
activation checkpointing of every block, offloading of every block's saved activations, and both.
On a GPU the device's own counter would say it; this machine has none, so the bytes are counted
by a saved-tensor hook: at the end of the forward (where saved activations peak), the bytes of the
tensors autograd keeps on the compute device (each storage once, parameters excluded) plus what
the offload hooks decided to keep, against the bytes the offload hooks copied to host memory.
Checkpointing's and offloading's own hooks are inner to the counting hook, so what they take is
not counted as held: exactly what a GPU would no longer hold. What stays held with every block
offloaded lives outside the blocks (the logits and the loss: runtime/kernels' fused_ce is the
answer there). The losses and gradients of the four runs are compared too (they must be equal).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402


class SavedBytes:
    """Outermost saved-tensor hooks: the unique storages autograd keeps (parameters excluded)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t):
        if not (isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)):
            s = t.untyped_storage()
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def batch(tokens: int, seq: int, rows: int) -> torch.Tensor:
    from runtime.data import Source, build_loader, load_tokenizer

    data = REPO / "data" / "demo"
    if not (data / "stdlib.jsonl").is_file():
        from planc.demo_assets import make_demo_assets
        make_demo_assets(data)
    loader = build_loader([Source(name="s", path=str(data / "stdlib.jsonl"))], load_tokenizer(data / "tokenizer"),
                          max_len=seq, pack="greedy", micro_batch=rows, log=lambda m: None)
    return next(iter(loader))[0]


def run(model, b, mode):
    from runtime.parallel.checkpointing import apply_activation_checkpointing
    from runtime.parallel.offload import OffloadStats, apply_activation_offload

    stats = OffloadStats()
    if "checkpoint" in mode:
        apply_activation_checkpointing(model, ["model.layers.*"])
    if "offload" in mode:
        apply_activation_offload(model, ["model.layers.*"], stats=stats)
    with SavedBytes() as saved:
        out = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), b["labels"].flatten(), reduction="mean")
    held = saved.total + stats.kept_bytes
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return {"held": held, "host": stats.moved_bytes, "loss": loss.detach(), "grads": grads}


def main() -> None:
    from transformers import AutoModelForCausalLM

    from runtime.model import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="plans/models/tiny-llama")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(load_config(REPO / args.model))
    b = batch(args.batch * args.seq, args.seq, args.batch)
    mib = 1 / 2**20
    print(f"{args.model}: batch {args.batch} x {args.seq} tokens, fp32; saved activations at the end of forward")
    print(f"{'mode':<22} {'held on device MiB':>19} {'copied to host MiB':>19} {'vs plain':>9}")
    results = {}
    for mode in ("plain", "checkpoint", "offload", "checkpoint+offload"):
        r = results[mode] = run(copy.deepcopy(base), b, mode)
        print(f"{mode:<22} {r['held'] * mib:>19.1f} {r['host'] * mib:>19.1f} "
              f"{r['held'] / results['plain']['held']:>9.3f}")
    ref = results["plain"]
    same = all(torch.equal(r["loss"], ref["loss"]) and all(torch.equal(r["grads"][n], g) for n, g in ref["grads"].items())
               for r in results.values())
    print(f"losses and gradients identical in all four: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
