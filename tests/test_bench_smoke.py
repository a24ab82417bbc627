"""bench/train_overhead.py without launching anything: the hand loop reads the demo's settings and
follows the runtime's learning-rate schedule, and the throughput arithmetic skips warm-up steps.
(The full benchmark trains for minutes; its parity column checks the rest when it runs.)"""
import importlib.util

import pytest

from launch import REPO
from runtime.optim import lr_factor

spec = importlib.util.spec_from_file_location("train_overhead", REPO / "bench" / "train_overhead.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_reads_the_settings_of_the_generated_demo():
    s = bench.demo_settings()
    for key in ("model.config", "data.stdlib.path", "data.tokenizer", "data.max_len", "train.global_batch",
                "train.micro_batch", "train.lr", "train.weight_decay", "train.betas", "train.eps",
                "train.warmup", "train.min_lr", "train.clip", "train.seed"):
        assert key in s, key
    assert s["train.schedule"] == "cosine"  # the hand loop writes out the cosine schedule only


@pytest.mark.parametrize("steps,warmup,min_lr", [(13, 4, 0.1), (20, 0, 0.0), (5, 5, 0.5)])
def test_hand_schedule_is_the_runtime_schedule(steps, warmup, min_lr):
    for i in range(steps + 2):
        assert bench.cosine_factor(i, steps, warmup, min_lr) == pytest.approx(
            lr_factor(i, kind="cosine", steps=steps, warmup=warmup, min_lr=min_lr), rel=1e-12)


def test_throughput_times_only_the_steps_after_warmup():
    # a slow first step (warm-up) and steady 2 s steps of 100 tokens afterwards
    records = [{"tokens": 100, "elapsed": 10.0, "cpu": 5.0}]
    for i in range(1, 5):
        records.append({"tokens": 100, "elapsed": 10.0 + 2 * i, "cpu": 5.0 + 1 * i})
    assert bench.throughput(records, warmup=1) == pytest.approx(50.0)
    assert bench.throughput(records, warmup=1, clock="cpu") == pytest.approx(100.0)
    assert bench.max_rel_diff([{"loss": 1.0}, {"loss": 2.2}], [{"loss": 1.0}, {"loss": 2.0}], "loss") == \
        pytest.approx(0.1)
