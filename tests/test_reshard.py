"""Checkpoints reshard across layouts: a DCP checkpoint saved by FSDP2 x TP on 4 ranks resumes in a
one-process script with no parallel code at all, with identical weights, and training continues
with the losses the 4-rank run got for the same steps; the HF export of the TP layout loads on one
process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch import REPO, torchrun
from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from planc.verify.scripts import reference_ir

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
TOL = 1e-5


def _metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _hf_weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_assets, small_corpus, python_run):
    tmp = tmp_path_factory.mktemp("reshard")
    checked = check_file(str(REPO / "plans/qwen3-tp.veo"), skip_files=True)
    assert checked.ok
    ir = lower(checked, "layout.py")
    layout, reference = tmp / "layout.py", tmp / "reference.py"
    layout.write_text(render_script(ir))
    reference.write_text(render_script(reference_ir(ir)))
    common = ["--data.stdlib.path", small_corpus, "--data.tokenizer", demo_assets["tokenizer"],
              "--data.max_len", "64", "--train.global_batch", "8", "--train.micro_batch", "2",
              "--train.warmup", "0"]
    a, b, c = tmp / "a", tmp / "b", tmp / "c"
    tp_layout = ["--mesh.dp_shard", "2", "--mesh.tp", "2"]
    # A: FSDP2 x TP on 4 ranks, 5 steps, checkpoints at steps 3 and 5, HF export at the end
    torchrun(layout, 4, [*common, *tp_layout, "--train.steps", "5", "--checkpoint.every", "3",
                         "--checkpoint.keep", "2", "--checkpoint.dir", a, "--train.output", a],
             log_dir=tmp / "logs_a")
    # B: one plain process resumes A's step 5 and exports at once (no step left to train)
    python_run(reference, [*common, "--resume", a / "step_5", "--train.steps", "5",
                           "--checkpoint.dir", b, "--train.output", b], log_dir=tmp / "logs_b")
    # C: one plain process resumes A's step 3 and trains steps 4-5, which A trained on 4 ranks
    python_run(reference, [*common, "--resume", a / "step_3", "--train.steps", "5", "--checkpoint.every", "5",
                           "--checkpoint.dir", c, "--train.output", c, "--checkpoint.export", "none"],
               log_dir=tmp / "logs_c")
    hf_a = {k: v.clone() for k, v in _hf_weights(a / "hf").items()}
    return {"a": a, "b": b, "c": c, "hf_a": hf_a}


def test_tp_checkpoint_loads_with_identical_weights_in_one_plain_process(runs):
    a, b = runs["hf_a"], _hf_weights(runs["b"] / "hf")
    assert a and set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_continues_with_the_same_losses_after_resharding(runs):
    four, one = _metrics(runs["a"]), _metrics(runs["c"])
    assert sorted(one) == [4, 5] and {4, 5} <= set(four)
    for step in (4, 5):
        for key in ("loss", "grad_norm"):
            rel = abs(four[step][key] - one[step][key]) / abs(four[step][key])
            assert rel <= TOL, (step, key, four[step][key], one[step][key])


def test_tp_export_loads_with_from_pretrained(runs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs["a"] / "hf")
    state = model.state_dict()
    for k, v in runs["hf_a"].items():
        assert torch.equal(state[k], v), k
