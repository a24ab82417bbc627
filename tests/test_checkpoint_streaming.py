"""Checkpoints of a streaming source: each rank's loader state saved and restored per rank.

A plan like the demo but with `streaming = true` is compiled and trained on 2 processes: 4 steps
uninterrupted (checkpoints at 2 and 4), then a relaunch from the step-2 checkpoint to step 4 whose
steps must be bitwise the same (loss, grad norm, lr, target tokens). In this process: that checkpoint is refused
on another world size or by a loader of map-style sources (before any weight is read), a per-rank
state saved for another data-parallel layout is refused by the loader, a missing rank file is an
error, and checkpoints from before the loader scope was recorded still load.
"""
import pytest
import torch

from launch import torchrun
from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from runtime import optim
from runtime.checkpoint import dcp
from runtime.metrics import read_metrics

pytestmark = pytest.mark.multiproc

PLAN = '''plan "stream"
model {{ config = "{config}" }}
mesh {{ dp_shard = 2  device = cpu }}
parallelize {{ fsdp "model.layers.*" }}
data {{
  source "stdlib" {{ path = "{corpus}"  format = jsonl  streaming = true }}
  tokenizer = "{tokenizer}"
  max_len = 64
  shuffle_buffer = 64
}}
train {{
  steps = 4  global_batch = 8  micro_batch = 2
  optimizer = adamw {{ lr = 3e-3  weight_decay = 0.1 }}
  schedule = cosine {{ warmup = 2 }}
}}
checkpoint {{ dir = "out/stream"  every = 2  export = none }}
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_assets, small_corpus, tiny_llama):
    d = tmp_path_factory.mktemp("streaming")
    plan = d / "stream.veo"
    plan.write_text(PLAN.format(config=tiny_llama, corpus=small_corpus, tokenizer=demo_assets["tokenizer"]))
    checked = check_file(str(plan))
    assert checked.ok, [str(x) for x in checked.diagnostics]
    script = d / "stream.py"
    script.write_text(render_script(lower(checked, str(script))))
    assert "streaming=cfg.data.stdlib.streaming" in script.read_text()

    # warmup = 2: steps 1-2 have the same lr whether the run is 2 or 4 steps long
    full = d / "full"
    torchrun(script, 2, ["--checkpoint.dir", full, "--checkpoint.keep", "2"], log_dir=d / "logs_full")
    saved = sorted(p.name for p in (full / "step_2" / "loader").iterdir())
    # a relaunch from the step-2 checkpoint (as after a crash there) trains steps 3-4 again
    resumed = d / "resumed"
    torchrun(script, 2, ["--checkpoint.dir", resumed, "--resume", full / "step_2"], log_dir=d / "logs_resume")
    return {"full": full, "resumed": resumed, "saved": saved, "logs": d / "logs_resume"}


def test_resume_of_streaming_source_continues_exactly(runs):
    full = read_metrics(runs["full"] / "metrics.jsonl")
    got = read_metrics(runs["resumed"] / "metrics.jsonl")
    assert runs["saved"] == ["rank_0.pt", "rank_1.pt"]
    assert [r["step"] for r in full] == [1, 2, 3, 4] and [r["step"] for r in got] == [3, 4]
    for a, b in zip(got, full[2:]):  # same documents on each rank, weights, optimizer: bitwise equal
        assert (a["loss"], a["grad_norm"], a["lr"], a["tokens"]) == \
            (b["loss"], b["grad_norm"], b["lr"], b["tokens"]), a["step"]
    assert full[-1]["loss"] < full[0]["loss"]
    text = "".join(p.read_text() for p in runs["logs"].rglob("*.log"))
    assert "rank share 0/2" in text  # local mode: each rank reads its own share
    assert "step_2 after step 2" in text


class _Loader:
    def __init__(self, is_global):
        self.state_is_global = is_global

    def load_state_dict(self, sd):  # pragma: no cover - must not be reached
        raise AssertionError("the loader state was loaded despite the mismatch")


class _Unloadable:
    """Stands in for model/optimizer/scheduler: touching them means the refusal came too late."""


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("is_global,message", [
    (False, "holds the data-loader states of 2 ranks .* resumes only on 2 processes .* not on 1"),
    (True, "holds per-rank data-loader states .* sources are all map-style"),
])
def test_per_rank_state_refused_on_another_layout(runs, is_global, message):
    step = runs["full"] / "step_2"
    with pytest.raises(SystemExit, match=message):
        dcp.load(step, model=_Unloadable(), optimizer=_Unloadable(), scheduler=_Unloadable(),
                 loader=_Loader(is_global))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_per_rank_state_round_trip_and_incomplete_checkpoint(tmp_path):
    step = tmp_path / "step_1"
    model = torch.nn.Linear(2, 2)
    opt = optim.build_optimizer(model, lr=1e-2)
    sched = optim.build_schedule(opt, kind="constant", steps=2)

    class Loader:  # a streaming loader's interface: its state is this rank's own
        state_is_global = False
        sd = None

        def state_dict(self):
            return {"rank": "mine", "order": [3, 1, 2]}

        def load_state_dict(self, sd):
            self.sd = sd

    dcp.save(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loader=Loader())
    assert (step / "loader" / "rank_0.pt").is_file()
    back = Loader()
    assert dcp.load(step, model=model, optimizer=opt, scheduler=sched, loader=back) == 1
    assert back.sd == {"rank": "mine", "order": [3, 1, 2]}
    (step / "loader" / "rank_0.pt").unlink()
    with pytest.raises(SystemExit, match="lacks loader/rank_0.pt"):
        dcp.load(step, model=model, optimizer=opt, scheduler=sched, loader=Loader())


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_same_world_other_dp_layout_refused(tmp_path, demo_assets, small_corpus):
    """World 1 both times, but the state was dp rank 0 of 2 (as with tp = 2 beside dp): the
    loader's own layout check, reported as a clear exit naming the checkpoint."""
    from runtime.data import Source, build_loader
    src = [Source(name="s", path=str(small_corpus), format="jsonl", streaming=True)]

    def loader(dp_size):
        return build_loader(src, demo_assets["tokenizer"], max_len=32, micro_batch=1, dp_rank=0,
                            dp_size=dp_size, shuffle_buffer=8, log=lambda m: None)

    model = torch.nn.Linear(2, 2)
    opt = optim.build_optimizer(model, lr=1e-2)
    sched = optim.build_schedule(opt, kind="constant", steps=2)
    saved = loader(2)
    next(iter(saved))
    dcp.save(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loader=saved)
    same = loader(2)
    dcp.load(tmp_path / "step_1", model=model, optimizer=opt, scheduler=sched, loader=same)
    assert next(iter(same))[0]["input_ids"].tolist() == next(iter(saved))[0]["input_ids"].tolist()
    with pytest.raises(SystemExit, match=r"cannot resume the data loader from .*step_1: .*local rank 0 of 2"):
        dcp.load(tmp_path / "step_1", model=model, optimizer=opt, scheduler=sched, loader=loader(1))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoint_without_loader_scope_loads_as_global(tmp_path):
    """Checkpoints written before the scope was recorded (one global loader blob) still resume."""
    import torch.distributed.checkpoint as tdcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = torch.nn.Linear(2, 2)
    opt = optim.build_optimizer(model, lr=1e-2)
    sched = optim.build_schedule(opt, kind="constant", steps=2)
    model_sd, optim_sd = get_state_dict(model, opt)
    old = {"model": model_sd, "optim": optim_sd,
           "train": {"step": 5, "scheduler": dcp._blob(sched.state_dict()), "loader": dcp._blob({"pos": 9})}}
    tdcp.save(old, checkpoint_id=str(tmp_path / "step_5"))

    class Loader:
        sd = None

        def load_state_dict(self, sd):
            self.sd = sd

    back = Loader()
    assert dcp.load(tmp_path / "step_5", model=model, optimizer=opt, scheduler=sched, loader=back) == 5
    assert back.sd == {"pos": 9}
