"""Experiment trackers: TensorBoard and Weights & Biases, fed from the metrics records.

    sinks = trackers.build(["tensorboard", "wandb"], out_dir, rank=info.rank, run_name="demo",
                           config=cfg.as_dict(), project="planc")
    log = metrics.Metrics(out_dir, steps=..., rank=info.rank, sinks=sinks)
    ...
    log.close()  # at the end: flushes and closes the trackers

metrics.jsonl stays the source of truth: a tracker is a sink of runtime.metrics.Metrics and
receives exactly the records written there (each step's, and each validation's), on rank 0 only;
every numeric field becomes a scalar under its own name (``loss``, ``grad_norm``, ``lr``,
``tokens_per_s``, ``val_loss``, ...) at the record's step. A resumed run drops what a crashed run
wrote after the resumed step, as metrics.jsonl does: TensorBoard purges those steps from its view.
W&B accepts only increasing steps within a run, so each launch is a run of its own, grouped under
the run name (a relaunch's run starts at the resumed step; nothing it logs is dropped).

Both are optional extras (``pip install -e '.[tensorboard]'`` / ``'.[wandb]'``); asking for one
that is not installed is a clear error at start-up. W&B runs offline unless WANDB_MODE says
otherwise (``wandb sync OUT/wandb/offline-run-*`` uploads later), so no network is needed.
"""
from __future__ import annotations

import os
from numbers import Number
from pathlib import Path

__all__ = ["KINDS", "TensorBoardSink", "WandbSink", "build"]

from runtime.vocab import TRACKERS as KINDS  # noqa: E402


def _scalars(record: dict) -> dict:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, Number) and not isinstance(v, bool)}


class TensorBoardSink:
    """Scalars into ``OUT/tensorboard`` event files."""

    def __init__(self, out_dir, config: dict | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError as e:
            raise SystemExit("error: the tensorboard tracker needs the tensorboard package: "
                             "pip install -e '.[tensorboard]'") from e
        self._writer_class, self.dir, self.config = SummaryWriter, Path(out_dir) / "tensorboard", config
        self.writer = None

    def start_at(self, step: int) -> None:
        # purge_step: events at or after it, left by a crashed run, are dropped from the view
        self.writer = self._writer_class(str(self.dir), purge_step=step + 1 if step > 0 else None)
        if step == 0 and self.config:
            self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in self.config.items()), 0)

    def record(self, record: dict) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbSink:
    """Scalars into a W&B run (offline by default), one run per launch in the run name's group."""

    def __init__(self, out_dir, *, run_name: str, config: dict | None = None, project: str = "planc"):
        try:
            import wandb
        except ImportError as e:
            raise SystemExit("error: the wandb tracker needs the wandb package: pip install -e '.[wandb]'") from e
        self.wandb, self.dir = wandb, Path(out_dir)
        self.run_name, self.config, self.project = run_name, config, project
        self.run = None

    def start_at(self, step: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self.run_name if step == 0 else f"{self.run_name} (from step {step})"
        self.run = self.wandb.init(project=self.project, name=name, group=self.run_name, dir=str(self.dir),
                                   config={**(self.config or {}), "resumed_at": step},
                                   mode=os.environ.get("WANDB_MODE", "offline"))

    def record(self, record: dict) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def build(kinds, out_dir, *, rank: int, run_name: str, config: dict | None = None, project: str = "planc") -> list:
    """The sinks for `kinds` (a subset of KINDS) on rank 0; an empty list on the other ranks."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"error: unknown tracker {unknown[0]!r}; expected one of {', '.join(KINDS)}")
    if rank != 0:
        return []
    sinks = []
    for kind in kinds:
        if kind == "tensorboard":
            sinks.append(TensorBoardSink(out_dir, config))
        else:
            sinks.append(WandbSink(out_dir, run_name=run_name, config=config, project=project))
    return sinks
