"""bench/diffusion_step.py runs end to end on a tiny setting and prints its ratio."""
import os
import subprocess
import sys

from tests.launch import REPO


def test_bench_runs():
    proc = subprocess.run([sys.executable, "bench/diffusion_step.py", "--steps", "1", "--batch", "1", "--seq", "64",
                           "--block", "8"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio     wall" in proc.stdout and "noise draw" in proc.stdout
