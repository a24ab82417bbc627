"""Training checkpoints with torch.distributed.checkpoint (DCP): save, find, resume.

A checkpoint is ``<dir>/step_<N>/``: DCP files holding the model and optimizer state (sharded, so
any later mesh can load them), the LR scheduler, the data loader's position and the step, plus
``rng/rank_<r>.pt`` with each rank's random-generator states. The data loader's state is one global
entry when it is the same on every rank (map-style sources, ``loader.state_is_global``); with
streaming sources each rank reads its own share, so each rank's state goes to
``loader/rank_<r>.pt`` and resumes only on the same ranks (same world and data-parallel layout).
It is written as
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

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


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _loader_is_global(loader) -> bool:
    """Whether the loader's state is identical on every rank (loaders that don't say are taken to be)."""
    return bool(getattr(loader, "state_is_global", True))


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


def _options(trainable_only: bool) -> StateDictOptions:
    """`trainable_only` leaves frozen parameters (a LoRA run's base weights) out of checkpoints:
    they are rebuilt from the weights (or the seed) at start-up, as in the run that saved them."""
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def save(ckpt_dir, step: int, *, model, optimizer, scheduler, loader, keep: int | None = None,
         trainable_only: bool = False) -> Path:
    """Write ``<ckpt_dir>/step_<step>`` from all ranks; keep the newest `keep` (None = all)."""
    root = Path(ckpt_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    per_rank = not _loader_is_global(loader)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt at this very step
        (tmp / "rng").mkdir(parents=True)
        if per_rank:
            (tmp / "loader").mkdir()
    _barrier()
    torch.save(_rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
    if per_rank:
        # DCP keeps one rank's copy of a non-tensor entry, so per-rank state goes to files
        torch.save(loader.state_dict(), tmp / "loader" / f"rank_{_rank()}.pt")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
    state = {"model": model_sd, "optim": optim_sd,
             "train": {"step": step, "scheduler": _blob(scheduler.state_dict()),
                       "loader": b"" if per_rank else _blob(loader.state_dict()),
                       "loader_scope": "rank" if per_rank else "global", "world": _world()}}
    # Returns on every rank only after rank 0 wrote the metadata, i.e. once all ranks' data
    # (and, written before it, their rng and loader files) is on disk.
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


def load(path, *, model, optimizer, scheduler, loader, trainable_only: bool = False) -> int:
    """Restore everything `save` wrote (resharding to the current mesh); returns the step.

    Each rank takes its own rng file; on a different world size ranks without one keep their
    seeded generators (the data order does not depend on them: the loader has its own state).
    Per-rank loader states (streaming sources) are refused, before anything is loaded, unless
    this run has the world size and kind of loader that wrote them; the loader itself refuses
    a different data-parallel layout.
    """
    path = Path(path)
    train = _load_train(path)
    _check_loader_scope(path, train, loader)
    options = _options(trainable_only)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options)
    scheduler.load_state_dict(_unblob(train["scheduler"]))
    if train["loader_scope"] == "rank":
        loader_sd = torch.load(path / "loader" / f"rank_{_rank()}.pt", weights_only=False)
    else:
        loader_sd = _unblob(train["loader"])
    try:
        loader.load_state_dict(loader_sd)
    except ValueError as e:  # the loader's own layout checks: say which checkpoint, no traceback
        raise SystemExit(f"error: cannot resume the data loader from {path}: {e}") from e
    rng = path / "rng" / f"rank_{_rank()}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return int(train["step"])


def _load_train(path: Path) -> dict:
    """The checkpoint's small ``train`` entries (step, scheduler, loader and how it was saved).
    Checkpoints written before the loader scope was recorded hold one global loader state."""
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    train = {"step": 0, "scheduler": b"", "loader": b""}
    if "train.loader_scope" in keys:
        train.update(loader_scope="", world=0)
    dcp.load({"train": train}, checkpoint_id=str(path))
    train.setdefault("loader_scope", "global")
    return train


def _check_loader_scope(path: Path, train: dict, loader) -> None:
    """Exit with a clear message when the saved loader state cannot resume this run's loader."""
    saved, now = train["loader_scope"], "global" if _loader_is_global(loader) else "rank"
    if saved == "rank" and now == "global":
        raise SystemExit(
            f"error: {path} holds per-rank data-loader states (streaming sources), but this run's "
            f"sources are all map-style; resume it with the same data sources")
    if saved == "global" and now == "rank":
        raise SystemExit(
            f"error: {path} holds one global data-loader state (map-style sources), but this run reads "
            f"a streaming source; resume it with the same data sources")
    if saved == "rank" and int(train["world"]) != _world():
        raise SystemExit(
            f"error: {path} holds the data-loader states of {train['world']} ranks (streaming sources "
            f"read a share per rank), so it resumes only on {train['world']} processes with the same "
            f"mesh, not on {_world()}")
    if saved == "rank" and not (path / "loader" / f"rank_{_rank()}.pt").is_file():
        raise SystemExit(f"error: {path} lacks loader/rank_{_rank()}.pt: the checkpoint is incomplete")
