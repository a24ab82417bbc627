"""Launch a script under torchrun for multi-process (gloo, CPU) tests: planc.launch, as `planc
verify` launches, with the same pinned environment (one thread, deterministic algorithms).

One launch per group of checks: torchrun costs ~10 s at 2 processes. Each rank's output is kept in
its own log file (`--redirects 3`), and a failure raises with every rank's log, so the failing
rank's own error is visible instead of torchrun's summary.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from planc.launch import REPO, failure_log, rank_logs, run_torchrun

__all__ = ["REPO", "torchrun", "rank_logs"]


def torchrun(script, nproc: int, args=(), *, log_dir: Path, timeout: float = 600, env=None):
    """Run `torchrun --standalone --nproc-per-node nproc script *args` from the repo root; raise
    with the failing rank's log (and every other log) unless it exits 0. Returns the completed
    process, whose stdout is the launcher's output."""
    cmd = ["torchrun", f"--nproc-per-node={nproc}", str(script), *map(str, args)]
    rc, used = run_torchrun(script, nproc, args, Path(log_dir), timeout=timeout, env=env, cwd=REPO)
    launcher = (used / "torchrun.log").read_text(errors="replace")
    if rc != 0:
        raise AssertionError(f"torchrun failed ({rc}): {' '.join(cmd)}\n--- the failing rank ---\n"
                             f"{failure_log(used)}\n--- every log ---\n{rank_logs(used)}")
    return subprocess.CompletedProcess(cmd, rc, stdout=launcher, stderr="")
