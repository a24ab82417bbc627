"""The estimates against real ranks: on 4 gloo processes, several small layouts are built with the
dry run's own `parallelize` (the runtime functions the generated script calls), trained for one
step, and every rank counts its local shard bytes (parameters, gradients, AdamW states) and every
collective it issues. The analytic estimates must match: shard bytes exactly on every rank,
collectives exactly in count and payload (EP's routing-dependent all-to-alls exactly in their sum
over ranks).

Run as a script under torchrun, this file is the driver: ``test_estimate_mp.py OUT.json PLAN...``.
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

SMALL = 512  # bytes: loss counts, norm-weight gradients, routing counts (not modelled; see comm.py)

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# uneven everywhere: FSDP pads, and the last rank holds less
ODD = dict(TINY, vocab_size=131, intermediate_size=70)
MOE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 32,
       "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 128,
       "max_position_embeddings": 256, "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False}

TP = ('  tp colwise "model.layers.*.self_attn.{q,k,v}_proj" "model.layers.*.mlp.{gate,up}_proj"\n'
      '  tp rowwise "model.layers.*.self_attn.o_proj" "model.layers.*.mlp.down_proj"\n')
LAYOUTS = {  # name: (config, mesh, parallelize body, train extras)
    "fsdp4_odd": (ODD, "dp_shard = 4", '  fsdp "model.layers.*"', ""),
    "fsdp2xtp2": (TINY, "dp_shard = 2  tp = 2", TP + '  fsdp "model.layers.*"', ""),
    "tp2_seq_ckpt": (TINY, "dp_shard = 2  tp = 2", TP + '  tp sequence "model.layers.*.*_layernorm" "model.norm"\n'
                     '  tp vocab "model.embed_tokens"\n  tp loss "lm_head"\n  fsdp "model.layers.*"\n'
                     '  checkpoint "model.layers.*"', ""),
    "hsdp2x2_bf16": (TINY, "dp_replicate = 2  dp_shard = 2", '  fsdp "model.layers.*"\n  checkpoint "model.layers.*"',
                     "mixed_precision { param = bf16  reduce = fp32 }"),
    "ulysses2xfsdp2": (TINY, "dp_shard = 2  sp = 2", '  sp ulysses "model.layers.*.self_attn"\n  fsdp "model.layers.*"', ""),
    "ep2xfsdp4_moe": (MOE, "dp_shard = 4  ep = 2", '  ep "model.layers.*.mlp.experts"\n  fsdp "model.layers.*"\n'
                      '  checkpoint "model.layers.*"', ""),
}


def write_plans(root: Path) -> list[Path]:
    paths = []
    for name, (cfg, mesh, body, extra) in LAYOUTS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
        path = root / f"{name}.veo"
        path.write_text(f'''plan "{name}"
model {{ config = "{root / name}" }}
mesh {{ {mesh}  device = cpu }}
parallelize {{
{body}
}}
data {{
  source "x" {{ path = "{root}/absent.jsonl" }}
  tokenizer = "{root}/absent"
  max_len = 16
}}
train {{ steps = 1  global_batch = 8  micro_batch = 2  {extra} }}
''')
        paths.append(path)
    return paths


# -- the driver (runs on every rank) -------------------------------------------------------------

def _counter():
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode

    c10d = {"_allgather_base_": ("all_gather", 0, 2), "_reduce_scatter_base_": ("reduce_scatter", 1, 2),
            "allreduce_": ("all_reduce", 0, 1), "alltoall_base_": ("all_to_all", 1, 2)}
    funcol = {"all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter",
              "all_reduce": "all_reduce", "all_to_all_single": "all_to_all"}

    class Collectives(TorchDispatchMode):
        """Every collective this rank issues: (op, ranks of its group, payload bytes)."""

        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(t is DTensor for t in types):
                return NotImplemented  # let DTensor lower to plain collectives, then count those
            out = func(*args, **(kwargs or {}))
            name = func._overloadpacket.__name__
            if func.namespace == "c10d" and name in c10d:
                op, ti, gi = c10d[name]
                t = args[ti][0] if name == "allreduce_" else args[ti]
                group = dist.ProcessGroup.unbox(args[gi])
                self.calls.append((op, tuple(dist.get_process_group_ranks(group)), t.numel() * t.element_size()))
            elif func.namespace.startswith(("_c10d_functional", "c10d_functional")) and name in funcol:
                op, t = funcol[name], args[0]
                group = torch._C._distributed_c10d._resolve_process_group(args[-1])
                n = t.numel() * t.element_size() * (group.size() if op == "all_gather" else 1)
                self.calls.append((op, tuple(dist.get_process_group_ranks(group)), n))
            return out

    return Collectives()


def _local_bytes(model, optimizer) -> dict:
    from torch.distributed.tensor import DTensor

    def nbytes(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    out = {"param": 0, "grad": 0, "optim": 0}
    for p in model.parameters():
        out["param"] += nbytes(p)
        out["grad"] += nbytes(p.grad)
        out["optim"] += sum(nbytes(v) for v in optimizer.state[p].values() if v.dim() > 0)
    return out


def drive(out_path: str, plans: list[str]) -> None:
    import torch
    import torch.distributed as dist

    from planc import dryrun
    from planc.frontend import check_file
    from planc.lower import lower
    from runtime import dist as rdist
    from runtime import loss as rloss
    from runtime import model as rmodel
    from runtime.parallel.tp import loss_context
    from runtime.parallel.ulysses import slice_for_sp

    info = rdist.init("cpu")
    results = {}
    for path in plans:
        checked = check_file(path, info.world, skip_files=True)
        assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
        plan, d = checked.plan, checked.ctx.degrees
        # the script's own set-up statements (what the dry run executes), on real gloo ranks
        ir = lower(checked, "generated/x.py")
        ns = dryrun.namespace(ir, info, [])
        dryrun.execute(ir, ns)
        mesh, model, optimizer = ns["mesh"], ns["model"], ns["optimizer"]
        rmodel.materialize(model, torch.device("cpu"), seed=0)
        rows, seq = plan["train.micro_batch"], plan["data.max_len"]
        g = torch.Generator().manual_seed(mesh.dp_rank)
        batches = []
        for _ in range(mesh.grad_accum(plan["train.global_batch"], rows)):
            ids = torch.randint(0, model.config.vocab_size, (rows, seq), generator=g)
            b = {"input_ids": ids, "labels": ids.roll(-1, 1), "position_ids": torch.arange(seq).expand(rows, seq)}
            batches.append(slice_for_sp(b, mesh.sp.get_local_rank(), d["sp"]) if d["sp"] > 1 else b)
        counter = _counter()
        with counter:  # the generated script's step: global token count, then each micro-batch
            tokens = rloss.count_targets(batches, mesh.loss_group)
            for b in batches:
                logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
                with loss_context(logits):
                    (rloss.cross_entropy_sum(logits, b["labels"]) / tokens).backward()
        optimizer.step()
        results[Path(path).stem] = {"states": _local_bytes(model, optimizer), "calls": counter.calls}
    gathered = [None] * info.world
    dist.all_gather_object(gathered, results)
    if info.rank == 0:
        Path(out_path).write_text(json.dumps(gathered))
    rdist.finish()


# -- the test ---------------------------------------------------------------------------------

def _expected(checked):
    """(per-rank states, per-rank Counter of exact (op, ranks, bytes) -> calls, per-rank EP bytes)."""
    from planc.estimate.comm import traffic
    from planc.estimate.layout import Layout
    from planc.estimate.shards import states_per_rank

    ctx = checked.ctx
    layout = Layout.from_degrees(ctx.degrees)
    states = states_per_rank(ctx)
    cols = traffic(ctx)
    exact, ep_total = [], []
    for rank in range(layout.world):
        groups = {axis: next(tuple(g) for g in layout.groups(axis) if rank in g)
                  for axis in ("fsdp", "ep_fsdp", "dp_replicate", "tp", "sp", "ep")}
        c = collections.Counter()
        ep = 0
        for col in cols:
            if col.axis == "ep" and col.op == "all_to_all" and col.bytes >= SMALL:
                ep += col.total
            if col.bytes >= SMALL and not col.expected and col.axis != "ep":
                c[(col.op, groups[col.axis], col.bytes)] += col.calls
        exact.append(c)
        ep_total.append(ep)
    return states, exact, ep_total


@pytest.mark.multiproc
@pytest.mark.slow
def test_estimates_match_real_ranks(tmp_path):
    from planc.frontend import check_file
    from tests.launch import torchrun

    plans = write_plans(tmp_path)
    out = tmp_path / "measured.json"
    torchrun(Path(__file__), 4, [out, *plans], log_dir=tmp_path / "logs")
    measured = json.loads(out.read_text())
    checked_layouts = 0
    for path in plans:
        name = path.stem
        checked = check_file(str(path), 4, skip_files=True)
        states, exact, ep_total = _expected(checked)
        ep_measured = 0
        for rank in range(4):
            got = measured[rank][name]
            assert got["states"] == states[rank], f"{name} rank {rank}: shards {got['states']} != estimate {states[rank]}"
            calls = collections.Counter()
            for op, ranks, nbytes in got["calls"]:
                if nbytes < SMALL:
                    continue
                if op == "all_to_all" and _is_ep(checked, ranks):
                    ep_measured += nbytes
                    continue
                calls[(op, tuple(ranks), nbytes)] += 1
            assert calls == exact[rank], (f"{name} rank {rank}: collectives differ\n measured - estimate: "
                                          f"{calls - exact[rank]}\n estimate - measured: {exact[rank] - calls}")
        assert ep_measured == sum(ep_total), f"{name}: EP all-to-all bytes {ep_measured} != {sum(ep_total)}"
        checked_layouts += 1
    assert checked_layouts == len(LAYOUTS)


def _is_ep(checked, ranks) -> bool:
    from planc.estimate.layout import Layout

    d = checked.ctx.degrees
    return d["ep"] > 1 and sorted(ranks) in Layout.from_degrees(d).groups("ep")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    drive(sys.argv[1], sys.argv[2:])
