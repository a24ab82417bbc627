"""runtime.checkpoint.dcp (one process) and runtime.metrics: complete-only resume, pruning,
round trips, and metrics.jsonl across resumes."""
import json
import random

import pytest
import torch

from runtime import metrics, optim
from runtime.checkpoint import dcp

# DCP says once per call that it runs without a process group: that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class Loader:
    """Stands in for the data loader: only its state matters to a checkpoint."""
    def __init__(self, position=0):
        self.position = position

    def state_dict(self):
        return {"position": self.position, "nested": {"order": list(range(self.position))}}

    def load_state_dict(self, sd):
        self.position = sd["position"]


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = optim.build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = optim.build_schedule(opt, kind="cosine", steps=10, warmup=2, min_lr=0.1)
    return model, opt, sched


def _train(model, opt, sched, steps):
    for _ in range(steps):
        model(torch.randn(3, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_save_load_round_trip_and_rng(tmp_path):
    model, opt, sched = _setup(0)
    _train(model, opt, sched, 3)
    random.seed(5)
    path = dcp.save(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, loader=Loader(7))
    assert path == tmp_path / "step_3" and (path / ".metadata").is_file() and not (tmp_path / "step_3.tmp").exists()
    expect_py, expect_torch = random.random(), torch.rand(3)

    model2, opt2, sched2 = _setup(1)  # different init: everything must come from the checkpoint
    loader2 = Loader()
    random.seed(99)
    assert dcp.load(path, model=model2, optimizer=opt2, scheduler=sched2, loader=loader2) == 3
    assert loader2.position == 7 and sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    assert random.random() == expect_py and torch.equal(torch.rand(3), expect_torch)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        s1, s2 = opt.state[p1], opt2.state[p2]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
        assert float(s1["step"]) == float(s2["step"]) == 3


def test_continuing_after_load_is_bitwise_identical(tmp_path):
    model, opt, sched = _setup(0)
    _train(model, opt, sched, 2)
    dcp.save(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, loader=Loader())
    torch.manual_seed(123)
    _train(model, opt, sched, 3)
    model2, opt2, sched2 = _setup(1)
    dcp.load(tmp_path / "step_2", model=model2, optimizer=opt2, scheduler=sched2, loader=Loader())
    torch.manual_seed(123)
    _train(model2, opt2, sched2, 3)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_keep_prunes_oldest_and_latest_ignores_partial(tmp_path):
    model, opt, sched = _setup(0)
    for step in (2, 4, 6):
        dcp.save(tmp_path, step, model=model, optimizer=opt, scheduler=sched, loader=Loader(), keep=2)
    assert [p.name for p in dcp.complete_checkpoints(tmp_path)] == ["step_4", "step_6"]
    (tmp_path / "step_8.tmp").mkdir()            # a crash while writing step 8
    (tmp_path / "step_9").mkdir()                # a directory without DCP metadata
    (tmp_path / "step_10.tmp" / "rng").mkdir(parents=True)
    assert dcp.find_latest(tmp_path) == tmp_path / "step_6"
    assert dcp.resolve_resume("auto", tmp_path) == tmp_path / "step_6"
    # a re-save of a crashed step replaces its leftover temp dir
    dcp.save(tmp_path, 8, model=model, optimizer=opt, scheduler=sched, loader=Loader(), keep=2)
    assert [p.name for p in dcp.complete_checkpoints(tmp_path)] == ["step_6", "step_8"]


def test_resolve_resume(tmp_path, capsys):
    assert dcp.resolve_resume("auto", tmp_path / "nothing") is None
    assert dcp.resolve_resume("none", tmp_path / "nothing") is None
    model, opt, sched = _setup(0)
    dcp.save(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loader=Loader())
    with pytest.raises(SystemExit, match="already holds checkpoints.*--resume auto"):
        dcp.resolve_resume("none", tmp_path)
    assert dcp.resolve_resume(str(tmp_path / "step_1"), "elsewhere") == tmp_path / "step_1"
    with pytest.raises(SystemExit, match="not a complete DCP checkpoint"):
        dcp.resolve_resume(str(tmp_path / "step_2"), tmp_path)


def test_metrics_lines_and_resume(tmp_path):
    out = []

    class Stream:
        def write(self, s):
            out.append(s)

        def flush(self):
            pass

    m = metrics.Metrics(tmp_path, steps=4, stream=Stream())
    m.start_at(0)
    for step in range(1, 5):
        m.log(step, loss=5.0 - step, grad_norm=0.5, lr=1e-3, tokens=1000)
    recs = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[0]["loss"] == 4.0
    assert all(json.dumps(r) for r in recs)
    text = "".join(out)
    assert "step 4/4 [####################] loss 1.0000" in text and "\r" not in text
    # resuming after step 2 keeps steps 1-2 and drops 3-4 (they are redone)
    m2 = metrics.Metrics(tmp_path, steps=4, stream=Stream())
    m2.start_at(2)
    m2.log(3, loss=9.0, grad_norm=0.1, lr=1e-3, tokens=10)
    recs = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 4.0), (2, 3.0), (3, 9.0)]
    assert recs[2]["elapsed"] >= recs[1]["elapsed"]
    # a fresh run starts a new file; other ranks never write
    metrics.Metrics(tmp_path, steps=4, rank=1, stream=Stream()).log(1, loss=0, grad_norm=0, lr=0, tokens=1)
    metrics.Metrics(tmp_path, steps=4, stream=Stream()).start_at(0)
    assert metrics.read_metrics(tmp_path / "metrics.jsonl") == []


def test_format_line():
    line = metrics.format_line(12, 40, loss=6.12345, grad_norm=0.871, lr=3e-3, tokens_per_s=12345.6, elapsed=3723)
    assert line == "step 12/40 [######..............] loss 6.1235 gnorm 0.871 lr 3.00e-03 tok/s 12,346 1:02:03"
