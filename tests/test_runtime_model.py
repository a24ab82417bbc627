"""runtime.model / fsdp / checkpointing / export under FSDP2 on 2 gloo processes, one launch:
see tests/mp/model_checks.py for the checks, made against one-process references."""
import json

import pytest

from launch import REPO, torchrun

CHECKS = ["init_equals_from_config", "rotary_buffers_rebuilt", "loss_parity", "grad_parity",
          "grad_norm_parity", "replicate_grad_parity", "offload_grad_parity", "foreach_choice", "load_safetensors_exact", "export_reloads_exactly",
          "export_has_no_leftovers"]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_llama, tiny_qwen3):
    work = tmp_path_factory.mktemp("model_checks")
    out = work / "results.json"
    torchrun(REPO / "tests/mp/model_checks.py", 2, [out, work, tiny_llama, tiny_qwen3], log_dir=work / "logs")
    return json.loads(out.read_text())


@pytest.mark.multiproc
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("check", CHECKS)
def test_model_check(results, family, check):
    r = results.get(f"{family}.{check}")
    assert r is not None, f"check {family}.{check} did not run"
    assert r["ok"], r["detail"]


@pytest.mark.multiproc
def test_tied_embeddings_stay_tied(results):
    assert results["qwen3.tied_head_stays_tied"]["ok"]
