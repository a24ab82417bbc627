"""`planc check` and `planc check --dry-run` agree on every small layout of a few tiny models.

The dry run applies the runtime's own TP / EP / Ulysses / FSDP functions on a fake process group:
what it refuses, the generated script would refuse at start-up. So a plan the static check accepts
must pass the dry run, and a plan the check refuses for a divisibility rule must fail it too (the
check is not stricter than the runtime; tried on every third such plan). Layouts: tp, sp, ep in
1..4 and dp_shard in 1..2, over the configs and rule sets of tests/layoutgrid.py (heads / KV heads /
experts / vocabulary / MLP sizes that different degrees split or not), `tp plan = megatron` left
out (the config's own plan covers the same modules). PLANC_FULL_GRID=1: every degree in 1..4,
every rule set, and the second direction for every refused plan (~15 min here).
"""
from __future__ import annotations

import os

import pytest

from tests.layoutgrid import CONFIGS, flavours, is_moe, layouts, make_configs, plan_text, verdicts

pytestmark = pytest.mark.slow

# rules about what each rank holds; `seq-divides` is not one of them: it warns of padding only
DIVISIBILITY = {"tp-divides", "tp-vocab", "sp-heads", "ep-experts", "ep-divides"}


@pytest.fixture(scope="module")
def cfg_dirs(tmp_path_factory):
    return make_configs(tmp_path_factory.mktemp("grid"))


FULL = os.environ.get("PLANC_FULL_GRID") == "1"


def _grid(name):
    for lay in layouts():
        tp, sp, ep, dp_shard = lay
        if (ep > 1 and not is_moe(name)) or (dp_shard > 2 and not FULL):
            continue
        for flavour in flavours(name, tp):
            if FULL or flavour != "megatron":
                yield lay, flavour


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_check_agrees_with_dry_run(tmp_path, cfg_dirs, name):
    accepted = refused = 0
    rules_seen: set[str] = set()
    disagree = []
    for i, (lay, flavour) in enumerate(_grid(name)):
        path = tmp_path / "grid.veo"
        path.write_text(plan_text(cfg_dirs[name], lay, flavour))
        errors, _ = verdicts(path, dry=False)
        rules = {d.rule for d in errors}
        rules_seen |= rules
        if not errors:
            accepted += 1
            _, dry = verdicts(path)
            if dry is not None:
                disagree.append(f"{lay} {flavour}: check accepts, the dry run refuses: {dry}")
        else:
            refused += 1
            if rules <= DIVISIBILITY and (FULL or i % 3 == 0):
                _, dry = verdicts(path)
                if dry is None:
                    disagree.append(f"{lay} {flavour}: check refuses ({[d.message for d in errors]}), "
                                    "the dry run passes")
    print(f"\n{name}: {accepted} layouts accepted (each passed the dry run), {refused} refused by "
          f"{sorted(rules_seen)}")
    assert not disagree, "\n".join(disagree[:20])
    assert accepted and refused  # the grid has both sides for every model


def test_grid_exercises_every_per_rank_rule(tmp_path, cfg_dirs):
    """The grid reaches each divisibility rule at least once (else the agreement proves little)."""
    seen = set()
    cases = [("gqa4x2", (3, 1, 1, 1), "model"), ("gqa12x6", (2, 2, 1, 1), "model"), ("mha6", (3, 1, 1, 1), "model"),
             ("moe6", (1, 4, 4, 1), "none"), ("moe6", (1, 1, 3, 2), "none"), ("mha6", (1, 4, 1, 1), "none")]
    for name, lay, flavour in cases:
        path = tmp_path / "x.veo"
        path.write_text(plan_text(cfg_dirs[name], lay, flavour))
        errors, dry = verdicts(path)
        assert errors and dry, (name, lay, [d.message for d in errors], dry)
        seen |= {d.rule for d in errors}
    assert {"tp-divides", "tp-vocab", "sp-heads", "ep-experts", "ep-divides"} <= seen, seen
