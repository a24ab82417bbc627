"""Vision-language models under the runtime's parallel layouts on 2 gloo processes, against one
process (fp32, 2 AdamW steps): FSDP2 with a rank whose micro-batch has no image (Qwen2.5-VL,
Qwen3-VL; and with the vision blocks frozen, the merger at its own rate), Ulysses SP=2 with images and video, EP=2 on Qwen3-VL-MoE; and sharded loading of HF
safetensors plus the export from shards. One launch: see tests/mp/vl_checks.py."""
import json

import pytest

from launch import REPO, torchrun

import vlfix

CHECKS = ["tiny-qwen2.5-vl.rank1_has_a_textonly_micro_batch", "tiny-qwen2.5-vl.fsdp2",
          "tiny-qwen3-vl.rank1_has_a_textonly_micro_batch", "tiny-qwen3-vl.fsdp2",
          "tiny-qwen3-vl.fsdp2_frozen_tower", "tiny-qwen3-vl.frozen_stay",
          "tiny-qwen2.5-vl.sp2", "tiny-qwen3-vl.sp2",
          "tiny-qwen3-vl-moe.experts_split", "tiny-qwen3-vl-moe.ep2",
          "tiny-qwen2.5-vl.sharded_load_exact", "tiny-qwen2.5-vl.export_reloads_exactly",
          "tiny-qwen3-vl-moe.sharded_load_exact", "tiny-qwen3-vl-moe.export_reloads_exactly"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("vl_checks")
    data = vlfix.make_data(work / "data")
    out = work / "results.json"
    torchrun(REPO / "tests/mp/vl_checks.py", 2, [out, work, data["dir"]], log_dir=work / "logs", timeout=900)
    return json.loads(out.read_text())


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_vl_layout(results, check):
    r = results.get(check)
    assert r is not None, f"check {check} did not run"
    assert r["ok"], r["detail"]
