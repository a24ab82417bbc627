"""Bytes each mesh axis moves per optimizer step, collective by collective (docs/estimates.md).

Payload conventions (what one rank's call holds, the same numbers `tests/test_estimate_mp.py`
counts on real gloo ranks): all-gather = the gathered output, reduce-scatter = the unreduced input,
all-reduce = the tensor, all-to-all = what this rank sends (itself included). Wire bytes per rank
are the usual ring / pairwise figures: (k-1)/k of the payload, twice that for an all-reduce.

Sources, per micro-batch (a step runs `grad_accum` of them, and FSDP2 reduces every one):
- FSDP2: each unit all-gathers its (TP/EP-local, dim-0-padded) parameters in the compute dtype in
  forward, again in backward when it resharded after forward (the root never does); it
  reduce-scatters its gradients in the reduce dtype; with dp_replicate > 1 (HSDP) the reduced
  shard is then all-reduced across replicas.
- TP (torch's ColwiseParallel / RowwiseParallel): without sequence parallelism every rowwise
  output is all-reduced in forward and every colwise input gradient in backward (q, k and v each
  reduce their own); with `sequence`, each block gathers its input once (all-gather) and rowwise
  outputs reduce-scatter, and backward mirrors both.
- Ulysses: four all-to-alls per attention (q, k, v out; the output back), and four in backward.
- EP: per MoE layer a count exchange, then tokens out (T*k rows) and results back, and the same
  two in backward. A rank's received rows depend on routing: figures assume uniform routing; the
  sum over all ranks is exact.
- Activation checkpointing recomputes a layer's forward in backward, collectives included, except
  the one whose output ends the layer (torch's recomputation stops once what backward needs is
  back: the MLP's last rowwise reduction is not redone).
Small collectives are left out: loss and token-count all-reduces (8 bytes), gradient all-reduces
of replicated norm weights under TP, loss-parallel statistics (one float per token), Ulysses'
position-id gathers and gradient-norm reductions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..layout import Layout
from ..model_tree import num_experts
from .shards import BYTES, param_layouts, tp_styles, unit_sizes


@dataclass
class Collective:
    axis: str  # fsdp | ep_fsdp | dp_replicate | tp | sp | ep
    op: str  # all_gather | reduce_scatter | all_reduce | all_to_all
    what: str
    calls: int  # per optimizer step, on each rank of the axis
    bytes: int  # payload per call (see the module docstring)
    group: int  # ranks in the group
    expected: bool = False  # depends on routing (EP): the uniform-routing expectation

    @property
    def total(self) -> int:
        return self.calls * self.bytes

    @property
    def wire(self) -> float:
        k = self.group
        f = 2 * (k - 1) / k if self.op == "all_reduce" else (k - 1) / k
        return self.total * f


@dataclass
class Workload:
    rows: float  # rows per micro-batch
    seq: int  # tokens per row (before Ulysses slicing)
    micro_batches: int  # per step, per rank
    compute: int  # bytes per activation / gathered parameter element
    reduce: int  # bytes per gradient element in reduction
    master: int  # bytes per master parameter element

    @property
    def tokens(self) -> float:
        return self.rows * self.seq


def workload(ctx) -> Workload:
    p, d = ctx.plan, ctx.degrees
    fsdp = any(r.kind == "fsdp" for r in p.rules)
    rows = p["data.tokens"] / p["data.max_len"] if p["data.pack"] == "dynamic" else p["train.micro_batch"]
    # block diffusion runs each row doubled, [x_t ; x_0] (planc/checks/diffusion.py)
    seq = p["data.max_len"] * (2 if p["train.objective"] == "block_diffusion" else 1)
    dp = Layout.from_degrees(d).dp
    accum = max(1, p["train.global_batch"] // (p["train.micro_batch"] * dp))
    master = BYTES[p["model.dtype"]]
    return Workload(rows, seq, accum, BYTES[p["train.param_dtype"]] if fsdp else master,
                    BYTES[p["train.reduce_dtype"]] if fsdp else master, master)


def layer_prefixes(tree) -> list[str]:
    """Decoder-layer module names (model.layers.0, ...), in order."""
    return [m for m in tree.modules if tree.module_types.get(m, "").endswith("DecoderLayer")]


def checkpointed_layers(ctx) -> set[str]:
    layers = set(layer_prefixes(ctx.tree))
    return {m for _, mods in ctx.rule_modules("checkpoint") for m in mods if m in layers}


def traffic(ctx) -> list[Collective]:
    """Every modelled collective of one optimizer step (per rank), grouped by what causes it."""
    tree, d, plan = ctx.tree, ctx.degrees, ctx.plan
    lay = Layout.from_degrees(d)
    w = workload(ctx)
    M = w.micro_batches
    out: list[Collective] = []
    params = param_layouts(ctx)

    # FSDP2 -------------------------------------------------------------------------------------
    fsdp_rules = [r for r in plan.rules if r.kind == "fsdp"]
    if fsdp_rules:
        reshard = bool(fsdp_rules[0].options["reshard_after_forward"].value)
        for unit, u in unit_sizes(ctx, params).items():
            k = lay.size(u["axis"])
            if k == 1:
                continue
            name = unit or "root"
            gathers = 1 + (1 if unit and reshard else 0)
            out.append(Collective(u["axis"], "all_gather", f"fsdp {name}", M * gathers, u["numel"] * w.compute, k))
            out.append(Collective(u["axis"], "reduce_scatter", f"fsdp {name}", M, u["numel"] * w.reduce, k))
            if d["dp_replicate"] > 1:
                out.append(Collective("dp_replicate", "all_reduce", f"hsdp {name}", M,
                                      u["numel"] // k * w.reduce, d["dp_replicate"]))
        out = _merge(out)
    elif any(r.kind == "replicate" for r in plan.rules) and d["dp_replicate"] > 1:
        n = sum(_numel(p.shape) for p in params)
        out.append(Collective("dp_replicate", "all_reduce", "replicate gradients", M, n * w.master,
                              d["dp_replicate"]))

    # per-layer activations collectives -----------------------------------------------------------
    styles = tp_styles(ctx) if d["tp"] > 1 else {}
    seq_tp = "sequence" in styles.values()
    u = d["sp"]
    c = w.compute
    T = w.tokens / u  # tokens this rank holds outside attention
    ckpt = checkpointed_layers(ctx)
    cfg = tree.text_config
    acc: dict[tuple, list] = {}

    def add(axis, op, what, calls, nbytes, group, expected=False):
        key = (axis, op, what, nbytes, expected)
        acc.setdefault(key, [0, group])[0] += calls

    for layer in layer_prefixes(tree):
        mods = [m for m in tree.modules if m.startswith(layer + ".")]
        fwd: list[tuple] = []  # (axis, op, what, bytes, group, ends_layer, expected)
        bwd: list[tuple] = []
        moe = any(m.endswith(".experts") for m in mods)
        if styles:
            blocks = sorted({m.rpartition(".")[0] for m in mods if styles.get(m) == "colwise"})
            for blk in blocks:
                kids = [m for m in mods if m.rpartition(".")[0] == blk]
                # only Linear-shaped modules (a 2-D weight); the runtime refuses other targets
                col = [m for m in kids if styles.get(m) == "colwise" and _linear(tree, m)]
                row = [m for m in kids if styles.get(m) == "rowwise" and _linear(tree, m)]
                ends = ".mlp" in blk + "." and not moe
                if seq_tp:
                    fwd.append(("tp", "all_gather", "tp block input", T * cfg.hidden_size * c, d["tp"], False, False))
                    bwd.append(("tp", "reduce_scatter", "tp block input grad", T * cfg.hidden_size * c, d["tp"]))
                else:
                    for m in col:
                        bwd.append(("tp", "all_reduce", "tp colwise input grad", T * _in(tree, m) * c, d["tp"]))
                for m in row:
                    nbytes = T * _out(tree, m) * c
                    if seq_tp:
                        fwd.append(("tp", "reduce_scatter", "tp rowwise output", nbytes, d["tp"], ends, False))
                        bwd.append(("tp", "all_gather", "tp rowwise output grad", nbytes, d["tp"]))
                    else:
                        fwd.append(("tp", "all_reduce", "tp rowwise output", nbytes, d["tp"], ends, False))
        if u > 1 and any(r.kind == "sp" for r in plan.rules):
            heads = cfg.num_attention_heads // max(1, d["tp"] if styles else 1)
            kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            kv = kv // max(1, d["tp"] if styles else 1)
            kv_eff = kv if kv % u == 0 else kv * (u // kv)
            hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            for what, nh in (("ulysses q", heads), ("ulysses k", kv_eff), ("ulysses v", kv_eff),
                             ("ulysses output", heads)):
                fwd.append(("sp", "all_to_all", what, T * nh * hd * c, u, False, False))
                bwd.append(("sp", "all_to_all", what + " grad", T * nh * hd * c, u))
        if moe and d["ep"] > 1:
            E = num_experts(cfg)
            k_top = getattr(cfg, "num_experts_per_tok", None) or cfg.moe_topk
            T_route = w.tokens / u  # TP (without sequence) ranks route the same full rows
            rows = T_route * k_top * cfg.hidden_size * c
            fwd.append(("ep", "all_to_all", "ep counts", E * 8, d["ep"], False, False))
            fwd.append(("ep", "all_to_all", "ep dispatch", rows, d["ep"], False, False))
            fwd.append(("ep", "all_to_all", "ep combine", rows, d["ep"], False, True))
            bwd.append(("ep", "all_to_all", "ep combine grad", rows, d["ep"]))
            bwd.append(("ep", "all_to_all", "ep dispatch grad", rows, d["ep"], True))
        for axis, op, what, nbytes, group, ends, expected in fwd:
            add(axis, op, what, M, nbytes, group, expected)
            if layer in ckpt and not ends:
                add(axis, op, what + " (recompute)", M, nbytes, group, expected)
        for axis, op, what, nbytes, group, *rest in bwd:
            add(axis, op, what, M, nbytes, group, bool(rest and rest[0]))

    # the ends of the model under TP ------------------------------------------------------------
    h = cfg.hidden_size
    V = cfg.vocab_size
    for m, style in styles.items():
        if m in set(layer_prefixes(tree)) or any(m.startswith(x + ".") for x in layer_prefixes(tree)):
            continue
        if style == "vocab":
            if seq_tp:
                add("tp", "reduce_scatter", "tp embedding output", M, T * h * c, d["tp"])
                add("tp", "all_gather", "tp embedding output grad", M, T * h * c, d["tp"])
            else:
                add("tp", "all_reduce", "tp embedding output", M, T * h * c, d["tp"])
        elif style == "loss":
            if seq_tp:
                add("tp", "all_gather", "tp head input", M, T * h * c, d["tp"])
                add("tp", "reduce_scatter", "tp head input grad", M, T * h * c, d["tp"])
            else:
                add("tp", "all_reduce", "tp head input grad", M, T * h * c, d["tp"])
        elif style == "colwise":
            add("tp", "all_gather", "tp logits", M, T * V * c, d["tp"])
            add("tp", "all_reduce", "tp head input grad", M, T * h * c, d["tp"])
    head = _head_name(tree)
    if seq_tp and head and head not in styles:
        add("tp", "all_gather", "tp head input", M, T * h * c, d["tp"])

    for (axis, op, what, nbytes, expected), (calls, group) in acc.items():
        out.append(Collective(axis, op, what, calls, int(round(nbytes)), group, expected))
    return out


def _merge(cols: list[Collective]) -> list[Collective]:
    """One line per (axis, op, kind of unit, bytes): the decoder layers' identical units fold."""
    import re

    acc: dict[tuple, Collective] = {}
    for c in cols:
        what = re.sub(r"\.\d+(?=\.|$)", ".*", c.what)
        key = (c.axis, c.op, what, c.bytes, c.group)
        if key in acc:
            acc[key].calls += c.calls
        else:
            acc[key] = Collective(c.axis, c.op, what, c.calls, c.bytes, c.group, c.expected)
    return list(acc.values())


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _linear(tree, module: str) -> bool:
    return len(tree.param_shape.get(f"{module}.weight", ())) == 2


def _in(tree, module: str) -> int:
    return tree.param_shape[f"{module}.weight"][1]


def _out(tree, module: str) -> int:
    return tree.param_shape[f"{module}.weight"][0]


def _head_name(tree) -> str | None:
    return "lm_head" if "lm_head" in tree.module_types else None


def per_axis(cols: list[Collective]) -> dict[str, dict]:
    """{axis: {"calls", "bytes", "wire"}} per step."""
    out: dict[str, dict] = {}
    for c in cols:
        a = out.setdefault(c.axis, {"calls": 0, "bytes": 0, "wire": 0.0, "group": c.group})
        a["calls"] += c.calls
        a["bytes"] += c.total
        a["wire"] += c.wire
    return out
