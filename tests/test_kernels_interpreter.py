"""The Triton kernels' tests, run in a fresh process with TRITON_INTERPRET=1.

The interpreter is chosen when triton is imported, and transformers imports triton, so in this
pytest process it is too late to turn it on. The child runs the "triton" cases of
test_kernels_ops.py and test_kernels_models.py (values and gradients against the torch
references, and a model trained with Triton kernels for two steps).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MIN_CASES = 30  # the child must really have run the Triton cases, not selected none


@pytest.mark.slow
def test_triton_kernels_under_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("already the interpreter process")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), str(TESTS), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-k", "triton",
           str(TESTS / "test_kernels_ops.py"), str(TESTS / "test_kernels_models.py")]
    proc = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= MIN_CASES, tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail
    print(proc.stdout.splitlines()[-1])
