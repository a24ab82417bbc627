"""Rank-0 training log: one readable line per logged step, one JSON line per step in metrics.jsonl.

The text line reads well in a terminal and in a log file alike (no carriage returns or colours).
`metrics.jsonl` survives resumes: lines up to the resumed step are kept, later ones (written by
the run that crashed after its last checkpoint) are dropped, so each step appears once.

Validation (`Metrics.validation`, fed by runtime.validation) adds `val_loss`, `val_ppl`,
`val_tokens` and `val_time` to the record of the step it follows (a step that was not logged gets
a record of its own, e.g. step 0 before training), prints a line of its own, and is left out of
the next step's tokens/s. `mfu` (runtime.mfu) joins a step's record and line when it is measured.
Trackers (runtime.trackers) are sinks: each gets every record written here, and nothing else, so
metrics.jsonl stays the source of truth.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

__all__ = ["Metrics", "format_line", "format_validation", "read_metrics"]


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_line(step: int, steps: int, *, loss: float, grad_norm: float, lr: float,
                tokens_per_s: float, elapsed: float, width: int = 20, mfu: float | None = None) -> str:
    """``step  12/40 [######..............] loss 6.1234 gnorm 0.87 lr 3.0e-03 tok/s 12,345 0:00:31``
    (with ``mfu 41.2%`` before the time when it is measured)."""
    done = round(width * step / max(steps, 1))
    bar = "#" * done + "." * (width - done)
    digits = len(str(steps))
    util = "" if mfu is None else f"mfu {100 * mfu:.1f}% "
    return (f"step {step:>{digits}}/{steps} [{bar}] loss {loss:.4f} gnorm {grad_norm:.3g} "
            f"lr {lr:.2e} tok/s {tokens_per_s:,.0f} {util}{_duration(elapsed)}")


def format_validation(step: int, steps: int, *, val_loss: float, val_ppl: float, val_tokens: int,
                      val_time: float) -> str:
    """``step  20/40 validation loss 5.8123 ppl 334.5 (12,288 tokens, 1.9 s)``"""
    digits = len(str(steps))
    return (f"step {step:>{digits}}/{steps} validation loss {val_loss:.4f} ppl {val_ppl:.4g} "
            f"({val_tokens:,} tokens, {val_time:.1f} s)")


def read_metrics(path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Metrics:
    """Logs from rank 0 only; other ranks' calls are no-ops.

    Call `start_at(step)` once the resumed step is known (0 for a fresh run, which starts a new
    metrics.jsonl); it also starts the clock for tokens/s.
    """

    def __init__(self, output_dir, *, steps: int, rank: int = 0, log_every: int = 1, stream=None, sinks=(),
                 mfu=None):
        self.steps, self.rank, self.log_every = steps, rank, max(1, log_every)
        self.mfu = mfu  # runtime.mfu.MFU: with `compute_tokens=` in log(), records the step's MFU
        self.stream = stream or sys.stdout
        self.path = Path(output_dir) / "metrics.jsonl"
        self.sinks = list(sinks) if rank == 0 else []
        self.started = False
        self._last = None  # (step, record, file offset where its line starts) of the last line written

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
                for r in kept:
                    self._last = (r["step"], r, f.tell())  # a validation of the resumed step joins it
                    f.write(json.dumps(r) + "\n")
            self.elapsed_before = max((r.get("elapsed", 0.0) for r in kept), default=0.0)
        for sink in self.sinks:
            sink.start_at(start_step)
        self.start = self.last = time.perf_counter()

    def _write(self, record: dict, replace_last: bool = False) -> None:
        with open(self.path, "r+" if replace_last else "a") as f:
            if replace_last:
                f.seek(self._last[2])
                f.truncate()
            offset = f.tell()
            f.write(json.dumps(record) + "\n")
        self._last = (record["step"], record, offset)

    def log(self, step: int, *, loss: float, grad_norm: float, lr: float, tokens: int,
            compute_tokens: int | None = None, **extra) -> None:
        """Record one optimizer step (`tokens`: the step's global target tokens; `compute_tokens`:
        the input positions this rank computed, padding included, for MFU)."""
        if not self.started:
            self.start_at(0)
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        if self.rank != 0:
            return
        if self.mfu is not None and compute_tokens is not None:
            mfu = self.mfu.utilization(compute_tokens, dt)
            if mfu is not None:
                extra["mfu"] = mfu
        elapsed = self.elapsed_before + (now - self.start)
        record = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": tokens,
                  "tokens_per_s": tokens / dt if dt > 0 else None, "step_time": dt,
                  "elapsed": elapsed, **extra}
        self._write(record)
        for sink in self.sinks:
            sink.record(record)
        if step % self.log_every == 0 or step == self.steps:
            print(format_line(step, self.steps, loss=loss, grad_norm=grad_norm, lr=lr,
                              tokens_per_s=record["tokens_per_s"] or 0.0, elapsed=elapsed,
                              mfu=extra.get("mfu")),
                  file=self.stream, flush=True)

    def validation(self, step: int, *, val_loss: float, val_ppl: float, val_tokens: int, val_time: float) -> None:
        """Record a validation after `step` (the dict `runtime.validation.ValTotals.result` returns).
        Call it on every rank: its time is taken out of the next step's tokens/s everywhere."""
        if not self.started:
            self.start_at(0)
        self.last += val_time  # the next step's tokens/s counts training only
        if self.rank != 0:
            return
        values = {"val_loss": val_loss, "val_ppl": val_ppl, "val_tokens": val_tokens, "val_time": val_time}
        same_step = self._last is not None and self._last[0] == step
        record = {**self._last[1], **values} if same_step else {"step": step, **values}
        self._write(record, replace_last=same_step)
        for sink in self.sinks:
            sink.record({"step": step, **values})
        print(format_validation(step, self.steps, **values), file=self.stream, flush=True)

    def close(self) -> None:
        """Flush and close the trackers (call once, at the end of the run)."""
        for sink in self.sinks:
            sink.close()

    def info(self, message: str) -> None:
        """A plain message from rank 0 (start-up facts, checkpoints written, the export)."""
        if self.rank == 0:
            print(message, file=self.stream, flush=True)
