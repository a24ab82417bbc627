"""bench/vl_overhead.py and bench/vl_pipeline.py without launching or training anything: the hand loop
reads the VL demo's settings and per-part learning rates, follows the runtime's schedule and
parameter groups, the data time comes off the right clocks, and the packing figures count what the
collator was given. (The benchmarks themselves train for minutes; their loss column checks the rest.)"""
import importlib.util

import pytest
import torch

from launch import REPO
from runtime.optim import lr_factor


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


overhead = _load("vl_overhead")
pipeline = _load("vl_pipeline")


def test_reads_the_settings_and_lr_parts_of_the_generated_vl_demo():
    s = overhead.to.demo_settings(overhead.SCRIPT)
    for key in ("model.config", "model.attention", "data.photos.path", "data.tokenizer", "data.max_len",
                "data.pack", "data.tokens", "data.patches", "data.max_pixels", "train.global_batch",
                "train.micro_batch", "train.lr", "train.weight_decay", "train.betas", "train.eps",
                "train.schedule", "train.warmup", "train.clip", "train.seed", "mesh.dp_shard"):
        assert key in s, key
    assert overhead.lr_parts() == [("model.visual", 0.25)]  # plans/vl-demo.veo: lr "model.visual" scale = 0.25


@pytest.mark.parametrize("kind,steps,warmup,min_lr", [("constant", 10, 0, 0.0), ("constant", 10, 3, 0.0),
                                                      ("cosine", 13, 4, 0.1)])
def test_hand_schedule_is_the_runtime_schedule(kind, steps, warmup, min_lr):
    s = {"train.schedule": kind, "train.warmup": warmup, "train.min_lr": min_lr}
    for i in range(steps + 2):
        assert overhead.schedule_factor(i, s, steps) == pytest.approx(
            lr_factor(i, kind=kind, steps=steps, warmup=warmup, min_lr=min_lr), rel=1e-12)


def test_hand_param_groups_are_the_runtime_lr_groups():
    from torch import nn

    from runtime.parts import lr_groups

    # the VL models' module names: a vision tower (with a "model.visual"-prefixed sibling that is not
    # under it) and a language model, each with 2-D weights and 1-D norms/biases
    model = nn.Module()
    model.model = nn.ModuleDict({"visual": nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)),
                                 "visual_extra": nn.Linear(4, 2),
                                 "language_model": nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 4))})
    s = {"train.lr": 2e-3, "train.weight_decay": 0.1}
    ours = overhead.param_groups(model, s, [("model.visual", 0.25)])
    theirs = lr_groups(model, 2e-3, 0.1, [("model.visual", 0.25 * 2e-3)])

    def key(groups):
        return sorted((g["lr"], g["weight_decay"], sorted(id(p) for p in g["params"])) for g in groups)

    assert key(ours) == key(theirs)
    assert {g["lr"] for g in ours} == {2e-3, 0.25 * 2e-3}


def test_data_time_comes_off_both_clocks():
    records = [{"tokens": 10, "elapsed": 1.0 * k, "cpu": 0.5 * k} for k in range(1, 5)]
    fetches = [{"data_wall": 0.25, "data_cpu": 0.125}] * 4
    out = overhead.without_data(records, fetches)
    assert [r["step_elapsed"] for r in out] == [0.75, 1.5, 2.25, 3.0]
    assert [r["step_cpu"] for r in out] == [0.375, 0.75, 1.125, 1.5]
    hand = overhead.without_data(records, [])
    assert [r["step_elapsed"] for r in hand] == [r["elapsed"] for r in records]
    ratios = overhead.pair_ratios(out, hand, warmup=1)
    assert ratios["wall"] == pytest.approx(1.0) and ratios["cpu"] == pytest.approx(1.0)
    assert ratios["wall-data"] == pytest.approx(4 / 3) and ratios["cpu-data"] == pytest.approx(4 / 3)


class _Proc:
    image_id, video_id = 5, 6


class _Collator:
    proc = _Proc()

    def __call__(self, rows, length, pad):
        ids = torch.full((len(rows), length + 1), pad)  # one more slot, as a dummy image's token would add
        labels = torch.full_like(ids, -100)
        labels[0, :3] = 1
        return {"input_ids": ids, "labels": labels}


def test_counting_records_what_the_collator_was_given():
    import numpy as np

    counter = pipeline.Counting(_Collator())
    rows = [[(np.array([5, 5, 1, 2]), None), (np.array([3, 6]), None)], [(np.array([7, 8, 9]), None)]]
    counter(rows, 6, 0)
    assert counter.seen == [{"samples": 3, "tokens": 9, "vision": 3, "audio": 0, "targets": 3, "slots": 14}]
    _Collator.proc.audio_id = 7  # an Omni processor's audio placeholder
    try:
        counter(rows, 6, 0)
    finally:
        del _Collator.proc.audio_id
    assert counter.seen[-1]["audio"] == 1


def test_packing_line_shares_and_balance():
    s = {"data.tokens": 100}
    # two steps over 2 ranks: (slots, sample tokens, vision tokens, targets, audio tokens)
    steps = [[(100, 90, 10, 40, 9), (100, 80, 10, 20, 0)], [(100, 10, 0, 5, 0), (100, 0, 0, 0, 0)]]
    line = pipeline.packing_line("dynamic", steps, dp=2, grad_accum=1, s=s)
    assert "non-padding share  45.00% over the epoch,  85.00% without its last step" in line
    assert "(11.1% vision, 5.0% audio)" in line
    assert "token budget filled (without the last step):  85.00%" in line
    assert "mean 1.333, worst 1.333" in line and "last step 2.000" in line
