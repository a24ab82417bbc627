"""Rank-0 training log: one readable line per logged step, one JSON line per step in metrics.jsonl.

The text line reads well in a terminal and in a log file alike (no carriage returns or colours).
`metrics.jsonl` survives resumes: lines up to the resumed step are kept, later ones (written by
the run that crashed after its last checkpoint) are dropped, so each step appears once.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

__all__ = ["Metrics", "format_line", "read_metrics"]


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_line(step: int, steps: int, *, loss: float, grad_norm: float, lr: float,
                tokens_per_s: float, elapsed: float, width: int = 20) -> str:
    """``step  12/40 [######..............] loss 6.1234 gnorm 0.87 lr 3.0e-03 tok/s 12,345 0:00:31``"""
    done = round(width * step / max(steps, 1))
    bar = "#" * done + "." * (width - done)
    digits = len(str(steps))
    return (f"step {step:>{digits}}/{steps} [{bar}] loss {loss:.4f} gnorm {grad_norm:.3g} "
            f"lr {lr:.2e} tok/s {tokens_per_s:,.0f} {_duration(elapsed)}")


def read_metrics(path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Metrics:
    """Logs from rank 0 only; other ranks' calls are no-ops.

    Call `start_at(step)` once the resumed step is known (0 for a fresh run, which starts a new
    metrics.jsonl); it also starts the clock for tokens/s.
    """

    def __init__(self, output_dir, *, steps: int, rank: int = 0, log_every: int = 1, stream=None):
        self.steps, self.rank, self.log_every = steps, rank, max(1, log_every)
        self.stream = stream or sys.stdout
        self.path = Path(output_dir) / "metrics.jsonl"
        self.started = False

    def start_at(self, start_step: int) -> None:
        """Keep the records up to `start_step` (drop those of steps to be redone) and start the clock."""
        self.started = True
        self.elapsed_before = 0.0
        if self.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if start_step > 0 and self.path.exists():
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            self.elapsed_before = kept[-1].get("elapsed", 0.0) if kept else 0.0
        self.start = self.last = time.perf_counter()

    def log(self, step: int, *, loss: float, grad_norm: float, lr: float, tokens: int, **extra) -> None:
        """Record one optimizer step (`tokens`: the step's global target tokens)."""
        if not self.started:
            self.start_at(0)
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        if self.rank != 0:
            return
        elapsed = self.elapsed_before + (now - self.start)
        record = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": tokens,
                  "tokens_per_s": tokens / dt if dt > 0 else None, "step_time": dt,
                  "elapsed": elapsed, **extra}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % self.log_every == 0 or step == self.steps:
            print(format_line(step, self.steps, loss=loss, grad_norm=grad_norm, lr=lr,
                              tokens_per_s=record["tokens_per_s"] or 0.0, elapsed=elapsed),
                  file=self.stream, flush=True)

    def info(self, message: str) -> None:
        """A plain message from rank 0 (start-up facts, checkpoints written, the export)."""
        if self.rank == 0:
            print(message, file=self.stream, flush=True)
