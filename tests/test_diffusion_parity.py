"""Block diffusion under FSDP2 on 2 gloo ranks reproduces one process (tests/mp/diffusion_parity.py,
run once as a plain process and once under torchrun): the same masked tokens, losses and gradient
norms, in fp32 (1e-6) and fp64 (1e-12)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from planc.demo_diffusion import make_diffusion_demo
from tests.launch import REPO, torchrun

DRIVER = REPO / "tests" / "mp" / "diffusion_parity.py"


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_fsdp2_matches_one_process(demo_assets, tmp_path):
    demo = make_diffusion_demo(demo_assets["dir"])
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(open(demo["chat"], encoding="utf-8").readlines()[:300]), encoding="utf-8")
    args = [str(chat), demo["tokenizer_mask"], str(demo["mask_id"])]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DRIVER), str(one), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    torchrun(DRIVER, 2, [two, *args], log_dir=tmp_path / "logs")
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for dtype, tol in (("fp32", 1e-6), ("fp64", 1e-12)):
        assert a[dtype]["tokens"] == b[dtype]["tokens"]  # the same masks were drawn
        assert min(a[dtype]["tokens"]) > 50
        for key in ("loss", "grad_norm"):
            worst = max(rel(x, y) for x, y in zip(b[dtype][key], a[dtype][key]))
            print(f"{dtype} {key}: worst relative difference {worst:.2e}")
            assert worst < tol, (dtype, key, a[dtype][key], b[dtype][key])
