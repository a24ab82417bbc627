"""The dry run: the real plans in plans/ at their cluster sizes (and Llama-3-70B at 1024 ranks),
on a fake process group in this one CPU process; and the rank layout planc draws against the
DeviceMesh the runtime really builds."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from planc.dryrun import dry_run, fake_world
from planc.estimate import report
from planc.layout import Layout
from planc.estimate.shards import states_per_rank
from planc.frontend import check_file

REPO = Path(__file__).resolve().parents[1]
CLUSTER_PLANS = {"llama3-70b": 256, "qwen3-moe": 64, "long-context": 64}


@pytest.mark.parametrize("name", sorted(CLUSTER_PLANS))
def test_cluster_plans_dry_run(name):
    checked = check_file(str(REPO / "plans" / f"{name}.veo"), skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    assert checked.ctx.world == CLUSTER_PLANS[name]
    assert checked.plan["mesh.device"] == "cuda"
    rep = report(checked, dry_run=True, device_memory=80 * 2**30)
    assert [d for d in rep.diagnostics if d.severity == "error"] == []  # composes and fits 80 GiB
    assert rep.dry.per_rank == states_per_rank(checked.ctx)
    assert any("cpu" in n for n in rep.dry.notes)  # a cuda plan, dry-run on a cpu mesh, and it says so
    if name == "qwen3-moe":  # 128 experts over ep 8: 16 per rank, FSDP-sharded over the 8 ep_fsdp ranks
        up = next(s for s in rep.dry.specs if s.name.endswith("layers.0.mlp.experts.gate_up_proj") and s.kind == "param")
        assert up.local_shape[0] == 2


def test_llama3_70b_at_1024_ranks(tmp_path):
    """The 70B plan scaled to 1024 ranks (8 HSDP replicas): well under a minute on this machine."""
    text = (REPO / "plans" / "llama3-70b.veo").read_text()
    assert "dp_replicate = 2  dp_shard = 16" in text
    path = tmp_path / "llama3-70b-1024.veo"
    path.write_text(text.replace("dp_replicate = 2  dp_shard = 16", "dp_replicate = 8  dp_shard = 16")
                    .replace('"plans/models/', f'"{REPO}/plans/models/'))
    t0 = time.perf_counter()
    checked = check_file(str(path), skip_files=True)
    assert checked.ok and checked.ctx.world == 1024
    dry = dry_run(checked, rank=0, check_ranks=[1023])
    seconds = time.perf_counter() - t0
    print(f"\nllama3-70b on 1024 ranks: check + dry run of ranks 0 and 1023 in {seconds:.1f} s "
          f"({dry.seconds:.1f} s dry run)")
    assert seconds < 60
    assert len(dry.per_rank) == 1024 and dry.per_rank == states_per_rank(checked.ctx)
    # no element lost or doubled: the shards of 8 replicas hold the model 8 times, where the
    # parameters tp does not cut (the norms) are held by each of the 8 tp ranks
    from planc.estimate.shards import param_layouts

    copies = sum(math.prod(p.shape) * (1 if any(a == "tp" for _, a in p.cuts) else 8)
                 for p in param_layouts(checked.ctx))
    assert sum(s["param"] for s in dry.per_rank) == 8 * 4 * copies


DEGREES = [dict(dp_replicate=2, dp_shard=3, sp=2, tp=2, ep=3), dict(dp_shard=4, sp=2, tp=2, ep=8),
           dict(dp_replicate=2, dp_shard=2, tp=4, ep=2), dict(dp_shard=8)]


@pytest.mark.parametrize("degrees", DEGREES, ids=lambda d: "x".join(f"{k}{v}" for k, v in d.items()))
def test_layout_is_the_runtime_mesh(degrees):
    """Every group planc draws is a group of the DeviceMesh runtime/dist.py builds."""
    import torch

    from planc.dryrun import mesh_groups
    from runtime import dist as rdist
    from runtime.parallel.mesh_ep import ep_meshes

    lay = Layout.from_degrees(degrees)
    with fake_world(0, lay.world):
        info = rdist.DistInfo(0, lay.world, 0, torch.device("cpu"), "fake")
        mesh = rdist.build_mesh(info, **{k: v for k, v in degrees.items() if k != "ep"})
        split = mesh.root["fsdp"]._unflatten(0, (lay.dp_shard, lay.sp), ("dp_shard", "sp"))
        meshes = {"tp": mesh.tp, "sp": mesh.sp, "fsdp": mesh.root["fsdp"], "dp_shard": split["dp_shard"],
                  "dp_replicate": mesh.root["dp_replicate"]}
        if lay.ep > 1:
            ep_mesh, ep_fsdp = ep_meshes(mesh.root, lay.ep)
            meshes["ep"] = ep_mesh
            meshes["ep_fsdp"] = ep_fsdp if ep_fsdp.ndim == 1 else ep_fsdp["ep_fsdp"]
        for axis, m in meshes.items():
            assert sorted(mesh_groups(m)) == lay.groups(axis), axis


def test_runtime_error_is_located(tmp_path):
    """A glob the runtime refuses (a norm is not a Linear): the dry run's error sits on that rule's
    line, as the check's own `tp-module` error does."""
    from planc.dryrun import StepFailed
    from tests.planfix import base_plan, make_workspace

    ws = make_workspace(tmp_path)
    text = base_plan(ws).replace("dp_shard = 2  device = cpu", "tp = 2  device = cpu").replace(
        'checkpoint "model.layers.*"', 'tp plan = model\n  tp rowwise "model.layers.*.post_attention_layernorm"')
    path = ws / "bad.veo"
    path.write_text(text)
    checked = check_file(str(path))
    line = text[: text.index('tp rowwise "model.layers.*.post')].count("\n") + 1
    assert [(d.rule, d.span.line) for d in checked.diagnostics if d.severity == "error"] == [("tp-module", line)]
    with pytest.raises(StepFailed) as e:
        dry_run(checked)
    assert e.value.span.line == line and "nn.Linear" in str(e.value)
