"""bench/train_overhead.py and bench/hand_loop.py without launching anything: the hand loop reads the
demo's settings and follows the runtime's learning-rate schedule, reads from a generated script the loop
features it must do too, and the throughput arithmetic skips warm-up steps. (The full benchmark trains
for minutes; its parity columns check the rest when it runs.)"""
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


def test_each_feature_compiles_and_the_hand_loop_reads_what_the_script_does(tmp_path):
    """Every FEATURES entry hits plans/demo.veo; one plan with all three compiles, and the hand
    loop reads its LoRA targets, offloaded modules and validation from the generated script."""
    from hand_loop import script_features

    assert script_features(bench.DEMO) == {"lora": None, "offload": None, "validation": False}
    text = bench.variant_plan("plan", 0, None)
    for name, subs in bench.FEATURES.items():
        assert bench.variant_plan("plan", 0, None, name) != text, name
        for old, new in subs:
            text = text.replace(old, new)
    script = bench.compile_variant(text, tmp_path)
    found = script_features(script)
    assert found == {"lora": ["model.layers.*.self_attn.{q,k,v,o}_proj"], "offload": ["model.layers.*"],
                     "validation": True}
    s = bench.demo_settings(script)
    assert (s["validation.every"], s["lora.rank"], s["train.steps"]) == (10, 16, 40)


def test_loader_options_are_the_scripts():
    from hand_loop import loader_options

    s = bench.demo_settings()
    opts = loader_options(s, world=2)
    assert opts["grad_accum"] * s["train.micro_batch"] * 2 == s["train.global_batch"]
    assert "tokens" not in opts
    opts = loader_options({**s, "data.pack": "dynamic", "data.tokens": 1024, "train.micro_batch": 1}, world=1)
    assert (opts["tokens"], opts["grad_accum"]) == (1024, s["train.global_batch"])


def test_rel_diff_skips_steps_without_the_key():
    a = [{"val_loss": 2.0}, {}, {"val_loss": 1.1}]
    b = [{"val_loss": 2.0}, {}, {"val_loss": 1.0}]
    assert bench.max_rel_diff(a, b, "val_loss") == pytest.approx(0.1)
    assert bench.max_rel_diff([{}], [{}], "val_loss") is None
    with pytest.raises(SystemExit):
        bench.max_rel_diff([{"val_loss": 1.0}], [{}], "val_loss")
