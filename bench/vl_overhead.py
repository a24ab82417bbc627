"""Framework overhead, vision-language: generated/vl-demo.py against a minimal hand-written loop.

    python bench/vl_overhead.py [--steps 20] [--warmup 3] [--repeats 3] [--layouts 1,2]

Both train the VL demo (its settings read from generated/vl-demo.py: the tiny Qwen2.5-VL config,
data, batch, AdamW, the plan's per-part learning rates, schedule, clipping, seed) for warmup + steps
optimizer steps, on one process and with FSDP2 on two (torchrun, gloo, OMP_NUM_THREADS=1). The
generated script runs as it is, with overrides only (its one checkpoint after the last step, no
export), through bench/train_overhead.py's launcher and CPU clock. The hand loop is plain torch +
transformers, nothing from `runtime` in its steps: `AutoModelForImageTextToText.from_config` under
the same seed, activation checkpointing of every vision block and decoder layer, on two processes
`fully_shard` over the vision blocks, the decoder layers and the root (a plain model on one), AdamW
with the plan's learning rate per part (the vision tower at its scale) and weight-decay groups, the
plan's schedule, `clip_grad_norm_`, the loss summed and divided by the global target count (one
all-reduce). Its batches (ids, pixels, grids, (4, B, L) positions, the dummy image of a
micro-batch without one) are precomputed before the clock starts, by the runtime's VL loader with
the same settings and seed, so both see the same micro-batches; the per-step losses (and the first
step's gradient norm) are compared to show it.

The generated script makes its batches as it trains (the loader decodes the step's images, runs
the image processor and packs the rows, in a thread one step ahead: runtime/data/prefetch.py;
bench/vl_pipeline.py measures that work alone); the hand loop does not. So besides the ratios of
the whole run, the table gives them without the script's data time: on the wall clock, what the
training thread waited in `next(loader)`; on the CPU clock, the CPU time of making the batches in
whichever thread made them. The latter is the cost of the training step itself. Timing, pairs and
ratios as in bench/train_overhead.py; targets as for text (>= 0.97 on one process, >= 0.95 on two).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import train_overhead as to  # noqa: E402  (launcher, CPU clock, settings reader, throughput arithmetic)

SCRIPT = REPO / "generated" / "vl-demo.py"
TARGETS = {1: 0.97, 2: 0.95}
_PART = re.compile(r'\("([\w.]+)", ([0-9.eE+-]+) \* cfg\.train\.lr\)')


def lr_parts(script: Path = SCRIPT) -> list[tuple[str, float]]:
    """(module name, scale of the peak lr) of each `lr "..." scale = x` line, as the generated script
    passes them to build_optimizer (`("model.visual", 0.25 * cfg.train.lr)`)."""
    return [(name, float(scale)) for name, scale in _PART.findall(Path(script).read_text())]


def schedule_factor(step: int, s: dict, steps: int) -> float:
    """Peak-lr multiplier after `step` completed steps, for the plan's schedule (constant, cosine)."""
    if s["train.schedule"] == "cosine":
        return to.cosine_factor(step, steps, s["train.warmup"], s["train.min_lr"])
    if s["train.schedule"] != "constant":
        raise SystemExit(f"error: the hand loop writes out constant and cosine schedules, not {s['train.schedule']}")
    return (step + 1) / s["train.warmup"] if step < s["train.warmup"] else 1.0


def param_groups(model, s: dict, parts) -> list[dict]:
    """AdamW groups: each parameter at the rate of the first part whose module holds it (else the
    peak lr); >= 2-D parameters with weight decay, the rest without."""
    groups: dict = {}
    for name, p in model.named_parameters():
        lr = next((s["train.lr"] * scale for prefix, scale in parts if name.startswith(prefix + ".")), s["train.lr"])
        groups.setdefault((lr, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": s["train.weight_decay"] if decay else 0.0}
            for (lr, decay), ps in groups.items()]


def precomputed_batches(s: dict, steps: int, rank: int, world: int):
    """This rank's micro-batches of the first `steps` steps, from the loader the script uses."""
    from runtime.data import Source
    from runtime.data.multimodal import build_processor, build_vl_loader
    from runtime.model import load_config

    config = load_config(s["model.config"], attention=s["model.attention"])
    proc = build_processor(s["data.tokenizer"], config, chat_template=s["data.chat_template"],
                           max_pixels=s["data.max_pixels"], video_max_frames=s["data.video_max_frames"],
                           video_min_pixels=s["data.video_min_pixels"], video_max_pixels=s["data.video_max_pixels"])
    src = Source(name="photos", path=s["data.photos.path"], format=s["data.photos.format"],
                 kind=s["data.photos.kind"], messages=s["data.photos.messages"])
    loader = build_vl_loader([src], proc, max_len=s["data.max_len"], pack=s["data.pack"],
                             micro_batch=s["train.micro_batch"],
                             grad_accum=s["train.global_batch"] // (s["train.micro_batch"] * world),
                             dp_rank=rank, dp_size=world, seed=s["train.seed"], shuffle=s["data.shuffle"],
                             tokens=s["data.tokens"], patches=s["data.patches"], warmup_steps=s["data.warmup_steps"],
                             system_prompt=s["data.system_prompt"], truncation=s["data.truncation"],
                             on_bad_record=s["data.on_bad_record"], prefetch=0, log=lambda m: None)
    it = iter(loader)
    return [next(it) for _ in range(steps)]


MODEL_KEYS = ("input_ids", "position_ids", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def hand_worker(script: Path, steps: int, result: str) -> None:
    """The minimal loop (run as `python` or under torchrun); rank 0 writes per-step records."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed._composable import checkpoint
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForImageTextToText

    s = to.demo_settings(script)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    batches = precomputed_batches(s, steps, rank, world)

    config = AutoConfig.from_pretrained(s["model.config"])
    config.use_cache = config.text_config.use_cache = False  # the text config's: packed samples stay apart
    torch.manual_seed(s["train.seed"])
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=s["model.attention"])
    blocks = [*model.model.visual.blocks, *model.model.language_model.layers]
    for block in blocks:
        checkpoint(block)
    if world > 1:
        mesh = init_device_mesh("cpu", (world,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(param_groups(model, s, lr_parts(script)), lr=s["train.lr"],
                            betas=tuple(s["train.betas"]), eps=s["train.eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: schedule_factor(i, s, steps))

    records = []
    model.train()
    start = time.perf_counter()
    for micro_batches in batches:
        tokens = torch.tensor([sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)])
        if world > 1:
            dist.all_reduce(tokens)
        n = int(tokens[0])
        loss_sum = torch.zeros(())
        for mb in micro_batches:
            logits = model(**{k: v for k, v in mb.items() if k in MODEL_KEYS}, use_cache=False).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), mb["labels"].view(-1), reduction="sum")
            (loss * world / n).backward()  # fully_shard averages gradients over the ranks
            loss_sum += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s["train.clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(loss_sum)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        records.append({"loss": loss_sum.item() / n, "grad_norm": norm.item(), "tokens": n,
                        "elapsed": time.perf_counter() - start, **to.process_counters()})
    if rank == 0:
        Path(result).write_text(json.dumps(records))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def framework_worker(script: Path, result: str, data_result: str, script_args: list[str]) -> None:
    """train_overhead's framework worker (the script run unchanged, CPU time at each log call), with
    the script's data time noted per step; rank 0 writes it. `data_wall`: the training thread's
    wait in `next(loader)`; `data_cpu`: the CPU time of making the step's batches, in whichever
    thread made them (runtime.data.prefetch makes them ahead, in its own thread)."""
    import threading

    import runtime.data.loader as loader_mod

    made, waited = [], []

    def timed(plain_iter, record):
        def timed_iter(self):
            it = plain_iter(self)
            while True:
                main = threading.current_thread() is threading.main_thread()
                wall, cpu = time.perf_counter(), time.thread_time()
                item = next(it)
                record(main, time.perf_counter() - wall, time.thread_time() - cpu)
                yield item
        return timed_iter

    def step_loader(main, wall, cpu):  # makes the batches, in the thread that iterates it
        made.append(cpu)
        if main:  # no prefetching: the training thread waits for it
            waited.append(wall)

    loader_mod.StepLoader.__iter__ = timed(loader_mod.StepLoader.__iter__, step_loader)
    try:
        import runtime.data.prefetch as prefetch_mod
    except ImportError:  # a runtime without a prefetching loader
        prefetch_mod = None
    if prefetch_mod is not None:
        prefetch_mod.Prefetch.__iter__ = timed(prefetch_mod.Prefetch.__iter__,
                                               lambda main, wall, cpu: waited.append(wall))
    to.framework_worker(script, result, script_args)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(data_result).write_text(json.dumps([{"data_wall": w, "data_cpu": c} for w, c in zip(waited, made)]))


def run_framework(script: Path, nproc: int, total: int, work: Path) -> list[dict]:
    ckpt, cpu, data = work / "ckpt", work / "cpu.json", work / "data.json"
    to.launch(Path(__file__), nproc, ["--framework-worker", "--script", script, "--result", cpu, "--data-result", data,
                                      "--", "--mesh.dp_shard", nproc, "--train.steps", total,
                                      "--checkpoint.every", total, "--checkpoint.export", "none",
                                      "--checkpoint.dir", ckpt], work / "framework.log")
    records = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return without_data([{**r, **c} for r, c in zip(records, json.loads(cpu.read_text()), strict=True)],
                        json.loads(data.read_text()))


def without_data(records: list[dict], fetches: list[dict]) -> list[dict]:
    """Each record with clocks that leave out the data time so far: `step_elapsed` (wall) and
    `step_cpu` (CPU time), from the per-step fetch times (none: the clocks themselves)."""
    wall = cpu = 0.0
    out = []
    for k, r in enumerate(records):
        if fetches:
            wall += fetches[k]["data_wall"]
            cpu += fetches[k]["data_cpu"]
        out.append({**r, "step_elapsed": r["elapsed"] - wall, "step_cpu": r["cpu"] - cpu,
                    "data_wall": wall, "data_cpu": cpu})
    return out


def run_hand(script: Path, nproc: int, total: int, work: Path) -> list[dict]:
    result = work / "hand.json"
    to.launch(Path(__file__), nproc, ["--hand-worker", "--script", script, "--total", total, "--result", result],
              work / "hand.log")
    return without_data(json.loads(result.read_text()), [])


CLOCKS = {"wall": "elapsed", "cpu": "cpu", "wall-data": "step_elapsed", "cpu-data": "step_cpu"}


def pair_ratios(fw: list[dict], hand: list[dict], warmup: int) -> dict:
    """framework / hand tokens per second on each clock (see CLOCKS)."""
    return {k: to.throughput(fw, warmup, c) / to.throughput(hand, warmup, c) for k, c in CLOCKS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="framework/hand pairs per layout")
    ap.add_argument("--layouts", default="1,2", help="process counts, e.g. 1,2")
    ap.add_argument("--hand-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--framework-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--script", type=Path, default=SCRIPT, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--data-result", help=argparse.SUPPRESS)
    ap.add_argument("script_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hand_worker or args.framework_worker:
        sys.path.insert(0, str(REPO))
        if args.hand_worker:
            return hand_worker(args.script, args.total, args.result)
        return framework_worker(args.script, args.result, args.data_result, args.script_args)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("error: --warmup and --steps must be >= 1")

    s = to.demo_settings(SCRIPT)
    if not (REPO / s["data.photos.path"]).is_file():
        sys.path.insert(0, str(REPO))
        from planc.demo_vl_assets import make_vl_demo_assets
        make_vl_demo_assets(REPO / Path(s["data.photos.path"]).parent)
    total = args.warmup + args.steps
    print(f"{SCRIPT.relative_to(REPO)}: {s['model.config']}, global batch {s['train.global_batch']} micro-batches of "
          f"<= {s['data.tokens']} tokens / {s['data.patches']} patches, lr parts {lr_parts()}, {args.warmup} warm-up + "
          f"{args.steps} timed steps per run, OMP_NUM_THREADS=1, {os.cpu_count()} cores")
    print("ratio = framework / hand, target tokens/s over the timed window: wall, rank 0's CPU time, and both without\n"
          "the script's data time (wall: its training thread's wait for batches; cpu: the CPU time of making them;\n"
          "the hand loop's batches are ready). data ms/step: the wait.\n"
          "loss diff: largest relative difference of the per-step losses; gnorm diff: of the first step's norm")
    print(f"{'layout':<12} {'pair':>4} {'fw tok/s':>9} {'hand tok/s':>10} {'wall':>6} {'cpu':>6} {'wall-data':>9} "
          f"{'cpu-data':>8} {'data ms/step':>12}  {'loss diff':>9} {'gnorm diff':>10}")
    summary = []
    with tempfile.TemporaryDirectory(prefix="vl_overhead_") as tmp:
        for nproc in [int(x) for x in args.layouts.split(",")]:
            name = "1 process" if nproc == 1 else f"FSDP2 x {nproc}"
            ratios = {k: [] for k in CLOCKS}
            for r in range(args.repeats):
                work = Path(tmp) / f"{nproc}_{r}"
                runs = {}
                for which in (["fw", "hand"] if r % 2 == 0 else ["hand", "fw"]):
                    (work / which).mkdir(parents=True)
                    run = run_framework if which == "fw" else run_hand
                    runs[which] = run(SCRIPT, nproc, total, work / which)
                fw, hand = runs["fw"], runs["hand"]
                if [x["tokens"] for x in fw] != [x["tokens"] for x in hand]:
                    raise SystemExit("error: the framework and the hand loop saw different batches")
                pair = pair_ratios(fw, hand, args.warmup)
                for k, v in pair.items():
                    ratios[k].append(v)
                data_ms = 1e3 * to.per_step(fw, args.warmup, "data_wall")
                print(f"{name:<12} {r + 1:>4} {to.throughput(fw, args.warmup):>9,.0f} "
                      f"{to.throughput(hand, args.warmup):>10,.0f} {pair['wall']:>6.3f} {pair['cpu']:>6.3f} "
                      f"{pair['wall-data']:>9.3f} {pair['cpu-data']:>8.3f} {data_ms:>12.0f}  "
                      f"{to.max_rel_diff(fw, hand, 'loss'):>9.1e} {to.max_rel_diff(fw[:1], hand[:1], 'grad_norm'):>10.1e}",
                      flush=True)
            summary.append((name, nproc, ratios))
    print("\nratio median [min, max] over the pairs")
    print(f"{'layout':<12} " + " ".join(f"{k:>21}" for k in CLOCKS) + "   target (wall)")
    for name, nproc, ratios in summary:
        cells = [f"{statistics.median(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for v in ratios.values()]
        med = statistics.median(ratios["wall"])
        target = TARGETS.get(nproc)
        verdict = "" if target is None else f">= {target}: {'met' if med >= target else 'NOT met'}"
        print(f"{name:<12} " + " ".join(f"{c:>21}" for c in cells) + f"   {verdict}")


if __name__ == "__main__":
    main()
