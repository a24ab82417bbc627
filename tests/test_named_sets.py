"""Named rule sets (`tp plan = megatron[_sp]`, `ep plan = model`) expand into ordinary, checked rules."""
from __future__ import annotations

import pytest

from planc.emit import render_script
from planc.frontend import check_file
from planc.lower import lower
from runtime.vocab import TP_STYLES
from tests.planfix import base_plan, make_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("named"))


def _check(ws, text, name):
    path = ws / f"{name}.veo"
    path.write_text(text)
    return check_file(str(path))


def _plan(ws, mesh, rules, model="llama"):
    return base_plan(ws).replace("mesh { dp_shard = 2  device = cpu }", f"mesh {{ {mesh}  device = cpu }}") \
        .replace('checkpoint "model.layers.*"', rules).replace("/llama", f"/{model}")


def test_megatron_sp_expands_to_every_style_and_compiles(ws):
    checked = _check(ws, _plan(ws, "dp_shard = 2  tp = 2", "tp plan = megatron_sp"), "msp")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    styles = {r.style: [g.pattern for g in r.globs] for r in checked.plan.rules if r.kind == "tp"}
    assert set(styles) == set(TP_STYLES)
    assert all(g.span.line == 10 for r in checked.plan.rules if r.kind == "tp" for g in r.globs)
    script = render_script(lower(checked, "generated/base.py"))
    assert '("sequence", expand(model, ["model.layers.*.{input,post_attention}_layernorm", "model.norm"]))' in script


def test_megatron_on_moe_keeps_attention_and_ep_plan_model_finds_the_experts(ws):
    checked = _check(ws, _plan(ws, "dp_shard = 2  tp = 2  ep = 2", "tp plan = megatron\n  ep plan = model", "moe"), "moe")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    tp = {r.style: [g.pattern for g in r.globs] for r in checked.plan.rules if r.kind == "tp"}
    assert tp == {"colwise": ["model.layers.*.self_attn.{q,k,v}_proj"], "rowwise": ["model.layers.*.self_attn.o_proj"]}
    ep = [g.pattern for r in checked.plan.rules if r.kind == "ep" for g in r.globs]
    assert ep == ["model.layers.*.mlp.experts"]


def test_megatron_sp_on_moe_is_refused(ws):
    checked = _check(ws, _plan(ws, "dp_shard = 2  tp = 2  ep = 2", "tp plan = megatron_sp\n  ep plan = model", "moe"), "msp_moe")
    assert "tp-sequence" in {d.rule for d in checked.diagnostics if d.severity == "error"}


def test_ep_plan_model_needs_an_moe_config(ws):
    checked = _check(ws, _plan(ws, "dp_shard = 2  ep = 2", "ep plan = model"), "ep_dense")
    d = next(d for d in checked.diagnostics if d.rule == "ep-experts")
    assert (d.span.line, d.span.col) == (10, 13)  # at `model` in `ep plan = model`
