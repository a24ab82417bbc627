"""planc/layout.py: the one layout model (sizes, words, text); its rank groups are checked against
the runtime's real DeviceMesh in tests/test_dryrun.py and its sub-layouts in tests/test_verify.py."""
from __future__ import annotations

import pytest

from planc.layout import AXES, DIMS, WORLD_DIMS, Layout
from planc.schema import MESH


def test_sizes():
    lay = Layout(dp_replicate=2, dp_shard=4, sp=2, tp=2, ep=4)
    assert (lay.world, lay.dp, lay.fsdp, lay.ep_fsdp) == (32, 8, 8, 2)
    assert {a: lay.size(a) for a in AXES} == {"tp": 2, "sp": 2, "dp_shard": 4, "fsdp": 8, "dp_replicate": 2,
                                              "ep": 4, "ep_fsdp": 2}
    assert sum(len(g) for g in lay.groups("fsdp")) == lay.world
    with pytest.raises(KeyError):
        lay.size("pp")
    assert Layout(dp_shard=2, ep=4).problem() == "ep=4 must divide dp_shard * sp = 2"
    assert Layout(dp_shard=2, sp=2, ep=4).problem() is None


@pytest.mark.parametrize("degrees,kinds,words", [
    (dict(dp_shard=2), {"fsdp"}, "FSDP2"),
    (dict(dp_replicate=2, dp_shard=16, tp=8), {"fsdp", "tp"}, "HSDP x TP=8"),
    (dict(dp_shard=2, sp=2, tp=2), {"fsdp", "tp", "sp"}, "FSDP2 x TP=2 x SP=2"),
    (dict(sp=2), {"fsdp", "sp"}, "FSDP2 x SP=2"),  # FSDP shards over the sp ranks too
    (dict(tp=2), {"fsdp", "tp"}, "TP=2"),  # FSDP over one rank shards nothing
    (dict(dp_replicate=2), {"replicate"}, "DDP"),
    (dict(), {"fsdp"}, "no parallelism"),
])
def test_description(degrees, kinds, words):
    assert Layout(**degrees).describe(kinds) == words


def test_text_and_parse():
    lay = Layout(dp_replicate=2, dp_shard=4, ep=2)
    assert lay.text() == "dp_replicate=2 dp_shard=4 ep=2" and Layout().text() == "dp_shard=1"
    assert Layout.parse(lay.text()) == Layout.parse("dp_replicate=2,dp_shard=4,ep=2") == lay
    assert Layout.from_degrees(lay.degrees()) == lay and list(lay.degrees()) == list(DIMS)


def test_schema_takes_its_mesh_degrees_from_the_layout():
    degrees = [k for k in MESH.keys if k in DIMS]
    assert degrees == list(DIMS)
    assert [k for k in DIMS if MESH.keys[k].type == "degree"] == list(WORLD_DIMS)  # ep may not be `auto`
