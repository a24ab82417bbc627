"""Vision-language plans: `planc check` knows the VL model's parts, its media settings and its data;
`planc compile` writes the processor, the VL loader, Ulysses on the language model, per-part rates
and freezing; the generated script trains (and `planc verify` proves a layout against one process)."""
import dataclasses
import json

import pytest

import vlfix
from launch import REPO, torchrun
from planc.checks.vision import MEDIA_KEYS
from planc.emit import render_script
from planc.frontend import check_file, check_plan
from planc.lower import lower
from runtime.data.multimodal.media import MediaSettings
from runtime.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return vlfix.make_data(tmp_path_factory.mktemp("vl_plan") / "data")


def plan_text(data, model="tiny-qwen2.5-vl", mesh="dp_shard = 2", rules=None, data_extra="", train_extra="",
              pack="dynamic { tokens = 512  patches = 256 }", media=None, source=None) -> str:
    rules = rules if rules is not None else ('fsdp "model.language_model.layers.*" "model.visual.blocks.*"\n'
                                             '  checkpoint "model.language_model.layers.*"')
    media = media if media is not None else ("media { min_pixels = 784  max_pixels = 9216  video_min_pixels = 784  "
                                              "video_max_pixels = 4096  video_fps = 4.0  video_min_frames = 2  "
                                              "video_max_frames = 8 }")
    source = source or f'source "chat" {{ path = {json.dumps(str(data["chat"]))}  kind = sft }}'
    return f"""plan "vlp"
model {{ config = "{REPO}/plans/models/{model}"  dtype = fp32  attention = sdpa }}
mesh {{ {mesh}  device = cpu }}
parallelize {{
  {rules}
}}
data {{
  {source}
  tokenizer = {json.dumps(str(data["tokenizer"]))}
  max_len = 256
  pack = {pack}
  {media}
  {data_extra}
}}
train {{
  steps = 4  global_batch = 4  micro_batch = 1
  optimizer = adamw {{ lr = 2e-3 }}
  {train_extra}
}}
"""


def check(tmp_path, text):
    path = tmp_path / "p.veo"
    path.write_text(text)
    return check_file(str(path)), path


def errors(checked, severity="error"):
    return [(d.rule, d.message, d.help) for d in checked.diagnostics if d.severity == severity]


def test_media_statement_is_the_runtime_settings():
    """Each `media` key is a MediaSettings field (patch and merge sizes come from the model)."""
    from runtime.data.multimodal.audio import AudioSettings
    from runtime.data.multimodal.build import AUDIO_KEYS, OMNI_KEYS

    audio = {f.name for f in dataclasses.fields(AudioSettings)}
    assert set(AUDIO_KEYS.values()) == audio - {"mel_bins"}  # mel bins come from the audio config
    fields = {f.name for f in dataclasses.fields(MediaSettings)}
    assert set(MEDIA_KEYS) - set(OMNI_KEYS) <= fields
    assert fields - (set(MEDIA_KEYS) - set(OMNI_KEYS)) == {"patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"}


@pytest.mark.parametrize("model", sorted(vlfix.CONFIGS))
def test_every_vl_family_checks_and_compiles(tmp_path, data, model):
    checked, path = check(tmp_path, plan_text(data, model=model, train_extra='lr "model.visual" scale = 0.1'))
    assert checked.ok, errors(checked)
    text = render_script(lower(checked, "generated/vlp.py"))
    compile(text, "vlp.py", "exec")
    for needle in ("build_processor(cfg.data.tokenizer, model.config", "build_vl_loader(sources, processor",
                   "model(**model_inputs(batch)", "patches=cfg.data.patches", 'parts=[',
                   '("model.visual", 0.1 * cfg.train.lr)', "max_pixels=cfg.data.max_pixels"):
        assert needle in text, needle
    for absent in ("load_tokenizer", "build_loader(", "slice_for_sp", "apply_ulysses"):
        assert absent not in text, absent


def test_ulysses_goes_to_the_language_model(tmp_path, data):
    rules = ('sp ulysses "model.language_model.layers.*.self_attn"\n'
             '  fsdp "model.language_model.layers.*" "model.visual.blocks.*"')
    checked, _ = check(tmp_path, plan_text(data, mesh="sp = 2", rules=rules))
    assert checked.ok, errors(checked)
    text = render_script(lower(checked, "generated/vlp.py"))
    assert "apply_ulysses_vl(model, mesh.sp, expand(model, " in text
    assert "slice_labels(b, mesh.sp.get_local_rank(), cfg.mesh.sp)" in text
    assert "pad_to_multiple_of=cfg.mesh.sp" in text
    # the vision tower keeps its own attention: naming it is refused where it is written
    bad = rules.replace('"model.language_model.layers.*.self_attn"', '"model.visual.blocks.*.attn"')
    checked, _ = check(tmp_path, plan_text(data, mesh="sp = 2", rules=bad))
    assert ("sp-cover" in {e[0] for e in errors(checked)}), errors(checked)


def test_a_text_glob_is_pointed_at_the_language_model(tmp_path, data):
    checked, _ = check(tmp_path, plan_text(data, rules='fsdp "model.layers.*"'))
    (rule, message, hint), = errors(checked)
    assert rule == "glob-unmatched" and "'model.language_model.layers.*'" in hint, hint


# each vl-* rule -> the test here that breaks a plan on it (tests/test_rules.py checks none is missing)
VL_CASES = {
    "vl-media": "test_vl_rules_are_located", "vl-fits": "test_vl_rules_are_located",
    "vl-chat-template": "test_vl_rules_are_located", "vl-source": "test_vl_rules_are_located",
    "vl-records": "test_a_bad_record_is_reported_with_its_source_and_line",
    "vl-settings": "test_a_text_model_refuses_media_settings", "vl-text-only": "test_text_only_paths_are_refused",
    "vl-audio": "tests/test_omni_plan.py::test_audio_rules_are_located",
}


@pytest.mark.parametrize("edit,rule,words", [
    ({"media": "media { min_pixels = 9216  max_pixels = 784 }"}, "vl-media", "min_pixels (9216) is more than max_pixels"),
    ({"media": "media { video_max_pixels = 4096 }"}, "vl-media", "family's default"),
    ({"media": "media { max_pixels = 1000000 }"}, "vl-fits", "tokens, and a row holds max_len = 256"),
    ({"pack": "dynamic { tokens = 512  patches = 16 }"}, "vl-fits", "patch budget (16)"),
    ({"data_extra": "chat_template = chatml"}, "vl-chat-template", "text template"),
    ({"source": 'source "chat" { path = "PATH"  kind = pretrain }'}, "vl-source", "kind = sft"),
])
def test_vl_rules_are_located(tmp_path, data, edit, rule, words):
    if "source" in edit:
        edit = {"source": edit["source"].replace("PATH", str(data["chat"]))}
    checked, path = check(tmp_path, plan_text(data, **edit))
    found = errors(checked)
    assert [e[0] for e in found] == [rule], found
    assert words in found[0][1], found
    d = next(d for d in checked.diagnostics if d.rule == rule)
    assert d.span is not None and d.span.line > 1


def test_a_bad_record_is_reported_with_its_source_and_line(tmp_path, data):
    lines = data["chat"].read_text().splitlines()
    lines[1] = lines[1].replace("media/img1.png", "media/missing.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "media").symlink_to(data["dir"] / "media")
    source = f'source "chat" {{ path = {json.dumps(str(bad))}  kind = sft }}'
    text = plan_text(data, source=source)
    checked, _ = check(tmp_path, text)  # skipped in training: a warning
    assert checked.ok and [e[0] for e in errors(checked, "warning")] == ["vl-records"], errors(checked, "warning")
    message = errors(checked, "warning")[0][1]
    assert "bad.jsonl:2" in message and "missing.png" in message, message
    d = next(d for d in checked.diagnostics if d.rule == "vl-records")
    assert d.span is not None and d.span.line == text[:text.index("bad.jsonl")].count("\n") + 1
    checked, _ = check(tmp_path, plan_text(data, source=source, data_extra="on_bad_record = fail"))
    assert [e[0] for e in errors(checked)] == ["vl-records"], errors(checked)


def test_a_text_model_refuses_media_settings(tmp_path, data):
    text = plan_text(data).replace(f"{REPO}/plans/models/tiny-qwen2.5-vl", f"{REPO}/plans/models/tiny-llama")
    text = text.replace('"model.language_model.layers.*" "model.visual.blocks.*"', '"model.layers.*"')
    text = text.replace('checkpoint "model.language_model.layers.*"', 'checkpoint "model.layers.*"')
    checked, _ = check(tmp_path, text)
    assert "vl-settings" in [e[0] for e in errors(checked)], errors(checked)


def test_lr_needs_its_scale(tmp_path, data):
    checked, _ = check(tmp_path, plan_text(data, train_extra='lr "model.visual"'))
    assert [e[0] for e in errors(checked)] == ["missing-key"], errors(checked)


def test_frozen_parts_have_no_gradients_or_optimizer_state_in_the_estimate(tmp_path, data):
    """The dry run builds the sharded model and its optimizer; its shards must equal the estimate,
    and freezing the vision tower must remove exactly its gradients and AdamW states."""
    path = tmp_path / "p.veo"
    path.write_text(plan_text(data))
    full = check_plan(str(path), dry_run=True)
    path.write_text(plan_text(data, train_extra='freeze "model.visual"'))
    frozen = check_plan(str(path), dry_run=True)
    assert full.ok and frozen.ok, (errors(full), errors(frozen))
    a, b = full.report.memory.rows[0].parts, frozen.report.memory.rows[0].parts
    assert b["params"] == a["params"]
    assert 0 < b["grads"] < a["grads"] and b["optim"] == 2 * b["grads"]
    assert not any(d.severity == "error" for d in frozen.diagnostics)


@pytest.mark.multiproc
@pytest.mark.slow
def test_generated_vl_script_trains_resumes_and_exports(tmp_path, data):
    """The compiled script on 2 processes (FSDP2, the vision tower at a tenth of the rate, frozen
    patch embedding): it trains, its checkpoint resumes exactly, and the export loads with its
    processor in transformers."""
    checked, path = check(tmp_path, plan_text(
        data, train_extra='lr "model.visual" scale = 0.1\n  freeze "model.visual.patch_embed"'
    ) + f'checkpoint {{ dir = "{tmp_path / "ck"}"  every = 2 }}\n')
    assert checked.ok, errors(checked)
    script = tmp_path / "vlp.py"
    script.write_text(render_script(lower(checked, str(script))))
    torchrun(script, 2, [], log_dir=tmp_path / "logs")
    torchrun(script, 2, ["--checkpoint.dir", tmp_path / "ck2", "--resume", tmp_path / "ck" / "step_2"],
             log_dir=tmp_path / "logs2")
    full = read_metrics(tmp_path / "ck" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "ck2" / "metrics.jsonl")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert [(r["loss"], r["grad_norm"]) for r in resumed[-2:]] == [(r["loss"], r["grad_norm"]) for r in full[2:]]
    assert full[-1]["loss"] < full[0]["loss"]

    from transformers import AutoModelForImageTextToText

    from runtime.data.multimodal import load_hf_processor

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "ck" / "hf")
    assert model.config.model_type == "qwen2_5_vl"
    assert load_hf_processor(tmp_path / "ck" / "hf", model.config).image_processor.size["longest_edge"] == 9216


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_proves_ulysses_on_a_vl_plan(tmp_path, data):
    """`planc verify` on a Ulysses sp=2 VL plan: the generated script on 2 processes against one
    process, in fp64, through the same code path users run."""
    import subprocess
    import sys

    rules = ('sp ulysses "model.language_model.layers.*.self_attn"\n'
             '  fsdp "model.language_model.layers.*" "model.visual.blocks.*"')
    path = tmp_path / "p.veo"
    path.write_text(plan_text(data, mesh="sp = 2", rules=rules))
    out = subprocess.run([sys.executable, "-m", "planc", "verify", str(path), "--dtype", "fp64", "--steps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "run at its own size" in out.stdout and "OK: vlp" in out.stdout, out.stdout[-2000:]


@pytest.mark.multiproc
@pytest.mark.slow
def test_verify_proves_expert_parallel_qwen3_vl_moe(tmp_path, data):
    """`planc verify` of a Qwen3-VL-MoE plan with `ep plan = model` over FSDP2 x EP 2: fp64 verdict."""
    import subprocess
    import sys

    rules = ('ep plan = model\n  fsdp "model.language_model.layers.*" "model.visual.blocks.*"')
    path = tmp_path / "p.veo"
    path.write_text(plan_text(data, model="tiny-qwen3-vl-moe", mesh="dp_shard = 2  ep = 2", rules=rules))
    out = subprocess.run([sys.executable, "-m", "planc", "verify", str(path), "--dtype", "fp64", "--steps", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "EP=2" in out.stdout and "OK: vlp" in out.stdout, out.stdout[-2000:]


def test_text_only_paths_are_refused(tmp_path, data):
    rules = 'tp plan = model\n  tp sequence "model.language_model.norm"\n  fsdp "model.language_model.layers.*"'
    checked, _ = check(tmp_path, plan_text(data, mesh="tp = 2", rules=rules))
    assert "vl-text-only" in [e[0] for e in errors(checked)], errors(checked)
    checked, _ = check(tmp_path, plan_text(data) + "kernels { fused_ce = torch }\n")
    assert [e[0] for e in errors(checked)] == ["kernel-model"], errors(checked)


def test_parts_overlap_and_frozen_rates(tmp_path, data):
    """One rate per parameter; a rate on frozen parameters is a warning; a refused scale is one error."""
    checked, _ = check(tmp_path, plan_text(data, train_extra='lr "model.visual" scale = 0.5\n'
                                                            '  lr "model.visual.blocks.*" scale = 0.2'))
    assert [e[0] for e in errors(checked)] == ["train-parts"], errors(checked)
    checked, _ = check(tmp_path, plan_text(data, train_extra='freeze "model.visual"\n  lr "model.visual" scale = 0.5'))
    assert checked.ok and [e[0] for e in errors(checked, "warning")] == ["train-parts"], errors(checked, "warning")
    checked, _ = check(tmp_path, plan_text(data, train_extra='lr "model.visual" scale = 0'))
    assert [e[0] for e in errors(checked)] == ["range"], errors(checked)
