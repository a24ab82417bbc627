"""The vision-language (and Omni audio) data pipeline on real media: samples/s against the model
step it feeds, and the share of non-padding tokens with each packing.

    python bench/vl_pipeline.py [--epochs 3] [--dp 2] [--max-pixels N]
    python bench/vl_pipeline.py --script generated/omni-demo.py    # the Omni demo: real recordings

`--script` names the generated script whose settings are used (default generated/vl-demo.py); with
generated/omni-demo.py the data is `planc demo-data --omni` (CPython's test recordings, or espeak-ng
speech, beside the photographs) and the model the tiny Qwen2.5-Omni thinker; every audio clip is
decoded by PyAV, resampled and turned into log-mel features at each step, like every image.

Data: `planc demo-data --vl` (scikit-image's photographs at their own sizes, 102x102 to 1411x1411,
and three short videos), read through generated/vl-demo.py's own settings (tokenizer, max_len, the
token and patch budgets, the processor's pixel limits; `--max-pixels` changes the image limit).
Everything goes through the runtime's loader and collator (runtime.data.multimodal), not a copy.

1. Throughput, one thread, this process's CPU seconds (other load on the machine does not skew
   them). The loader is built once (records read, each image decoded once to probe it, chats
   tokenised, mrope positions computed per sample): "read + plan" per sample. Then every step
   decodes the step's images and videos again, runs the Pillow image processor and packs the rows
   with their positions: "per step" samples/s, over `--epochs` epochs of the plan's global batch.
   Split per image: decode (Pillow) and the rest of the processor (resize, normalise, patches).
   The model: plans/models/tiny-qwen2.5-vl (the demo's), fp32, forward + backward + AdamW on the
   very micro-batches the pipeline made. ratio = pipeline samples/s / model samples/s: how many
   steps' worth of samples the pipeline makes in one step's time; the pipeline runs in the training
   process between steps (the loader has no workers), so 1 / (1 + 1 / ratio) of a step's time is
   the data's.
2. Packing, over one epoch on each of `--dp` ranks: the share of the delivered token slots that
   hold a sample's token (text or vision placeholder; padding and the dummy vision input's token
   count as padding) for pack = none / greedy (micro-batches of tokens / max_len rows of max_len)
   and dynamic (one row of <= tokens tokens and <= patches vision patches), and with dynamic
   batching the rank balance: max/mean target tokens per rank per step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "generated" / "vl-demo.py"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_overhead import demo_settings  # noqa: E402  (SETTINGS of a generated script, as a literal)

from planc.checks.vision import BUDGET_KEYS, MEDIA_KEYS  # noqa: E402  (the plan's media settings and budgets)


def source_name(s: dict) -> str:
    """The demo plan's one source (`data.NAME.path`)."""
    (name,) = [k.split(".")[1] for k in s if k.startswith("data.") and k.endswith(".path") and k.count(".") == 2]
    return name


def ensure_demo_data(s: dict) -> None:
    """`planc demo-data --vl` (or `--omni`) when the demo's records are not there yet."""
    path = REPO / s[f"data.{source_name(s)}.path"]
    if not path.is_file():
        if "omni" in path.parent.name:
            from planc.demo_omni_assets import make_omni_demo_assets
            make_omni_demo_assets(path.parent)
        else:
            from planc.demo_vl_assets import make_vl_demo_assets
            make_vl_demo_assets(path.parent)


def build(s: dict, max_pixels: int | None = None):
    """(processor, source, model config) as the generated script builds them."""
    from runtime.data import Source
    from runtime.data.multimodal import build_processor
    from runtime.model import load_config

    config = load_config(REPO / s["model.config"], attention=s["model.attention"])
    media = {k: s[f"data.{k}"] for k in MEDIA_KEYS if f"data.{k}" in s}
    if max_pixels:
        media["max_pixels"] = max_pixels
    proc = build_processor(REPO / s["data.tokenizer"], config, chat_template=s["data.chat_template"], **media)
    name = source_name(s)
    src = Source(name=name, path=str(REPO / s[f"data.{name}.path"]), format=s[f"data.{name}.format"],
                 kind=s[f"data.{name}.kind"], messages=s[f"data.{name}.messages"])
    return proc, src, config


class Counting:
    """Wraps the loader's collator (runtime.data.multimodal.Collator, called as it is) and records,
    per micro-batch, what went in: samples, their tokens, vision tokens, targets, and the slots."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, rows, length, pad):
        batch = self.inner(rows, length, pad)
        docs = [d for row in rows for d in row]
        vision = (self.inner.proc.image_id, self.inner.proc.video_id)
        audio = getattr(self.inner.proc, "audio_id", None)  # Omni thinkers
        self.seen.append({"samples": len(docs), "tokens": sum(len(d[0]) for d in docs),
                          "vision": sum(int((d[0] == v).sum()) for d in docs for v in vision),
                          "audio": sum(int((d[0] == audio).sum()) for d in docs) if audio is not None else 0,
                          "targets": int((batch["labels"] != -100).sum()), "slots": batch["input_ids"].numel()})
        return batch


def vl_loader(s: dict, proc, src, *, pack: str, dp: int = 1, rank: int = 0, grad_accum: int, micro_batch: int = 1):
    """The runtime's VL loader with the plan's settings, its collator wrapped in `Counting`."""
    from runtime.data.multimodal import build_vl_loader

    budget = {"tokens": s["data.tokens"]} if pack == "dynamic" else {}
    budget.update({k.split(".")[1]: s.get(k) for k in BUDGET_KEYS})  # vision patches, audio frames
    ld = build_vl_loader([src], proc, max_len=s["data.max_len"], pack=pack, micro_batch=micro_batch,
                         grad_accum=grad_accum, dp_rank=rank, dp_size=dp, seed=s["train.seed"],
                         shuffle=s["data.shuffle"], prefetch=0, log=lambda m: None,
                         **budget)
    counter = Counting(ld.dataloader.dataset.collate)
    ld.dataloader.dataset.collate = counter
    return ld, counter


# ------------------------------------------------------------------ 1. throughput

def pipeline_rate(s, proc, src, epochs: int):
    """(read + plan s/sample, per-step samples/s, the first steps' micro-batches, samples seen)."""
    t0 = time.process_time()
    ld, counter = vl_loader(s, proc, src, pack=s["data.pack"], grad_accum=s["train.global_batch"] // s["train.micro_batch"],
                            micro_batch=s["train.micro_batch"])
    build = time.process_time() - t0
    n_docs = len(ld.sampler.orders[0].store)
    it, steps = iter(ld), []
    t0 = time.process_time()
    while ld.epoch < epochs:
        steps.append(next(it))
    per_step = time.process_time() - t0
    samples = sum(c["samples"] for c in counter.seen)
    return build / n_docs, samples / per_step, steps, counter.seen, n_docs


def media_costs(proc, src, kind: str):
    """(count, mean CPU ms to decode, mean CPU ms for the rest) over the distinct images (Pillow decode,
    then the image processor) or audio clips (PyAV decode + resampling, then log-mel features) of
    the source; None when it has none."""
    from runtime.data.multimodal.media import image_pixels, open_image
    from runtime.data.sources import read_records
    from runtime.data.multimodal.records import base_dir, conversation

    paths = sorted({p for rec in read_records(src) for k, p in conversation(rec.value, "messages", base_dir(rec.where))[1]
                    if k == kind})
    if not paths:
        return None
    decode = total = 0.0
    for p in paths:
        plan = proc.plan(kind, p)
        t0 = time.process_time()
        if kind == "image":
            open_image(p)
            t1 = time.process_time()
            image_pixels(p, plan, proc.settings, proc.image_processor)
        else:
            from runtime.data.multimodal.audio import decode as decode_audio
            decode_audio(p, proc.audio.rate)
            t1 = time.process_time()
            proc.features(p, plan)  # decodes again, then the features: the rest = total - decode
        t2 = time.process_time()
        decode += t1 - t0
        total += t2 - t1
    return len(paths), 1e3 * decode / len(paths), 1e3 * (total - decode) / len(paths)


def model_rate(config, steps, seen, warmup: int = 1, timed: int = 4):
    """Samples/s of the demo model's forward + backward + AdamW on the pipeline's own micro-batches."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText

    from runtime.data.multimodal import model_inputs

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one(micro_batches):
        for mb in micro_batches:
            logits = model(**model_inputs(mb), use_cache=False).logits
            F.cross_entropy(logits.view(-1, logits.size(-1)), mb["labels"].view(-1), reduction="sum").backward()
        opt.step()
        opt.zero_grad()

    timed = min(timed, len(steps) - warmup)
    for st in steps[:warmup]:
        one(st)
    t0 = time.process_time()
    for st in steps[warmup:warmup + timed]:
        one(st)
    dt = time.process_time() - t0
    per = len(steps[0])
    samples = sum(c["samples"] for c in seen[warmup * per:(warmup + timed) * per])
    return samples / dt, dt / timed


# ------------------------------------------------------------------ 2. packing

def packing_epoch(s, proc, src, pack: str, dp: int, grad_accum: int, micro_batch: int):
    """Per step, per rank: (slots, sample tokens, vision tokens, targets), over one epoch."""
    loaders = [vl_loader(s, proc, src, pack=pack, dp=dp, rank=r, grad_accum=grad_accum, micro_batch=micro_batch)
               for r in range(dp)]
    its = [iter(ld) for ld, _ in loaders]
    steps = []
    while loaders[0][0].epoch == 0:
        per_rank = []
        for it, (_, counter) in zip(its, loaders):
            start = len(counter.seen)
            next(it)
            mine = counter.seen[start:]
            per_rank.append(tuple(sum(c[k] for c in mine) for k in ("slots", "tokens", "vision", "targets", "audio")))
        steps.append(per_rank)
    return steps


def packing_line(pack, steps, dp, grad_accum, s) -> str:
    slots, real, vision = (sum(r[i] for st in steps for r in st) for i in range(3))
    audio = sum(r[4] for st in steps for r in st)
    steady = steps[:-1] or steps  # the epoch's last step may be part-empty by design
    s_slots, s_real = (sum(r[i] for st in steady for r in st) for i in range(2))
    line = (f"  pack={pack:<8} non-padding share {real / slots:7.2%} over the epoch, {s_real / s_slots:7.2%} "
            f"without its last step; {len(steps)} steps, {real:,} tokens ({vision / real:.1%} vision"
            + (f", {audio / real:.1%} audio)" if audio else ")"))
    if pack == "dynamic":
        budget = len(steady) * dp * grad_accum * s["data.tokens"]
        ratios = [max(r[3] for r in st) / (sum(r[3] for r in st) / len(st)) for st in steps if sum(r[3] for r in st)]
        body = ratios[:-1] or ratios
        line += (f"\n  token budget filled (without the last step): {s_real / budget:7.2%}"
                 f"\n  rank balance max/mean target tokens per rank per step: mean {sum(body) / len(body):.3f}, "
                 f"worst {max(body):.3f} (all steps but the epoch's last); last step {ratios[-1]:.3f}")
    return line


def main():
    os.environ["RAYON_NUM_THREADS"] = "1"  # the fast tokenizer's thread pool: one core (set before it loads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the per-step throughput run")
    ap.add_argument("--dp", type=int, help="ranks for the packing figures (default: the plan's dp_shard)")
    ap.add_argument("--max-pixels", type=int, help="image pixel limit (default: the plan's)")
    ap.add_argument("--skip-model", action="store_true", help="pipeline and packing only")

    ap.add_argument("--script", default=str(SCRIPT), help="the generated script whose settings are used "
                    "(generated/omni-demo.py: the Omni demo)")
    args = ap.parse_args()

    script = Path(args.script).resolve()
    s = demo_settings(script)
    ensure_demo_data(s)
    proc, src, config = build(s, args.max_pixels)
    dp = args.dp or s["mesh.dp_shard"]
    print(f"{script.relative_to(REPO)}: {s['model.config']}, max_len {s['data.max_len']}, pack {s['data.pack']} "
          f"(tokens {s['data.tokens']}, patches {s.get('data.patches')}), images <= {proc.settings.max_pixels} pixels, "
          f"global batch {s['train.global_batch']}; one thread, CPU time")

    per_sample, rate, steps, seen, n_docs = pipeline_rate(s, proc, src, args.epochs)
    print(f"pipeline  read + plan (once): {1e3 * per_sample:.1f} ms/sample ({n_docs} samples)")
    print(f"pipeline  per step (decode + processor + pack): {rate:,.1f} samples/s over {len(steps)} steps "
          f"({args.epochs} epochs)")
    for kind, rest in (("image", "processor"), ("audio", "log-mel features")):
        costs = media_costs(proc, src, kind)
        if costs is not None:
            print(f"          per {kind} ({costs[0]} distinct): decode {costs[1]:.1f} ms, {rest} {costs[2]:.1f} ms")
    if not args.skip_model:
        model_sps, step_s = model_rate(config, steps, seen)
        print(f"model     {s['model.config']} fp32 fwd+bwd+AdamW: {model_sps:,.1f} samples/s "
              f"({1e3 * step_s:.0f} ms per step of {s['train.global_batch']} micro-batches)")
        print(f"ratio     pipeline / model = {rate / model_sps:.2f} (steps' worth of samples per step); "
              f"the data's share of a step on one thread: {1 / (1 + rate / model_sps):.0%}")

    grad_accum = s["train.global_batch"] // (s["train.micro_batch"] * dp)
    rows = max(1, s["data.tokens"] // s["data.max_len"])
    print(f"\npacking over one epoch, {dp} ranks x {grad_accum} micro-batches; none/greedy: {rows} rows of "
          f"{s['data.max_len']}; dynamic: one row of <= {s['data.tokens']} tokens, <= {s.get('data.patches')} patches")
    for pack in ("none", "greedy", "dynamic"):
        steps = packing_epoch(s, proc, src, pack, dp, grad_accum, 1 if pack == "dynamic" else rows)
        print(packing_line(pack, steps, dp, grad_accum, s))


if __name__ == "__main__":
    main()
