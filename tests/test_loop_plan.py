"""The training-loop features through the compiler (planc/checks/loop.py, planc/lower_loop.py):
one breaking plan per rule, the lines each feature adds (only when used), and a plan with a
validation block trained on 2 gloo processes (FSDP2) and on one: the same validation losses."""
from __future__ import annotations

import pytest

from launch import torchrun
from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from runtime.metrics import read_metrics
from tests.planfix import base_plan, make_workspace

STEPS = "  steps = 10  global_batch = 8  micro_batch = 2\n"
HELD = 'validation {{ source "held" {{ path = "{ws}/data.jsonl" }}  {extra} }}\n'

# rule -> (edits [(old, new)] of tests/planfix.py's base plan, text to append, locator, severity)
LOOP_CASES = {
    "train-length": ([("steps = 10  global_batch", "global_batch")], "", "train {", "error"),
    "epochs-source": ([("steps = 10", "epochs = 1"), ('text = "text" }', 'text = "text"  streaming = true }')], "",
                      "true }", "error"),
    "val-source": ([], "validation { every = 2 }\n", "validation {", "error"),
    "val-every": ([], HELD.format(ws="{ws}", extra="every = 20"), "every = 20", "error"),
    "profile-window": ([(STEPS, STEPS + "  profile { first = 9  steps = 5 }\n")], "", "profile {", "error"),
    "tracker-package": ([(STEPS, STEPS + "  tracker = wandb\n")], "", "wandb", "warning"),
    "mfu-peak": ([(STEPS, STEPS + "  peak_tflops = 100\n")], "", "peak_tflops = 100", "warning"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("loop_ws"))


def _plan(ws, edits=(), tail="") -> str:
    text = base_plan(ws)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + tail.replace("{ws}", str(ws))


def _check(ws, text, name):
    path = ws / f"{name}.veo"
    path.write_text(text)
    return check_file(str(path)), text


@pytest.mark.parametrize("rule", sorted(LOOP_CASES))
def test_loop_rule(ws, rule, monkeypatch):
    from planc.checks import loop

    monkeypatch.setattr(loop, "installed", lambda package: False)  # as on a machine without the tracker
    edits, tail, locator, severity = LOOP_CASES[rule]
    checked, text = _check(ws, _plan(ws, edits, tail), rule)
    hits = [d for d in checked.diagnostics if d.rule == rule]
    assert hits, [(d.rule, d.message) for d in checked.diagnostics]
    i = text.index(locator.replace("{ws}", str(ws)))
    line, col = text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
    assert (hits[0].span.line, hits[0].span.col) == (line, col), (hits[0].span, hits[0].message)
    assert hits[0].severity == severity
    assert checked.ok == (severity == "warning")


def test_both_steps_and_epochs_is_refused(ws):
    checked, text = _check(ws, _plan(ws, [(STEPS, STEPS + "  epochs = 2\n")]), "both")
    (d,) = [d for d in checked.diagnostics if d.rule == "train-length"]
    assert d.span.line == text[:text.index("epochs = 2")].count("\n") + 1


def test_validation_sources_are_read_like_training_sources(ws):
    tail = f'validation {{ source "held" {{ path = "{ws}/data.jsonl"  text = "body" }} }}\n'
    checked, text = _check(ws, _plan(ws, tail=tail), "valfield")
    (d,) = [d for d in checked.diagnostics if d.rule == "data-field"]
    assert d.span.line == text.count("\n") and "'held'" in d.message
    checked, _ = _check(ws, _plan(ws, tail=tail.replace("data.jsonl", "absent.jsonl")), "valpath")
    assert [d.rule for d in checked.diagnostics if d.severity == "error"] == ["data-source"]


def _script(ws, text, name) -> str:
    checked, _ = _check(ws, text, name)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    return render_script(lower(checked, f"generated/{name}.py"))


def test_each_feature_adds_its_lines_only_when_used(ws):
    plain = _script(ws, _plan(ws), "plain")
    features = {
        "validation": (HELD.format(ws=ws, extra="every = 2  batches = 1"), "validation.build_val_loader("),
        "profile": ("", "profiling.Profiler("),
        "tracker": ("", "trackers.build("),
        "mfu": ("", "mfu.MFU("),
        "epochs": ("", "epoch_steps("),
    }
    edits = {"profile": [(STEPS, STEPS + "  profile { first = 2 }\n")],
             "tracker": [(STEPS, STEPS + "  tracker = tensorboard\n")],
             "mfu": [(STEPS, STEPS + "  mfu = true  peak_tflops = 50\n")],
             "epochs": [("steps = 10", "epochs = 1")]}
    for name, (tail, line) in features.items():
        assert line not in plain
        script = _script(ws, _plan(ws, edits.get(name, []), tail), f"with_{name}")
        assert line in script, name
        others = [other for o, (_, other) in features.items() if o != name]
        assert not [o for o in others if o in script], name


def test_check_prints_the_steps_of_epochs(ws):
    checked, _ = _check(ws, _plan(ws, [("steps = 10", "epochs = 2"), ("every = 5", "every = 1")]), "epochs")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    (note,) = [n for n in checked.ctx.notes if n.startswith("epochs = 2: ")]
    assert checked.ctx.epoch_steps >= 2 and f"= {checked.ctx.epoch_steps} steps" in note


def test_verify_runs_an_epochs_plan_as_a_steps_plan(ws):
    """planc verify runs --steps steps: the script it lowers counts no epochs and trains that many."""
    from planc.verify import _steps_for_epochs

    checked, _ = _check(ws, _plan(ws, [("steps = 10", "epochs = 2"), ("every = 5", "every = 1")]), "vepochs")
    assert _steps_for_epochs(checked.plan, 4) == 2
    ir = lower(checked, "generated/vepochs.py")
    text = render_script(ir)
    assert not ir.loop.epochs and "epoch_steps(" not in text and "epochs" not in {s.key.split(".")[1] for s in ir.settings}
    assert {s.key: s.value for s in ir.settings}["train.steps"] == 4
    steps_plan, _ = _check(ws, _plan(ws, [("every = 5", "every = 1")]), "vsteps")
    assert _steps_for_epochs(steps_plan.plan, 4) is None and steps_plan.plan["train.steps"] == 10


PLAN = '''plan "{name}"
model {{ config = "{config}" }}
mesh {{ dp_shard = 2  device = cpu }}
parallelize {{ fsdp "model.layers.*" }}
data {{
  source "stdlib" {{ path = "{corpus}"  format = jsonl }}
  tokenizer = "{tokenizer}"
  max_len = 32
}}
train {{
  steps = 3  global_batch = 4  micro_batch = 2
  optimizer = adamw {{ lr = 1e-2 }}
  profile {{ first = 2  steps = 1 }}
  mfu = true
}}
validation {{
  source "held" {{ path = "{corpus}" }}
  every = 2  batches = 2
}}
'''


@pytest.mark.multiproc
@pytest.mark.slow
def test_validation_on_two_processes_equals_one(tmp_path, demo_assets, small_corpus, tiny_llama, python_run):
    plan = tmp_path / "val.veo"
    plan.write_text(PLAN.format(name="val", config=tiny_llama, corpus=small_corpus,
                                tokenizer=demo_assets["tokenizer"]))
    checked = check_file(str(plan))
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    script = tmp_path / "train_val.py"
    script.write_text(render_script(lower(checked, str(script))))
    torchrun(script, 2, ["--train.output", tmp_path / "two"], log_dir=tmp_path / "logs2")
    one_proc = python_run(script, ["--mesh.dp_shard", "1", "--train.output", tmp_path / "one"],
                          log_dir=tmp_path / "logs1")
    assert "MFU not measured on cpu" in one_proc.stdout  # mfu = true: CUDA only, and the log says so
    two, one = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("two", "one"))
    validated = [r["step"] for r in two if "val_loss" in r]
    assert validated == [2, 3] == [r["step"] for r in one if "val_loss" in r]  # every 2, and the last step
    for a, b in zip(two, one):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"], (a, b)
        if "val_loss" in a:
            assert a["val_tokens"] == b["val_tokens"] > 0
            assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5 * b["val_loss"], (a, b)
    assert not [r for r in one + two if "mfu" in r]
    assert {p.name for p in (tmp_path / "two" / "profile").iterdir()} == {"trace_rank0.json", "trace_rank1.json"}
    vals = [r["val_loss"] for r in two if "val_loss" in r]
    assert vals[0] != vals[1]  # measured again after the third step
