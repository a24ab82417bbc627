"""Training-loop runtime pieces on one process: validation loader and totals, metrics records,
epochs, profiling window, trackers, MFU counts, activation offloading, host memory.
(2-rank parity of validation, LoRA and offloading: tests/test_loop_mp.py.)"""
from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch

from conftest import TINY_LLAMA, TINY_QWEN3, write_config
from runtime import metrics
from runtime.data import Source, load_tokenizer
from runtime.data.epochs import epoch_steps, format_epochs
from runtime.validation import ValTotals, build_val_loader


@pytest.fixture(scope="module")
def tok(demo_assets):
    return load_tokenizer(demo_assets["tokenizer"])


@pytest.fixture(scope="module")
def src(small_corpus):
    return Source(name="stdlib", path=str(small_corpus), format="jsonl")


# ---------------------------------------------------------------- validation

def _shapes(loader):
    return [[(tuple(b["input_ids"].shape), int((b["labels"] != -100).sum())) for b in mbs] for mbs in loader]


def test_validation_loader_is_fixed_and_restarts(tok, src):
    vl = build_val_loader([src], tok, batches=3, max_len=64, pack="dynamic", tokens=128, micro_batch=1, grad_accum=4)
    first, second = _shapes(vl), _shapes(vl)
    assert len(first) == len(vl) == 3 and all(len(step) == 4 for step in first)
    assert first == second  # every pass sees the same batches
    ids = [b["input_ids"] for mbs in vl for b in mbs]
    assert all(torch.equal(a, b) for a, b in zip(ids, [b["input_ids"] for mbs in vl for b in mbs]))


def test_validation_shards_are_the_global_batch(tok, src):
    """dp=2 ranks' shares, side by side, are one process's micro-batches (global mode)."""
    one = build_val_loader([src], tok, batches=2, max_len=64, pack="greedy", micro_batch=2, grad_accum=4)
    ranks = [build_val_loader([src], tok, batches=2, max_len=64, pack="greedy", micro_batch=2, grad_accum=2,
                              dp_rank=r, dp_size=2) for r in range(2)]
    for whole, parts in zip(one, zip(*ranks)):
        joined = [b["input_ids"] for part in parts for b in part]
        assert all(torch.equal(a, b) for a, b in zip([b["input_ids"] for b in whole], joined))


def test_validation_whole_pass_and_refusals(tok, src):
    vl = build_val_loader([src], tok, batches=None, max_len=64, pack="greedy", micro_batch=4, grad_accum=2)
    docs = sum(int((b["position_ids"] == 0).sum()) for mbs in vl for b in mbs)
    assert len(vl) > 1 and docs > 0
    with pytest.raises(ValueError, match="map-style"):
        build_val_loader([Source(name="s", path=src.path, streaming=True)], tok, batches=1, max_len=64)
    with pytest.raises(TypeError, match="seed"):
        build_val_loader([src], tok, batches=1, max_len=64, seed=3)


def test_val_totals_normalise_by_all_target_tokens():
    t = ValTotals()
    labels_a = torch.tensor([[5, -100, 7]])
    labels_b = torch.tensor([[1, 2, 3, 4, -100]])
    t.add(torch.tensor(6.0), labels_a)   # 2 targets
    t.add(torch.tensor(10.0), labels_b)  # 4 targets
    r = t.result()
    assert r["val_loss"] == pytest.approx(16.0 / 6) and r["val_tokens"] == 6
    assert r["val_ppl"] == pytest.approx(math.exp(16.0 / 6))
    with pytest.raises(RuntimeError, match="no target"):
        ValTotals().result()


def test_metrics_merge_validation_into_the_step_and_resume(tmp_path):
    out = io.StringIO()
    m = metrics.Metrics(tmp_path, steps=4, stream=out)
    m.start_at(0)
    m.validation(0, val_loss=9.0, val_ppl=math.exp(9), val_tokens=10, val_time=0.1)  # before training
    for step in (1, 2):
        m.log(step, loss=8.0 - step, grad_norm=1.0, lr=1e-3, tokens=100)
    m.validation(2, val_loss=6.5, val_ppl=math.exp(6.5), val_tokens=10, val_time=0.2)
    m.log(3, loss=4.0, grad_norm=1.0, lr=1e-3, tokens=100)
    records = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # one record per step
    assert records[2]["loss"] == 6.0 and records[2]["val_loss"] == 6.5 and "val_loss" not in records[3]
    assert "validation loss 6.5000 ppl 665.1" in out.getvalue()
    m2 = metrics.Metrics(tmp_path, steps=4, stream=io.StringIO())
    m2.start_at(2)  # resume after step 2: its validation stays, step 3 goes
    kept = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in kept] == [0, 1, 2] and kept[2]["val_ppl"] == pytest.approx(math.exp(6.5))
    m3 = metrics.Metrics(tmp_path, steps=4, stream=io.StringIO())
    m3.start_at(1)  # resume after step 1 and validate it again: still one record for step 1
    m3.validation(1, val_loss=7.0, val_ppl=math.exp(7), val_tokens=10, val_time=0.0)
    kept = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in kept] == [0, 1] and kept[1]["loss"] == 7.0 and kept[1]["val_loss"] == 7.0


def test_metrics_mfu_field_only_when_measured(tmp_path):
    class Meter:
        def __init__(self, value):
            self.value = value

        def utilization(self, tokens, seconds):
            return self.value

    out = io.StringIO()
    m = metrics.Metrics(tmp_path, steps=2, stream=out, mfu=Meter(0.412))
    m.log(1, loss=1.0, grad_norm=1.0, lr=1e-3, tokens=10, compute_tokens=12)
    m2 = metrics.Metrics(tmp_path / "b", steps=2, stream=out, mfu=Meter(None))
    m2.log(1, loss=1.0, grad_norm=1.0, lr=1e-3, tokens=10, compute_tokens=12)
    assert metrics.read_metrics(tmp_path / "metrics.jsonl")[0]["mfu"] == 0.412
    assert "mfu" not in metrics.read_metrics(tmp_path / "b" / "metrics.jsonl")[0]
    assert "mfu 41.2%" in out.getvalue().splitlines()[0] and "mfu" not in out.getvalue().splitlines()[1]


# ---------------------------------------------------------------- epochs

def test_epoch_steps_count_the_planner(tok, src):
    dyn = epoch_steps([src], tok, epochs=2, max_len=64, pack="dynamic", tokens=256, global_batch=4)
    assert dyn.steps == sum(dyn.per_epoch) and len(dyn.per_epoch) == 2
    assert dyn.per_epoch[0] >= math.ceil(dyn.tokens / dyn.step_capacity)  # the bound a full step gives
    # running the real loader for that many steps ends exactly one epoch
    from runtime.data import build_loader
    loader = build_loader([src], tok, max_len=64, pack="dynamic", tokens=256, grad_accum=4, log=lambda m: None)
    it = iter(loader)
    for _ in range(dyn.per_epoch[0] - 1):
        next(it)
    assert loader.epoch == 0
    next(it)
    assert loader.epoch == 1
    greedy = epoch_steps([src], tok, epochs=1, max_len=64, pack="greedy", global_batch=8, micro_batch=2)
    assert "epochs = 1: 1 x" in format_epochs(greedy) and "a step holds <= 512 tokens" in format_epochs(greedy)
    with pytest.raises(ValueError, match="map-style"):
        epoch_steps([Source(name="s", path=src.path, streaming=True)], tok, epochs=1, max_len=64, pack="greedy",
                    global_batch=8)


# ---------------------------------------------------------------- profiling

def test_profiler_traces_the_window_only(tmp_path):
    from runtime.profiling import Profiler

    lin = torch.nn.Linear(16, 16)
    prof = Profiler(tmp_path, rank=3, first=3, steps=2, start=0, enabled=True)
    seen = []
    for step in range(1, 7):
        with torch.profiler.record_function(f"train_step_{step}"):
            lin(torch.randn(4, 16)).sum().backward()
        prof.step()
        seen.append((tmp_path / "trace_rank3.json").exists())
    prof.close()
    assert seen == [False, False, False, True, True, True]  # written when the window ends
    events = json.loads((tmp_path / "trace_rank3.json").read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"ProfilerStep#3", "ProfilerStep#4", "train_step_3", "train_step_4"} <= names
    assert not names & {"train_step_1", "train_step_2", "train_step_5", "ProfilerStep#5"}
    off = Profiler(tmp_path / "off", enabled=False)
    off.step()
    off.close()
    late = Profiler(tmp_path / "late", first=3, steps=2, start=10, enabled=True)  # resumed past the window
    assert not off.enabled and not late.enabled and not (tmp_path / "off").exists()


# ---------------------------------------------------------------- trackers

def test_tensorboard_sink_gets_the_metrics_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runtime import trackers

    sinks = trackers.build(["tensorboard"], tmp_path, rank=0, run_name="t", config={"train.lr": 1e-3})
    m = metrics.Metrics(tmp_path, steps=3, stream=io.StringIO(), sinks=sinks)
    m.start_at(0)
    for step in (1, 2, 3):
        m.log(step, loss=5.0 - step, grad_norm=0.5, lr=1e-3, tokens=64)
    m.validation(3, val_loss=1.5, val_ppl=math.exp(1.5), val_tokens=8, val_time=0.0)
    m.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [(3, 1.5)]
    assert trackers.build(["tensorboard"], tmp_path, rank=1, run_name="t") == []
    with pytest.raises(SystemExit, match="unknown tracker"):
        trackers.build(["mlflow"], tmp_path, rank=0, run_name="t")


def test_wandb_sink_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from runtime import trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = trackers.build(["wandb"], tmp_path, rank=0, run_name="t", config={"a": 1})
    m = metrics.Metrics(tmp_path, steps=2, stream=io.StringIO(), sinks=sinks)
    m.start_at(0)
    m.log(1, loss=3.0, grad_norm=0.5, lr=1e-3, tokens=64)
    m.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


# ---------------------------------------------------------------- MFU

def _meta(directory, config):
    from runtime import model as models
    return models.build_meta(write_config(directory, config))


def test_flops_per_token_dense_by_hand(tmp_path):
    from runtime.mfu import MFU, flops_per_token

    h, i, q, kv, v, layers = 32, 64, 4 * 8, 2 * 8, 4096, 2
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i  # q, k, v, o; gate, up, down
    n = layers * per_layer + v * h                       # + lm_head; embeddings and norms excluded
    f = flops_per_token(_meta(tmp_path / "llama", TINY_LLAMA), seq_len=64)
    assert f.active_params == n == 149_504
    assert f.dense == 6 * n and f.attention == 12 * layers * 4 * 8 * 64 and f.total == 6 * n + 49_152
    tied = flops_per_token(_meta(tmp_path / "qwen3", TINY_QWEN3), seq_len=64)
    assert tied.active_params == n  # the tied head's multiply counted once
    meter = MFU(_meta(tmp_path / "llama", TINY_LLAMA), seq_len=64, device=torch.device("cpu"), dtype=torch.float32)
    assert meter.utilization(1000, 1.0) is None and "not measured on cpu" in meter.describe()
    given = MFU(_meta(tmp_path / "llama", TINY_LLAMA), seq_len=64, device=torch.device("cpu"), dtype=torch.float32,
                peak=1e-6, tp=2)  # 1 MFLOP/s peak
    assert given.utilization(100, 2.0) == pytest.approx(100 * f.total / 2 / 2.0 / 1e6)


def test_flops_per_token_moe_counts_active_experts(tmp_path):
    from runtime.mfu import flops_per_token

    cfg = {**TINY_QWEN3, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
           "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
           "tie_word_embeddings": False}
    h, q, kv, e, k, im = 32, 32, 16, 8, 2, 16
    experts = e * (2 * im * h) + e * (h * im)          # gate_up (E, 2I, H) + down (E, H, I)
    per_layer = (h * q + 2 * h * kv + q * h) + experts * k // e + e * h  # attention + active experts + router
    f = flops_per_token(_meta(tmp_path / "moe", cfg), seq_len=128)
    assert f.active_params == 2 * per_layer + 4096 * h
    assert f.attention == 12 * 2 * 4 * 8 * 128


def test_peak_table_lookup(monkeypatch):
    from runtime import mfu

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert mfu.peak_tflops(torch.device("cuda", 0), torch.bfloat16)[0] == 989.4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert mfu.peak_tflops(torch.device("cuda", 0), torch.bfloat16)[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    peak, why = mfu.peak_tflops(torch.device("cuda", 0), torch.bfloat16)
    assert peak is None and "not in" in why
    assert mfu.peak_tflops(torch.device("cuda", 0), torch.bfloat16, override=500.0)[0] == 500.0


# ---------------------------------------------------------------- activation offloading

@pytest.mark.parametrize("order", ["offload", "checkpoint+offload", "offload+checkpoint"])
def test_offload_keeps_losses_and_gradients(tiny_qwen3, order):
    from transformers import AutoModelForCausalLM

    from runtime.model import load_config
    from runtime.parallel.checkpointing import apply_activation_checkpointing
    from runtime.parallel.offload import OffloadStats, apply_activation_offload

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(load_config(tiny_qwen3))
    x = torch.randint(3, 4096, (2, 48), generator=torch.Generator().manual_seed(1))

    def run(model):
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(copy.deepcopy(base))
    model, stats = copy.deepcopy(base), OffloadStats()
    for step in order.split("+"):
        if step == "offload":
            apply_activation_offload(model, ["model.layers.*"], min_bytes=0, stats=stats)
        else:
            apply_activation_checkpointing(model, ["model.layers.*"])
    loss, grads = run(model)
    assert torch.equal(loss, ref_loss) and all(torch.equal(grads[n], g) for n, g in ref_grads.items())
    block_input = 2 * 48 * 32 * 4  # (batch, seq, hidden) fp32: what checkpointing keeps per block
    if "checkpoint" in order:
        assert stats.moved_bytes == 2 * block_input  # only each checkpointed block's input
    else:
        assert stats.moved_bytes > 10 * block_input and stats.params_skipped > 0  # weights stay put


_FAULTS = """
import resource, sys, torch
from runtime.host_memory import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("skip"); raise SystemExit
sizes = (5 << 20, 9 << 20, 12 << 20, 7 << 20, 9 << 20)  # 20-48 MiB "activations", freed each time
for step in range(8):  # steps 0-3: the heap settles (glibc takes ~3 here); steps 4-7 measured
    if step == 4:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for numel in sizes:
        torch.empty(numel).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("mode", ["default", "keep"])
def test_host_memory_stops_page_faults(mode):
    """glibc maps blocks over 32 MiB fresh at each allocation (page faults every time) unless
    keep_freed_memory is on; then freed blocks are reused. Each mode in a fresh process."""
    import subprocess
    import sys

    from launch import REPO

    proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "skip":
        pytest.skip("not glibc")
    faults = int(proc.stdout.split()[-1])
    if mode == "default":
        assert faults > 4 * 20_000, faults  # per step, the blocks over 32 MiB are mapped and faulted in again
    else:
        assert faults < 200, faults


def test_materialize_keeps_tied_embeddings_on_one_process(tiny_qwen3, tmp_path):
    """One process skips FSDP, and `to_empty` alone unties the head (it would stay uninitialised
    with safetensors, and train apart from the embedding): materialize ties it again."""
    from transformers import AutoModelForCausalLM

    from runtime import model as models

    torch.manual_seed(5)
    src = AutoModelForCausalLM.from_config(models.load_config(tiny_qwen3))
    src.save_pretrained(tmp_path / "hf")
    for weights in (None, tmp_path / "hf"):
        model = models.build_meta(tmp_path / "hf")
        models.materialize(model, torch.device("cpu"), seed=0, weights=weights)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, src.lm_head.weight)
