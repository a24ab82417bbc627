"""Start training scripts as `planc verify` and the tests do: torchrun on gloo, or one plain process.

- Each torchrun rank writes its own log (`--log-dir DIR --redirects 3`), so a failing rank's error
  is kept (`failure_log` shows it) instead of torchrun's summary.
- Every launch gets the same pinned environment (`PINNED`): one OpenMP and one MKL thread (a
  reduction's summation order depends on the thread count) and torch's deterministic algorithms
  (runtime.dist.init reads PLANC_DETERMINISTIC; CUBLAS_WORKSPACE_CONFIG is what that mode needs of
  cuBLAS on a GPU). They are forced, not defaulted: a number that a
  verdict depends on must not depend on the caller's shell. The repository comes first on
  PYTHONPATH, so the launched scripts import this checkout's `runtime`.
- torchrun picks a free port and binds it a moment later; another launch on the machine can take it
  in between (EADDRINUSE in the logs). `run_torchrun` then launches once more, in a fresh log
  directory: a launcher failure, not the script's.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # where `runtime` lives, for the launched scripts
# CUBLAS_WORKSPACE_CONFIG: what torch's deterministic mode needs from cuBLAS on a GPU (unused on CPU)
PINNED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PLANC_DETERMINISTIC": "1",
          "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def pinned_env(extra: dict | None = None) -> dict:
    """This process's environment with `PINNED` forced, the repository first on PYTHONPATH (after
    any PYTHONPATH in `extra`), then `extra` (which may not change the pinned variables)."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(PINNED))
    if clash:
        raise ValueError(f"{clash} are pinned for every launch ({pinned_text()})")
    env = dict(os.environ)
    paths = [extra.pop("PYTHONPATH", None), str(REPO), env.get("PYTHONPATH")]
    env.update(PINNED, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def pinned_text() -> str:
    return " ".join(f"{k}={v}" for k, v in PINNED.items())


def start_torchrun(script, nproc: int, args, log_dir: Path, env: dict | None = None, cwd=None) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node nproc script *args` (in `cwd`, default this one), each
    rank's output in its own file under `log_dir`, the launcher's in `log_dir/torchrun.log`."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--log-dir", str(log_dir), "--redirects", "3", str(script), *map(str, args)]
    with open(log_dir / "torchrun.log", "w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, cwd=cwd, env=pinned_env(env), stdout=out, stderr=subprocess.STDOUT,
                                text=True)


def start_single(script, args, log_dir: Path, env: dict | None = None, cwd=None) -> subprocess.Popen:
    """`python script *args` as one plain process (world 1, no launcher); output in `log_dir/python.log`."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    full = pinned_env(env)
    for var in _LAUNCHER_VARS:
        full.pop(var, None)
    with open(log_dir / "python.log", "w") as out:
        return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=cwd, env=full, stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: torchrun passes it on to its workers (SIGKILL would orphan them)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(proc: subprocess.Popen, timeout: float) -> int:
    """The exit status, or 124 when the run took longer than `timeout` seconds (it is stopped)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return 124
    except BaseException:  # Ctrl-C: leave no run behind
        stop(proc)
        raise


def run_torchrun(script, nproc: int, args, log_dir: Path, *, timeout: float, env: dict | None = None,
                 cwd=None) -> tuple[int, Path]:
    """Start, wait, and launch once more if the launcher lost its port; (exit status, log dir used)."""
    log_dir = Path(log_dir)
    rc = wait(start_torchrun(script, nproc, args, log_dir, env, cwd), timeout)
    if rc != 0 and port_taken(log_dir):
        log_dir = log_dir.with_name(log_dir.name + "_retry")
        rc = wait(start_torchrun(script, nproc, args, log_dir, env, cwd), timeout)
    return rc, log_dir


def port_taken(log_dir: Path) -> bool:
    """Whether a failed launch failed because a port was taken (EADDRINUSE), in any of its logs."""
    return any("EADDRINUSE" in t or "Address already in use" in t
               for t in (p.read_text(errors="replace") for p in Path(log_dir).rglob("*.log")))


def failure_log(log_dir: Path, tail: int = 4000) -> str:
    """The failing rank's own log (torchrun names the first failure), else every log with a traceback."""
    log_dir = Path(log_dir)
    parts = []
    launcher = log_dir / "torchrun.log"
    text = launcher.read_text(errors="replace") if launcher.exists() else ""
    m = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", text, re.S)
    logs = sorted(p for p in log_dir.rglob("*.log") if p.name != "torchrun.log")
    if m:
        chosen = [p for p in logs if p.parent.name == m.group(1) and p.parent.parent.name.startswith("attempt")]
    else:
        chosen = [p for p in logs if "Traceback" in p.read_text(errors="replace")]
    for p in chosen or logs:
        body = p.read_text(errors="replace")
        if body.strip():
            parts.append(f"--- {p.relative_to(log_dir)} ---\n{body[-tail:]}")
    if not parts and text:
        parts.append(f"--- torchrun ---\n{text[-tail:]}")
    return "\n".join(parts)


def rank_logs(log_dir: Path, tail: int = 6000) -> str:
    """Every log under a launch's log dir (the launcher's and each rank's), last `tail` characters each."""
    out = []
    for f in sorted(Path(log_dir).rglob("*.log")):
        text = f.read_text(errors="replace")
        if text.strip():
            out.append(f"--- {f.relative_to(log_dir)} ---\n{text[-tail:]}")
    return "\n".join(out)
