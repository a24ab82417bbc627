"""runtime.config: overrides, coercion, errors with suggestions, --resume, the settings table."""
import pytest

from runtime import config

SETTINGS = {
    "model.config": "plans/models/tiny-llama",
    "model.weights": None,
    "train.steps": 40,
    "train.lr": 3e-3,
    "train.betas": [0.9, 0.95],
    "train.seed": 0,
    "data.shuffle": True,
    "data.stdlib.path": "data/demo/stdlib.jsonl",
    "checkpoint.dir": "out/demo",
}


def test_defaults_and_attribute_access():
    cfg = config.load(SETTINGS, [])
    assert cfg.train.steps == 40 and cfg.train.lr == 3e-3 and cfg.model.weights is None
    assert cfg.data.stdlib.path == "data/demo/stdlib.jsonl"  # nested dotted keys
    assert cfg["train.steps"] == 40 and cfg.resume == "auto" and cfg.overrides == ()


@pytest.mark.parametrize("argv, key, value", [
    (["--train.steps", "6"], "train.steps", 6),
    (["--train.steps=6"], "train.steps", 6),
    (["--train.steps", "1_000"], "train.steps", 1000),
    (["--train.steps", "1e3"], "train.steps", 1000),
    (["--train.lr", "1e-4"], "train.lr", 1e-4),
    (["--train.lr=2"], "train.lr", 2.0),
    (["--data.shuffle", "false"], "data.shuffle", False),
    (["--data.shuffle", "True"], "data.shuffle", True),
    (["--train.betas", "[0.8, 0.9]"], "train.betas", [0.8, 0.9]),
    (["--train.betas", "0.8,0.99"], "train.betas", [0.8, 0.99]),
    (["--model.weights", "ckpt/hf"], "model.weights", "ckpt/hf"),
    (["--checkpoint.dir", "out/x"], "checkpoint.dir", "out/x"),
    (["--data.stdlib.path=a=b.jsonl"], "data.stdlib.path", "a=b.jsonl"),  # only the first '=' splits
])
def test_override_coercion(argv, key, value):
    cfg = config.load(SETTINGS, argv)
    got = cfg[key]
    assert got == value and type(got) is type(value)
    assert cfg.overrides == (key,)


def test_ints_stay_ints_and_floats_stay_floats():
    cfg = config.load(SETTINGS, ["--train.seed", "7", "--train.lr", "1"])
    assert type(cfg.train.seed) is int and type(cfg.train.lr) is float


@pytest.mark.parametrize("argv, message", [
    (["--train.stesp", "6"], "unknown setting --train.stesp; did you mean --train.steps?"),
    (["--lr", "1e-4"], "unknown setting --lr; did you mean --train.lr?"),
    (["--optimizer.lr", "1e-4"], "did you mean --train.lr?"),
    (["--zzz", "1"], "unknown setting --zzz"),
    (["--train.steps", "six"], "--train.steps expects an int, got 'six'"),
    (["--train.steps", "2.5"], "--train.steps expects an int, got '2.5'"),
    (["--train.lr", "fast"], "--train.lr expects a number, got 'fast'"),
    (["--data.shuffle", "maybe"], "--data.shuffle expects true or false, got 'maybe'"),
    (["--train.betas", "[0.9,"], "--train.betas expects a list"),
    (["--train.steps"], "--train.steps needs a value"),
    (["train.steps", "6"], "unexpected argument 'train.steps'"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        config.load(SETTINGS, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv, resume", [
    ([], "auto"), (["--resume", "auto"], "auto"), (["--resume=none"], "none"),
    (["--resume", "out/demo/step_20"], "out/demo/step_20"),
])
def test_resume(argv, resume):
    assert config.load(SETTINGS, argv).resume == resume


def test_table_marks_overrides_and_help_exits_0(capsys):
    cfg = config.load(SETTINGS, ["--train.steps", "6", "--resume", "auto"])
    table = str(cfg)
    lines = {line.split()[-2] if line.startswith("*") else line.split()[0]: line for line in table.splitlines()}
    assert lines["train.steps"].startswith("*") and lines["train.steps"].endswith(" 6")
    assert not lines["train.lr"].startswith("*")
    assert lines["resume"].startswith("*") and "auto" in lines["resume"]
    with pytest.raises(SystemExit) as e:
        config.load(SETTINGS, ["--help"])
    assert e.value.code == 0 and "train.steps" in capsys.readouterr().out


def test_settings_are_read_only_and_unknown_attributes_say_what_exists():
    cfg = config.load(SETTINGS, [])
    with pytest.raises(AttributeError, match="read-only"):
        cfg.train.steps = 3
    with pytest.raises(AttributeError, match=r"no setting 'train.step'.*steps"):
        cfg.train.step
    with pytest.raises(AttributeError, match="no settings block 'optim'"):
        cfg.optim
