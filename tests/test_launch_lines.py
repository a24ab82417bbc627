"""The launch lines a generated script gives: one machine, or nodes meeting at a torchrun
rendezvous (by hand or with Slurm); paths from the command line never become code."""
from __future__ import annotations

import ast
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from planc.commands import launch
from tests.planfix import base_plan, make_workspace

REPO = Path(__file__).resolve().parents[1]


def test_lines_by_world():
    one = launch(8, 8, "generated/x.py", "x")
    assert not one.multi_node and one.lines()[1].strip() == "torchrun --standalone --nproc-per-node 8 generated/x.py"
    many = launch(256, 8, "generated/x.py", "x")
    assert many.nodes == 32 and many.multi_node
    node = many.node()
    assert "--nnodes 32 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id x" in node
    assert many.slurm().startswith("srun --nodes 32 --ntasks-per-node 1 torchrun --nnodes 32")


def test_cluster_plan_docstring_is_multi_node():
    text = (REPO / "generated" / "llama3-70b.py").read_text()
    doc = ast.get_docstring(ast.parse(text))
    assert "--standalone" not in doc
    assert "torchrun --nnodes 32 --nproc-per-node 8 --rdzv-backend c10d" in doc and "srun --nodes 32" in doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
def test_two_nodes_on_localhost(tmp_path):
    """The docstring's node command, run as two torchrun agents on this machine (one process each):
    they meet at the c10d rendezvous and train the plan together."""
    ws = make_workspace(tmp_path / "ws")
    plan = ws / "nodes.veo"
    plan.write_text(base_plan(ws).replace('plan "base"', 'plan "nodes"').replace(
        "dp_shard = 2  device = cpu", "dp_shard = 2  device = cpu  gpus_per_node = 1"))
    script = tmp_path / "nodes.py"
    r = subprocess.run([sys.executable, "-m", "planc", "compile", str(plan), "-o", str(script)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = ast.get_docstring(ast.parse(script.read_text()))
    line = next(x.strip() for x in doc.splitlines() if x.strip().startswith("torchrun --nnodes"))
    port = _free_port()
    argv = shlex.split(line.replace("HOST:29500", f"127.0.0.1:{port}"))
    assert argv[:5] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *argv[1:], "--train.steps", "2",
           "--checkpoint.dir", str(tmp_path / "out")]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outs = [a.communicate(timeout=600)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(outs)
    log = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2
    assert "world 2" in "".join(outs)
