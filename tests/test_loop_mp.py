"""Validation, LoRA and activation offloading on 2 gloo ranks against one process (one launch of
tests/mp/loop_checks.py; each rank computes the one-process reference itself)."""
from __future__ import annotations

import json

import pytest

from launch import REPO, torchrun

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
TOL = 1e-6  # fp32, relative: the layouts here match one process to ~6e-8


@pytest.fixture(scope="module")
def results(tmp_path_factory, small_corpus, demo_assets):
    tmp = tmp_path_factory.mktemp("loop_mp")
    out = tmp / "results.json"
    torchrun(REPO / "tests" / "mp" / "loop_checks.py", 2,
             [out, small_corpus, demo_assets["tokenizer"], tmp / "work"], log_dir=tmp / "logs")
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", ["greedy", "dynamic", "sp2"])
def test_validation_loss_equals_one_process(results, layout):
    v = results["validation"][layout]
    assert v["tokens"] == v["ref_tokens"] > 0  # the same global set, normalised by all its targets
    assert v["rel"] <= TOL, v
    assert v["again"] == v["layout"]  # a second pass sees the same batches


@pytest.mark.parametrize("layout", ["offload_fsdp2", "offload_tp2", "offload_sp2", "offload_ep2"])
def test_offload_changes_nothing(results, layout):
    r = results[layout]
    plain = r["plain"]
    for mode in ("offload", "checkpoint+offload"):
        assert r[mode]["losses"] == plain["losses"] and r[mode]["norms"] == plain["norms"], (mode, r)
        assert r[mode]["moved_bytes"] > 0
    assert plain["moved_bytes"] == 0
    assert r["checkpoint+offload"]["moved_bytes"] < r["offload"]["moved_bytes"]  # block inputs only


@pytest.mark.parametrize("layout", ["lora_fsdp2", "lora_sp2", "lora_ep2"])
def test_lora_layouts_train_like_one_process(results, layout):
    r = results[layout]
    assert r["loss_rel"] <= TOL and r["norm_rel"] <= TOL, r
    assert r["adapter_rel"] <= 1e-5, r  # the trained adapters themselves
    assert r["frozen_grads"] == 0 and r["trainable"] in (1664, 896)  # adapters only in the optimizer
    assert r["norms"][0] > 0  # the adapters do get gradients


def test_lora_checkpoint_resume_and_exports(results):
    r = results["lora_fsdp2"]
    assert r["checkpoint_frozen_keys"] == [] and r["checkpoint_adapter_keys"] == 12  # 6 layers x (A, B)
    assert r["resume_step"] == 3 and r["resume_max_diff"] == 0.0
    assert r["merged_logits_diff"] <= 1e-5 * max(1.0, r["logits_scale"])
    assert r["adapter_logits_diff"] <= 1e-5 * max(1.0, r["logits_scale"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(r["adapter_files"])
