"""One broken plan per rule: the diagnostic names the rule and points at the right line:col."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from planc.checks import run_checks
from planc.diagnostics import PlanError
from planc.elaborate import elaborate
from planc.frontend import check_file
from planc.parse import parse_file
from planc.resolve import resolve
from planc.rules import all_rules
from tests.planfix import base_plan, make_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _check(ws, text, world=None, name="plan.veo"):
    path = ws / name
    path.write_text(text)
    return check_file(str(path), world), text


# rule -> (edits [(old, new)], locator: the text the diagnostic must point at, severity, world)
CASES = {
    "syntax": ([("device = cpu }", "device = cpu")], "{ dp_shard", "error", None),
    "plan-name": ([('plan "base"', 'plan "a b"')], '"a b"', "error", None),
    "plan-name-shadow": ([('plan "base"', 'plan "triton"')], '"triton"', "error", None),
    "unknown-block": ([("mesh {", "meshh {")], "meshh", "error", None),
    "duplicate-block": ([("checkpoint { dir", "mesh { tp = 1 }\ncheckpoint { dir")], "mesh { tp", "error", None),
    "missing-block": ([("train {\n", "qqq {\n")], '"base"', "error", None),
    "block-args": ([("mesh {", 'mesh "x" {')], 'mesh "x"', "error", None),
    "block-body": ([("checkpoint { dir", "checkpoint\nfoo { dir")], "checkpoint\n", "error", None),
    "unknown-key": ([("dtype     = fp32", "dtyp      = fp32")], "dtyp ", "error", None),
    "duplicate-key": ([("attention = sdpa", "dtype = fp32")], "dtype = fp32\n}", "error", None),
    "missing-key": ([("  config    =", "  # config    =")], "model {", "error", None),
    "unknown-statement": ([('checkpoint "model', 'checkpint "model')], "checkpint", "error", None),
    "statement-args": ([('fsdp       "model.layers.*"  reshard_after_forward', "fsdp")], "fsdp\n", "error", None),
    "source-name": ([('source "web"', 'source "max_len"')], '"max_len"', "error", None),
    "type": ([("max_len   = 64", 'max_len   = "64"')], '"64"', "error", None),
    "range": ([("micro_batch = 2", "micro_batch = 0")], "0\n", "error", None),
    "unknown-value": ([("pack      = greedy", "pack      = gready")], "gready", "error", None),
    "mesh-auto": ([("dp_shard = 2", "dp_shard = auto")], "dp_shard = auto", "error", None),
    "train-parts": ([("  steps = 10  global_batch = 8  micro_batch = 2\n",
                      '  steps = 10  global_batch = 8  micro_batch = 2\n  freeze "model" "lm_head"\n')],
                    'freeze "model"', "error", None),
    "mesh-product": ([], "dp_shard = 2", "error", 4),
    "mesh-unsupported": ([("device = cpu", "device = cpu  pp = 2")], "pp = 2", "error", None),
    "ep-divides": ([("device = cpu", "device = cpu  ep = 4")], "ep = 4", "error", None),
    "model-config": ([("/llama", "/nope")], '"{ws}/nope"', "error", None),
    "model-weights": ([("dtype     = fp32", 'weights = "{ws}/tok"')], '"{ws}/tok"\n', "error", None),
    "glob-unmatched": ([('checkpoint "model.layers.*"', 'checkpoint "model.layer.*"')], '"model.layer.*"', "error", None),
    "glob-syntax": ([('checkpoint "model.layers.*"', 'checkpoint "model.{a,b"')], '"model.{a,b"', "error", None),
    "fsdp-nesting": ([('fsdp       "model.layers.*"', 'fsdp "model.layers" "model.layers.*"')], 'fsdp "model.layers"', "warning", None),
    "fsdp-tied": ([("/llama", "/tied"), ('fsdp       "model.layers.*"', 'fsdp "model.embed_tokens"')], 'fsdp "model.embed', "error", None),
    "checkpoint-nesting": ([('checkpoint "model.layers.*"', 'checkpoint "model.layers.*" "model.layers.*.mlp"')], 'checkpoint "', "error", None),
    "fsdp-options": ([('checkpoint "model.layers.*"', 'fsdp "model.norm"  offload')], 'fsdp "model.norm"', "error", None),
    "replicate-fsdp": ([('checkpoint "model.layers.*"', "replicate")], "replicate", "error", None),
    "tp-divides": ([("dp_shard = 2", "tp = 4"), ('checkpoint "model.layers.*"', "tp plan = model")], "tp = 4", "error", None),
    "tp-vocab": ([("/llama", "/oddvocab"), ("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp vocab "model.embed_tokens"')], 'tp vocab', "error", None),
    "tp-rules": ([("dp_shard = 2", "tp = 2")], "tp = 2", "error", None),
    "seq-divides": ([("dp_shard = 2", "sp = 2"), ("max_len   = 64", "max_len   = 63"), ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"')], "max_len   = 63", "warning", None),
    "sp-heads": ([("dp_shard = 2", "tp = 2  sp = 4"), ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"\n  tp plan = model')], "sp = 4", "error", None),
    "sp-rules": ([("dp_shard = 2", "sp = 2")], "sp = 2", "error", None),
    "ep-experts": ([("device = cpu", "device = cpu  ep = 2"), ('checkpoint "model.layers.*"', 'ep "model.layers.*.mlp"')], 'ep "model', "error", None),
    "ep-rules": ([("/llama", "/moe"), ("device = cpu", "device = cpu  ep = 2")], "ep = 2", "error", None),
    "rule-overlap": ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp colwise "model.layers.*.mlp.up_proj"\n  tp rowwise "model.layers.*.mlp.*_proj"')], "tp rowwise", "error", None),
    "data-source": ([("/data.jsonl", "/nope.jsonl")], '"{ws}/nope.jsonl"', "error", None),
    "data-format": ([("format = jsonl", "format = parquet")], "parquet", "error", None),
    "data-records": ([("/data.jsonl", "/bad.jsonl")], '"{ws}/bad.jsonl"', "error", None),
    "data-field": ([('text = "text"', 'text = "body"')], '"body"', "error", None),
    "tokenizer": ([('"{ws}/tok"', '"{ws}/data.jsonl"')], '"{ws}/data.jsonl"\n', "error", None),
    "vocab-size": ([('"{ws}/tok"', '"{ws}/bigtok"')], '"{ws}/bigtok"', "error", None),
    "max-len": ([("max_len   = 64", "max_len   = 512")], "max_len   = 512", "warning", None),
    "pack-budget": ([("pack      = greedy", "pack      = dynamic { tokens = 32 }")], "tokens = 32", "error", None),
    "chat-template": ([("/data.jsonl\"  format = jsonl  text = \"text\"", "/chat.jsonl\"  kind = sft")], "sft", "error", None),
    "batch-divisible": ([("global_batch = 8", "global_batch = 6")], "global_batch = 6", "error", None),
    "warmup": ([("warmup = 2", "warmup = 20")], "warmup = 20", "warning", None),
    "cpu-dtype": ([("dtype     = fp32", "dtype     = bf16")], "dtype     = bf16", "warning", None),
    "mixed-precision": ([('fsdp       "model.layers.*"  reshard_after_forward', ""), ("steps = 10", "mixed_precision { param = fp16 }\n  steps = 10")], "param = fp16", "warning", None),
    "checkpoint-every": ([("every = 5", "every = 50")], "every = 50", "error", None),
    "checkpoint-dir": ([('/out"', '/afile/x"')], '"{ws}/afile/x"', "error", None),
    "dp-sync": ([('fsdp       "model.layers.*"  reshard_after_forward', "")], "parallelize {", "error", None),
    "tp-incomplete": ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp colwise "model.layers.*.self_attn.{q,k,v}_proj"')], "tp colwise", "error", None),
    "tp-sequence": ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp colwise "model.layers.*.self_attn.{q,k,v}_proj" "model.layers.*.mlp.{gate,up}_proj"\n  tp rowwise "model.layers.*.self_attn.o_proj" "model.layers.*.mlp.down_proj"\n  tp sequence "model.norm"')], "tp sequence", "error", None),
    "tp-tied": ([("/llama", "/tied"), ("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp vocab "model.embed_tokens"')], "tp vocab", "error", None),
    "tp-module": ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp colwise "model.layers.*.self_attn"')], "tp colwise", "error", None),
    "ep-cover": ([("/llama", "/moe"), ("device = cpu", "device = cpu  ep = 2"), ('checkpoint "model.layers.*"', 'ep "model.layers.0.mlp.experts"')], 'ep "model', "error", None),
    "sp-cover": ([("dp_shard = 2", "sp = 2"), ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.0.self_attn"')], "sp ulysses", "error", None),
    "sp-attention": ([("dp_shard = 2", "sp = 2"), ("attention = sdpa", "attention = flash_attention_2"), ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"')], "attention = flash", "error", None),
    "pack-micro-batch": ([("pack      = greedy", "pack      = dynamic { tokens = 128 }")], "micro_batch = 2", "error", None),
    "kernel-tp": ([("dp_shard = 2", "tp = 2"), ('checkpoint "model.layers.*"', 'tp plan = megatron\n  tp loss "lm_head"'), ("checkpoint { dir", "kernels { fused_ce = torch }\ncheckpoint { dir")], "fused_ce", "error", None),
    "kernel-model": ([("checkpoint { dir", "kernels { moe = torch }\ncheckpoint { dir")], "moe = torch", "error", None),
    "moe-aux-loss": ([("steps = 10", "moe_aux_loss = 0.01\n  steps = 10")], "moe_aux_loss = 0.01", "warning", None),
    "attention-device": ([("attention = sdpa", "attention = flash_attention_2")], "attention = flash", "error", None),
    "kernel-device": ([("checkpoint { dir", "kernels { rmsnorm = triton }\ncheckpoint { dir")], "rmsnorm", "warning", None),
    "lora-target": ([("steps = 10", 'lora "model.layers.*.mlp"\n  steps = 10')], '"model.layers.*.mlp"', "error", None),
    "lora-layout": ([("dp_shard = 2", "dp_shard = 2  tp = 2"), ("steps = 10", 'lora "model.layers.*.self_attn.q_proj"\n  steps = 10')], 'lora "', "error", None),
}

UNTESTED_HERE = {"plan-file"}  # tested below


def _locate(text: str, locator: str) -> tuple[int, int]:
    i = text.index(locator)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


def _case_text(ws, rule: str) -> str:
    text = base_plan(ws)
    for old, new in CASES[rule][0]:
        old, new = old.replace("{ws}", str(ws)), new.replace("{ws}", str(ws))
        assert old in text, f"edit for {rule} does not apply: {old!r}"
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule(ws, rule):
    _, locator, severity, world = CASES[rule]
    text = _case_text(ws, rule)
    checked, text = _check(ws, text, world, name=f"{rule}.veo")
    hits = [d for d in checked.diagnostics if d.rule == rule.replace("-shadow", "")]
    assert hits, f"{rule} not reported; got {[(d.rule, d.message) for d in checked.diagnostics]}"
    d = hits[0]
    assert d.severity == severity
    line, col = _locate(text, locator.replace("{ws}", str(ws)))
    assert (d.span.line, d.span.col) == (line, col), f"{rule}: {d.span} {d.message}"
    assert d.span.file.endswith(f"{rule}.veo")
    if severity == "error":
        assert not checked.ok


def test_base_plan_is_clean(ws):
    checked, _ = _check(ws, base_plan(ws))
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    assert [d for d in checked.diagnostics if d.severity == "error"] == []


def test_every_rule_has_a_case():
    from tests.test_estimate_rules import CASES as ESTIMATE_CASES  # node-span, memory-budget, dry-run
    from tests.test_diffusion_plan import DIFFUSION_CASES  # block diffusion: sft data, a mask-token tokenizer
    from tests.test_loop_plan import LOOP_CASES  # validation, epochs, profile, tracker, mfu
    from tests.test_vl_plan import VL_CASES  # the vision-language rules need a VL model and media

    missing = (set(all_rules()) - set(CASES) - set(ESTIMATE_CASES) - set(VL_CASES) - set(DIFFUSION_CASES)
               - set(LOOP_CASES) - UNTESTED_HERE)
    assert not missing, f"rules without a breaking plan: {sorted(missing)}"


def test_every_reported_rule_is_registered(ws):
    """Each rule a diagnostic of these plans names is in planc/rules.py (its docs/rules.md line is
    tested in tests/test_docs.py)."""
    rules = all_rules()
    for rule in CASES:
        checked, _ = _check(ws, _case_text(ws, rule), CASES[rule][3], name=f"reg-{rule}.veo")
        assert {d.rule for d in checked.diagnostics} <= set(rules), rule


def test_plan_file_missing(tmp_path):
    checked = check_file(str(tmp_path / "absent.veo"))
    assert [d.rule for d in checked.diagnostics] == ["plan-file"]
    assert not checked.ok


REPO = Path(__file__).resolve().parents[1]
NAMED_SETS = {  # the plans whose rules elaboration rewrites (tests/test_named_sets.py)
    "megatron_sp": [("dp_shard = 2", "dp_shard = 2  tp = 2"), ('checkpoint "model.layers.*"', "tp plan = megatron_sp")],
    "moe": [("/llama", "/moe"), ("dp_shard = 2", "dp_shard = 2  tp = 2  ep = 2"),
            ('checkpoint "model.layers.*"', "tp plan = megatron\n  ep plan = model")],
    "ep_dense": [("dp_shard = 2", "dp_shard = 2  ep = 2"), ('checkpoint "model.layers.*"', "ep plan = model")],
}


def _checks_only_read(path: Path, world=None) -> bool:
    """Elaborate a plan, then run every check pass on a deep copy of it: the copy must come back
    equal (the passes only read), and elaboration must leave the resolved plan as it was."""
    try:
        plan, diags = resolve(parse_file(path))
    except PlanError:
        return False  # the checks never see a plan that does not parse,
    if any(d.severity == "error" for d in diags):
        return False  # nor one that does not resolve
    resolved = copy.deepcopy(plan)
    elaborated, tree, _ = elaborate(plan)
    assert plan == resolved, f"{path}: elaborate changed the resolved plan"
    probe = copy.deepcopy(elaborated)
    run_checks(probe, world, False, tree)
    assert probe == elaborated, f"{path}: a check pass changed the plan"
    return True


def test_checks_only_read_the_plan(ws):
    ran = [p.name for p in sorted((REPO / "plans").glob("*.veo")) if _checks_only_read(p)]
    assert len(ran) == len(list((REPO / "plans").glob("*.veo")))
    for rule, (_, _, _, world) in CASES.items():
        path = ws / f"ro-{rule}.veo"
        path.write_text(_case_text(ws, rule))
        _checks_only_read(path, world)
    for name, edits in NAMED_SETS.items():
        text = base_plan(ws)
        for old, new in edits:
            assert old in text
            text = text.replace(old, new, 1)
        path = ws / f"ro-{name}.veo"
        path.write_text(text)
        assert _checks_only_read(path)
        assert elaborate(resolve(parse_file(path))[0])[0].rules != resolve(parse_file(path))[0].rules  # expanded
