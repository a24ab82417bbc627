"""One broken plan per estimate rule (node-span, memory-budget, dry-run): the diagnostic names the
rule and points at the plan line to change."""
from __future__ import annotations

import re

import pytest

from planc.dryrun import RULES as DRY_RULES
from planc.estimate import RULES as EST_RULES
from planc.frontend import check_plan
from planc.args import size_bytes
from tests.planfix import base_plan, make_workspace

RULES = {**EST_RULES, **DRY_RULES}


def _check(path, device_memory: str | None = None, **kw):
    """What `planc check PATH [--device-memory SIZE] [--dry-run]` runs."""
    return check_plan(str(path), device_memory=None if device_memory is None else size_bytes(device_memory), **kw)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws_est"))


# rule -> (edits, locator the diagnostic must point at, severity, keyword arguments of the check)
CASES = {
    # tp = 2 on nodes of one GPU: every tp group crosses nodes
    "node-span": ([("dp_shard = 2  device = cpu", "dp_shard = 2  tp = 2  gpus_per_node = 1  device = cpu"),
                   ('checkpoint "model.layers.*"', 'checkpoint "model.layers.*"\n  tp plan = model')],
                  "tp = 2", "warning", {}),
    # no activation checkpointing, long rows, a tiny budget: activations weigh most -> the parallelize block
    "memory-budget": ([('checkpoint "model.layers.*"', ""), ("max_len   = 64", "max_len   = 256")],
                      "parallelize {", "error", {"device_memory": "256KiB"}),
    # rows of 10**12 tokens: no device holds that, and no --device-memory says one does
    "memory-ceiling": ([("max_len   = 64", "max_len   = 1000000000000")], "max_len   = 1000000000000", "error", {}),
    # flash_attention_2 on a cuda plan: the check cannot know whether flash-attn is installed where the
    # script runs (it warns `attention-device`); the dry run builds the model and finds out
    "dry-run": ([("dp_shard = 2  device = cpu", "dp_shard = 2  device = cuda"),
                 ("attention = sdpa", "attention = flash_attention_2")],
                '"/', "error", {"dry_run": True}),
}


def _apply(ws, rule):
    edits, locator, severity, kw = CASES[rule]
    text = base_plan(ws)
    for old, new in edits:
        assert old in text, f"edit for {rule} does not apply: {old!r}"
        text = text.replace(old, new, 1)
    path = ws / f"{rule}.veo"
    path.write_text(text)
    return path, text


def _locate(text: str, locator: str) -> tuple[int, int]:
    i = text.index(locator)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule(ws, rule):
    if rule == "dry-run":  # the case needs flash-attn to be missing, as on this CPU machine
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            pytest.skip("flash-attn is installed here: the dry run's model build succeeds")
    path, text = _apply(ws, rule)
    _, locator, severity, kw = CASES[rule]
    checked = _check(path, **kw)
    others = [(d.rule, d.message) for d in checked.diagnostics if d.severity == "error" and d.rule != rule]
    assert checked.report is not None and not others, others  # the plan itself composes
    hits = [d for d in checked.diagnostics if d.rule == rule]
    assert hits, f"{rule} not reported; got {[(d.rule, d.message) for d in checked.diagnostics]}"
    d = hits[0]
    assert d.severity == severity
    assert (d.span.line, d.span.col) == _locate(text, locator), f"{rule}: {d.span} {d.message}"
    assert d.help
    if severity == "error":
        assert not checked.ok


def test_memory_budget_names_micro_batch_when_checkpointed(ws):
    """With checkpointing already on and micro_batch > 1, the line to change is micro_batch."""
    text = base_plan(ws).replace("max_len   = 64", "max_len   = 256").replace("micro_batch = 2", "micro_batch = 4")
    text = text.replace("global_batch = 8", "global_batch = 16")
    path = ws / "budget2.veo"
    path.write_text(text)
    checked = _check(path, device_memory="300KiB")
    d = next(d for d in checked.diagnostics if d.rule == "memory-budget")
    assert (d.span.line, d.span.col) == _locate(text, "micro_batch = 4")
    assert re.search(r"micro_batch = [123]\b", d.help)


def test_fits_when_the_budget_is_large(ws):
    path, _ = _apply(ws, "memory-budget")
    checked = _check(path, device_memory="1GiB")
    assert not [d for d in checked.diagnostics if d.rule == "memory-budget"]


def test_every_estimate_rule_has_a_case():
    assert set(RULES) == set(CASES)  # their docs/rules.md lines: tests/test_docs.py
