"""Training checkpoints with torch.distributed.checkpoint (DCP): save, find, resume.

A checkpoint is ``<dir>/step_<N>/``: DCP files holding the model and optimizer state (sharded, so
any later mesh can load them), the LR scheduler, the data loader's position and the step, plus
``rng/rank_<r>.pt`` with each rank's random-generator states. It is written as
``step_<N>.tmp/`` and renamed by rank 0 only once every rank has finished, so a ``step_<N>``
directory is always complete and a crash leaves at most a ``.tmp`` that resuming ignores.
"""
from __future__ import annotations

import io
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

__all__ = ["save", "load", "complete_checkpoints", "find_latest", "resolve_resume", "step_of"]

_STEP_DIR = re.compile(r"step_(\d+)\Z")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _blob(obj) -> bytes:
    """Opaque bytes for state whose structure may change between runs (scheduler, loader):
    DCP would otherwise want a template of the same nested shape to load into."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unblob(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np
        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_of(path) -> int:
    """The step number of a ``step_<N>`` checkpoint directory."""
    m = _STEP_DIR.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a step_<N> checkpoint directory")
    return int(m.group(1))


def complete_checkpoints(ckpt_dir) -> list[Path]:
    """Complete checkpoints under `ckpt_dir`, oldest first (``step_<N>`` with DCP metadata;
    ``.tmp`` leftovers of a crash and anything else are ignored)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / ".metadata").is_file()]
    return sorted(found, key=step_of)


def find_latest(ckpt_dir) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, ckpt_dir) -> Path | None:
    """What ``--resume`` means: ``auto`` = newest complete checkpoint in `ckpt_dir` (None if
    there is none yet), ``none`` = start fresh, else an explicit checkpoint path.

    Starting fresh over existing checkpoints is refused: the new run would overwrite and prune
    them, a silent loss.
    """
    if resume == "auto":
        return find_latest(ckpt_dir)
    if resume == "none":
        latest = find_latest(ckpt_dir)
        if latest is not None:
            raise SystemExit(
                f"error: {ckpt_dir} already holds checkpoints (newest {latest.name}); continue them with "
                f"--resume auto, or pass another --checkpoint.dir")
        return None
    path = Path(resume)
    if not (path / ".metadata").is_file():
        raise SystemExit(f"error: --resume {resume}: not a complete DCP checkpoint (no .metadata there)")
    return path


def save(ckpt_dir, step: int, *, model, optimizer, scheduler, loader, keep: int | None = None) -> Path:
    """Write ``<ckpt_dir>/step_<step>`` from all ranks; keep the newest `keep` (None = all)."""
    root = Path(ckpt_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt at this very step
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    torch.save(_rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd,
             "train": {"step": step, "scheduler": _blob(scheduler.state_dict()),
                       "loader": _blob(loader.state_dict())}}
    # Returns on every rank only after rank 0 wrote the metadata, i.e. once all ranks' data
    # (and, written before it, their rng files) is on disk.
    dcp.save(state, checkpoint_id=str(tmp))
    if _rank() == 0:
        if final.exists():  # only reachable with an explicit --resume from an older step
            shutil.rmtree(final)
        tmp.rename(final)  # one rank renames: on a shared filesystem the others would race it
        if keep:
            for old in complete_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(path, *, model, optimizer, scheduler, loader) -> int:
    """Restore everything `save` wrote (resharding to the current mesh); returns the step.

    Each rank takes its own rng file; on a different world size ranks without one keep their
    seeded generators (the data order does not depend on them: the loader has its own state).
    """
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "train": {"step": 0, "scheduler": b"", "loader": b""}}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(_unblob(state["train"]["scheduler"]))
    loader.load_state_dict(_unblob(state["train"]["loader"]))
    rng = path / "rng" / f"rank_{_rank()}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return int(state["train"]["step"])
