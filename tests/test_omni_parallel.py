"""Omni thinkers under the runtime's parallel layouts on 2 gloo processes, against one process (fp32,
2 AdamW steps with clipping): FSDP2 on Qwen2.5-Omni with a rank whose micro-batches hold no audio,
its never-used audio_bos_eos_token through clipping and a DCP save + load; EP=2 on Qwen3-Omni-MoE;
Ulysses SP=2 on Qwen2.5-Omni.
One launch: see tests/mp/omni_checks.py."""
import json

import pytest

from launch import REPO, torchrun

import omnifix

CHECKS = ["tiny-qwen2.5-omni-thinker.rank1_has_no_audio", "tiny-qwen2.5-omni-thinker.fsdp2",
          "tiny-qwen2.5-omni-thinker.never_used_parameter_frozen", "tiny-qwen2.5-omni-thinker.dcp_round_trip",
          "tiny-qwen2.5-omni-thinker.dcp_resume_same_loss",
          "tiny-qwen3-omni-moe-thinker.experts_split", "tiny-qwen3-omni-moe-thinker.ep2",
          "tiny-qwen2.5-omni-thinker.sp2"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("omni_checks")
    data = omnifix.make_data(work / "data")
    out = work / "results.json"
    torchrun(REPO / "tests/mp/omni_checks.py", 2, [out, work, data["dir"]], log_dir=work / "logs", timeout=600)
    return json.loads(out.read_text())


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_omni_layout(results, check):
    r = results.get(check)
    assert r is not None, f"check {check} did not run"
    assert r["ok"], r["detail"]
