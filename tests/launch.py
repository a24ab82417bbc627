"""Launch a script under torchrun for multi-process (gloo, CPU) tests.

One launch per group of checks: torchrun costs ~10 s at 2 processes. Each rank's output is kept in
its own log file (`--redirects 3`), and a failure raises with every rank's log, so the failing
rank's own error is visible instead of torchrun's summary.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def torchrun(script, nproc: int, args=(), *, log_dir: Path, timeout: float = 600, env=None):
    """Run `torchrun --standalone --nproc-per-node nproc script *args` from the repo root."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--log-dir", str(log_dir), "--redirects", "3",
        str(script), *map(str, args),
    ]
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and _port_race(proc.stdout + proc.stderr + rank_logs(log_dir)):
        # The free port torchrun picked was taken before it bound it (two launches at once): a
        # launcher failure, not the script's. Launch once more, in a fresh log directory.
        log_dir = log_dir.with_name(log_dir.name + "_retry")
        cmd[cmd.index("--log-dir") + 1] = str(log_dir)
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- torchrun stdout ---\n{proc.stdout[-4000:]}\n--- torchrun stderr ---\n{proc.stderr[-4000:]}\n"
            + rank_logs(log_dir)
        )
    return proc


def _port_race(text: str) -> bool:
    return "EADDRINUSE" in text or "Address already in use" in text


def rank_logs(log_dir: Path, tail: int = 6000) -> str:
    """Every rank's stdout/stderr under a torchrun --log-dir, last `tail` characters each."""
    out = []
    for f in sorted(Path(log_dir).rglob("*.log")):
        text = f.read_text(errors="replace")
        if text.strip():
            out.append(f"--- {f.relative_to(log_dir)} ---\n{text[-tail:]}")
    return "\n".join(out)
