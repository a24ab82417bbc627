"""Per-rank memory: model states (exact), FSDP2's temporaries, activations and logits (estimates),
against a device budget.

Model states are the local shards of parameters, gradients and AdamW's two moments, every rank
separately (planc.estimate.shards; `planc check --dry-run` gets the same numbers from real DTensors).
The rest is the same on every rank:
- gathered: FSDP2's all-gathered parameters in the compute dtype: the root unit (kept from forward
  to backward) plus two of the largest other units (the one computing and the one prefetched), or
  all units when they do not reshard after forward;
- reduce: the largest unit's unsharded gradients, in the compute dtype and again in the reduce
  dtype (the reduce-scatter input);
- activations: planc.estimate.activations for every decoder layer (a checkpointed layer keeps its
  input, and one layer is recomputed at a time in backward; an offloaded layer keeps nothing on the
  device until backward brings its tensors back, one layer at a time), plus the final norm and
  head inputs;
- logits: tokens x (local) vocabulary x (compute bytes + 4 + 4): the logits, their fp32 copy for
  the cross-entropy and its saved log-softmax; with `kernels { fused_ce }` one chunk of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..layout import Layout
from .activations import checkpointed_layer_bytes, layer_bytes, rotary_bytes, shape_of
from .comm import checkpointed_layers, layer_prefixes, workload
from .shards import param_layouts, states_per_rank, tp_styles, unit_sizes

PARTS = ("params", "grads", "optim", "gathered", "reduce", "activations", "logits")


def zero_model_states(psi: float, nd: int, stage: int, k: int = 12) -> float:
    """Bytes per device of mixed-precision Adam model states under ZeRO stage 0-3 (Rajbhandari
    et al. 2020, figure 1): 2 bytes of fp16 parameters, 2 of fp16 gradients, k of optimizer
    states (fp32 master copy, momentum, variance: k = 12), each partitioned over nd devices from
    stage 1 (optimizer states), 2 (and gradients), 3 (and parameters)."""
    params, grads, opt = 2 * psi, 2 * psi, k * psi
    if stage >= 1:
        opt /= nd
    if stage >= 2:
        grads /= nd
    if stage >= 3:
        params /= nd
    return params + grads + opt


def zero_stage(ctx) -> int:
    """The ZeRO stage a plan's model states correspond to: FSDP2 shards parameters, gradients and
    optimizer states (3); replication or no data-parallel sharding keeps them whole (0)."""
    return 3 if any(r.kind == "fsdp" for r in ctx.plan.rules) and Layout.from_degrees(ctx.degrees).fsdp > 1 else 0


@dataclass
class MemoryRow:
    ranks: list[int]
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class MemoryEstimate:
    rows: list[MemoryRow]  # one per distinct per-rank figure, most ranks first
    activation_terms: dict[str, float]  # one uncheckpointed layer, term by term
    notes: list[str] = field(default_factory=list)

    @property
    def worst(self) -> MemoryRow:
        return max(self.rows, key=lambda r: r.total)


def shared_parts(ctx, params=None) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """The parts that are the same on every rank, one layer's activation terms, and notes."""
    plan, d, tree = ctx.plan, ctx.degrees, ctx.tree
    params = param_layouts(ctx) if params is None else params
    w = workload(ctx)
    c = w.compute
    notes: list[str] = []
    parts = {"gathered": 0.0, "reduce": 0.0}
    fsdp = [r for r in plan.rules if r.kind == "fsdp"]
    if fsdp and Layout.from_degrees(d).fsdp > 1:
        units = unit_sizes(ctx, params)
        reshard = bool(fsdp[0].options["reshard_after_forward"].value)
        root = units.get("", {"numel": 0})["numel"]
        layers = sorted((u["numel"] for name, u in units.items() if name and u["axis"] == "fsdp"), reverse=True)
        experts = sorted((u["numel"] for name, u in units.items() if u["axis"] == "ep_fsdp"), reverse=True)
        if reshard:
            gathered = root + sum(layers[:2]) + sum(experts[:2])
        else:
            gathered = root + sum(layers) + sum(experts)
        parts["gathered"] = gathered * c
        largest = max([root] + layers[:1]) + (experts[0] if experts else 0)
        parts["reduce"] = largest * (c + w.reduce)
    styles = tp_styles(ctx) if d["tp"] > 1 else {}
    seq_tp = "sequence" in styles.values()
    t, u = d["tp"], d["sp"]
    ckpt = checkpointed_layers(ctx)
    layers = set(layer_prefixes(tree))
    offloaded = {m for _, mods in ctx.rule_modules("offload") for m in mods if m in layers}
    attention = plan["model.attention"]
    acts, peak, terms, moved = 0.0, 0.0, {}, 0.0
    for i, layer in enumerate(layer_prefixes(tree)):
        L = shape_of(tree.text_config, tree, i, attention)
        kw = dict(t=t if styles else 1, seq_tp=seq_tp, u=u)
        full = layer_bytes(L, w.seq, w.rows, c, **kw)
        if not terms:
            from .activations import layer_terms

            terms = layer_terms(L, w.seq, w.rows, c, **kw)
        if layer in ckpt:
            kept = checkpointed_layer_bytes(L, w.seq, w.rows, c, t=t if styles else 1, seq_tp=seq_tp, u=u)
            peak = max(peak, full)
        else:
            kept = full
        if layer in offloaded:  # in host memory until backward brings this one layer's back
            moved += kept
            peak = max(peak, kept if layer not in ckpt else full)
        else:
            acts += kept
    h = tree.text_config.hidden_size
    rep = t if seq_tp else 1
    rotary = rotary_bytes(shape_of(tree.text_config, tree, 0, attention), w.seq, w.rows, c, u=u)
    parts["activations"] = acts + peak + rotary + 2 * c * w.tokens * h / rep / u
    vocab = tree.text_config.vocab_size
    head_style = styles.get("lm_head")
    v_local = vocab / t if head_style == "loss" else vocab
    tokens = w.tokens / u
    if plan.settings.get("kernels.fused_ce") is not None and plan["kernels.fused_ce"] != "off":
        # runtime.kernels.fused_ce: one chunk of logits (and its fp32 work copy) at a time, the
        # hidden-state gradient kept, the head's gradient accumulated in fp32
        from runtime.kernels.fused_ce import CHUNK_ELEMENTS

        parts["logits"] = min(tokens * v_local, CHUNK_ELEMENTS) * (c + 4) + tokens * h * c + v_local * h * 4
    else:
        parts["logits"] = tokens * v_local * (c + 8)
    if plan["model.attention"] == "eager":
        notes.append("eager attention stores every layer's s x s scores; sdpa does not")
    if offloaded:
        notes.append(f"offload: {moved / 2**20:.2f} MiB of saved activations per rank live in host memory instead of "
                     f"the device ({len(offloaded)} layer{'s' * (len(offloaded) != 1)}; one layer's come back at a "
                     "time in backward)")
    if {m for _, mods in ctx.rule_modules("offload") for m in mods} - offloaded:
        notes.append("offload rules on modules other than whole decoder layers are not modelled")
    other = {m for _, mods in ctx.rule_modules("checkpoint") for m in mods} - ckpt
    if other:
        notes.append("checkpoint rules on modules other than whole decoder layers are not modelled")
    return parts, terms, notes


def estimate_memory(ctx, states: list[dict] | None = None) -> MemoryEstimate:
    """Per-rank memory of a checked plan; `states` (per-rank param/grad/optim bytes) may come from
    a dry run, else from the analytic shards."""
    params = param_layouts(ctx)
    states = states_per_rank(ctx, params) if states is None else states
    shared, terms, notes = shared_parts(ctx, params)
    groups: dict[tuple, list[int]] = {}
    for rank, s in enumerate(states):
        groups.setdefault((s["param"], s["grad"], s["optim"]), []).append(rank)
    rows = []
    for (p, g, o), ranks in groups.items():
        rows.append(MemoryRow(ranks, dict(params=p, grads=g, optim=o, **shared)))
    rows.sort(key=lambda r: (-len(r.ranks), r.ranks[0]))
    return MemoryEstimate(rows, terms, notes)
