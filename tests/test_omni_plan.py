"""Omni plans: a Qwen2.5-Omni thinker plan checks (audio tokens known to the tokenizer, records with
audio rendered as training renders them) and compiles to the VL script path with the Omni processor;
the `vl-audio` rule's located errors."""
import json

import pytest

from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower

from test_vl_plan import REPO, errors, plan_text

import omnifix

OMNI_MEDIA = ("media { min_pixels = 784  max_pixels = 9216  video_min_pixels = 784  video_max_pixels = 4096  "
              "video_max_frames = 8  audio_max_seconds = 4.0 }")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = omnifix.make_data(tmp_path_factory.mktemp("omni_plan") / "data")
    return {**d, "chat": d["chat"]}


def omni_plan(data, **kw):
    rules = ('fsdp "model.language_model.layers.*" "model.visual.blocks.*" "model.audio_tower.layers.*"')
    return plan_text(data, model=kw.pop("model", "tiny-qwen2.5-omni-thinker"), rules=rules,
                     media=kw.pop("media", OMNI_MEDIA), **kw)


def check(tmp_path, text):
    path = tmp_path / "p.veo"
    path.write_text(text)
    return check_file(str(path)), path


def test_an_omni_plan_checks_and_compiles(tmp_path, data):
    checked, path = check(tmp_path, omni_plan(data))
    assert not errors(checked), errors(checked)
    assert not errors(checked, "warning"), errors(checked, "warning")
    script = render_script(lower(checked, "generated/op.py"))
    assert "build_processor(" in script and "audio_max_seconds=cfg.data.audio_max_seconds" in script
    assert "audio_frames" not in script  # no budget written, none lowered


def test_the_audio_frame_budget_reaches_the_loader(tmp_path, data):
    checked, _ = check(tmp_path, omni_plan(data, pack="dynamic { tokens = 512  patches = 256  audio_frames = 400 }"))
    assert not errors(checked) and not errors(checked, "warning"), errors(checked) + errors(checked, "warning")
    script = render_script(lower(checked, "generated/op.py"))
    assert "audio_frames=cfg.data.audio_frames" in script.split("build_vl_loader(", 1)[1], script


@pytest.mark.parametrize("edit,rule,words,at", [
    ({"model": "tiny-qwen2.5-vl", "media": "media { audio_rate = 16000 }"}, "vl-audio", "has no audio tower",
     "audio_rate"),
    ({"media": "media { audio_max_seconds = 30.0 }"}, "vl-audio", "audio tokens, and a row holds max_len = 256",
     "audio_max_seconds"),
    ({"model": "tiny-qwen2.5-vl", "media": None, "pack": "dynamic { tokens = 512  audio_frames = 400 }"}, "vl-audio",
     "has no audio tower", "audio_frames"),
    ({"pack": "dynamic { tokens = 512  audio_frames = 100 }"}, "vl-audio", "over the audio-frame budget (100)",
     "audio_frames"),
])
def test_audio_rules_are_located(tmp_path, data, edit, rule, words, at):
    checked, path = check(tmp_path, omni_plan(data, **edit))
    found = [d for d in checked.diagnostics if d.rule == rule]
    assert found and words in found[0].message, errors(checked)
    line = path.read_text().splitlines()[found[0].span.line - 1]
    assert at in line[found[0].span.col - 1:], line


def test_tokenizer_without_audio_tokens_is_refused(tmp_path, data):
    import vlfix

    vl = vlfix.make_data(tmp_path / "vl")
    text = omni_plan(data).replace(json.dumps(str(data["tokenizer"])), json.dumps(str(vl["tokenizer"])))
    checked, _ = check(tmp_path, text)
    msgs = [m for _, m, _ in errors(checked)]
    assert any("no special token for the model config's audio_token_id 9" in m for m in msgs), msgs
    assert any("model's own tokenizer" in h for _, m, h in errors(checked) if "special token" in m)


def _verify(tmp_path, text, steps):
    import subprocess
    import sys

    path = tmp_path / "p.veo"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "planc", "verify", str(path), "--dtype", "fp64", "--steps", str(steps)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_proves_fsdp2_on_qwen2_5_omni(tmp_path, data):
    """`planc verify` of a Qwen2.5-Omni thinker plan (audio, images; FSDP2 over the language model, the
    vision blocks and the audio tower's layers), with an HF export: fp64 verdict and the export check."""
    out = _verify(tmp_path, omni_plan(data) + f'checkpoint {{ dir = "{tmp_path}/ck"  every = 2 }}\n', 2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK: vlp" in out.stdout and "HF export (fp64): loads" in out.stdout, out.stdout[-2000:]


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_proves_expert_parallel_qwen3_omni_moe(tmp_path, data):
    """`planc verify` of a Qwen3-Omni-MoE thinker plan with `ep plan = model` over FSDP2 x EP 2: fp64 verdict."""
    text = omni_plan(data, model="tiny-qwen3-omni-moe-thinker", mesh="dp_shard = 2  ep = 2").replace(
        'fsdp "model.language_model.layers.*"', 'ep plan = model\n  fsdp "model.language_model.layers.*"')
    out = _verify(tmp_path, text, 2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "EP=2" in out.stdout and "OK: vlp" in out.stdout, out.stdout[-2000:]


def test_dry_run_counts_the_audio_tower_and_the_never_used_parameter():
    """The estimate's shards (audio tower included; the never-used parameter without gradient or
    optimizer state) equal a dry run's real ranks."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "planc", "check", "plans/omni-demo.veo", "--world", "2", "--dry-run",
                          "--skip-files"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "every rank's shards equal the estimate" in out.stdout and "model.audio_tower.layers" in out.stdout
