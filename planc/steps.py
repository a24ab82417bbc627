"""The parallelize steps: for each kind of rule, the runtime calls it becomes, in the one order
that composes (LoRA -> TP/EP/SP -> activation checkpointing and offloading -> compile -> FSDP bottom-up /
replication).

This is the one description of parallelize: `planc compile` renders these statements into the
script and `planc check --dry-run` executes them (planc/dryrun.py). A new step kind is a builder
here, its runtime function, its statement in planc/schema.py and its rules in planc/checks/.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Call, Code, Items, Stmt, Step

GLOBS = "runtime.parallel.globs"
DTYPE = {"param_dtype": Code("models.DTYPES[cfg.train.param_dtype]"),
         "reduce_dtype": Code("models.DTYPES[cfg.train.reduce_dtype]")}


@dataclass
class Rules:
    """What a builder sees: the plan's rules of its kind and where they are."""

    kind: str
    rules: list  # planc.plan.Rule, in plan order
    file: str  # the plan's basename, for `# demo.veo:12` comments
    kinds: set  # every rule kind the plan uses
    modules: dict  # id(rule) -> module names its globs match
    model_kind: str = "text"  # text | vl (planc.model_tree.ModelTree.kind)
    ep_rules: list = None  # the plan's ep rules (LoRA checks its targets against their experts)

    def where(self, rule) -> str:
        return f"{self.file}:{rule.span.line}"

    def lines(self) -> str:
        lines = sorted({r.span.line for r in self.rules})
        return f"{self.file}:{lines[0]}" + (f"-{lines[-1]}" if len(lines) > 1 else "")

    def globs(self, rules=None) -> list[str]:
        out: list[str] = []
        for r in rules or self.rules:
            out += [g.pattern for g in r.globs if g.pattern not in out]
        return out

    def option(self, name: str, default=None):
        """A rule option every rule of the kind agrees on (checks/sharding.py: fsdp-options)."""
        s = self.rules[0].options.get(name)
        return default if s is None or s.value is None else s.value

    def step(self, why: str, stmts: list[Stmt], where: str | None = None) -> Step:
        blame = [(r.span, self.modules.get(id(r), [])) for r in self.rules]
        return Step(self.kind, where or self.lines(), why, stmts, blame)


def _expand(globs: list[str]) -> Call:
    return Call(GLOBS, "expand", (Code("model"), globs))


def tp(r: Rules) -> list[Step]:
    """Every tp rule goes into one apply_tp call: a style per rule, the config's own plan first."""
    mod = "runtime.parallel.tp"
    stmts = []
    from_model = any(x.options.get("plan") is not None and x.options["plan"].value == "model" for x in r.rules)
    if from_model:
        stmts.append(Stmt(Call(mod, "tp_rules_from_config", (Code("model"),)), ("tp_rules", "tp_skipped"),
                          where=f"{r.lines()}: the config's own tensor-parallel plan"))
        stmts.append(Stmt(Call("", "info", (Code(
            'f"tp plan from the model config: {len(tp_rules)} styles; not applied: {tp_skipped}"'),), via="log")))
    styled = [(x.style, [g.pattern for g in x.globs], r.where(x)) for x in r.rules if x.style]
    if styled:
        items = Items(tuple(((style, _expand(globs)), where) for style, globs, where in styled),
                      Code("tp_rules") if from_model else None)
        stmts.append(Stmt(Call(mod, "apply_tp", (Code("model"), Code("mesh.tp"), items)), wrap=None))
    else:
        stmts.append(Stmt(Call(mod, "apply_tp", (Code("model"), Code("mesh.tp"), Code("tp_rules")))))
    why = "tensor parallel first: it turns weights into DTensors that FSDP then shards on the data dims"
    return [r.step(why, stmts)]


def ep(r: Rules) -> list[Step]:
    """One expert-parallel group for every experts module (the runtime switches the whole model)."""
    stmts = [Stmt(Call("runtime.parallel.mesh_ep", "ep_meshes", (Code("mesh.root"), Code("cfg.mesh.ep"))),
                  ("ep_mesh", "experts_fsdp_mesh"), where=r.lines()),
             Stmt(Call("runtime.parallel.ep", "apply_ep", (Code("model"), Code("ep_mesh"), _expand(r.globs()))))]
    why = "experts next: each ep rank keeps its experts, and tokens travel to them by all-to-all"
    return [r.step(why, stmts)]


def sp(r: Rules) -> list[Step]:
    if r.model_kind == "vl":
        stmts = [Stmt(Call("runtime.parallel.ulysses_vl", "apply_ulysses_vl",
                           (Code("model"), Code("mesh.sp"), _expand(r.globs()))), where=r.lines())]
        why = ("Ulysses on the language model: every sp rank encodes the whole row's images, then keeps its "
               "slice of the sequence before the first decoder layer; parameters are untouched")
        return [r.step(why, stmts)]
    stmts = [Stmt(Call("runtime.parallel.ulysses", "apply_ulysses",
                       (Code("model"), Code("mesh.sp"), _expand(r.globs()))), where=r.lines())]
    why = "Ulysses swaps the attention function (all-to-all around it); parameters are untouched"
    return [r.step(why, stmts)]


def freeze(r: Rules) -> list[Step]:
    stmts = [Stmt(Call("runtime.parts", "freeze", (Code("model"), r.globs())), where=r.lines())]
    why = "freeze before FSDP wraps the units: frozen parameters get no gradient, reduction or optimizer state"
    return [r.step(why, stmts)]


def lora(r: Rules) -> list[Step]:
    """Adapters first, on the plain model: peft wraps the nn.Linear targets in place (names kept)."""
    x = r.rules[0]
    spec = Call("runtime.lora", "LoraSpec", (), tuple((k, Code(f"cfg.lora.{k}")) for k in ("rank", "alpha", "dropout"))
                + (("targets", r.globs()),), via="lora")
    experts = (("expert_modules", _expand(r.globs(r.ep_rules))),) if "ep" in r.kinds else ()
    stmts = [Stmt(spec, ("lora_spec",), where=r.where(x)),
             Stmt(Call("runtime.lora", "check_layout", (Code("lora_spec"), Code("mesh.degrees")), experts, via="lora"),
                  note="refused here: tp > 1, and targets inside the experts ep shards"),
             Stmt(Call("runtime.lora", "apply_lora", (Code("model"), Code("lora_spec")), via="lora"))]
    why = "LoRA first, on the plain model: adapters beside the targets, every other parameter frozen"
    return [r.step(why, stmts)]


def offload(r: Rules) -> list[Step]:
    why = "offload the blocks' saved activations to host memory (outside checkpointing: then only their inputs)"
    return [Rules(r.kind, [x], r.file, r.kinds, r.modules).step(why, [Stmt(
        Call("runtime.parallel.offload", "apply_activation_offload", (Code("model"), r.globs([x]))),
        where=r.where(x))]) for x in r.rules]


def checkpoint(r: Rules) -> list[Step]:
    why = "checkpoint whole blocks before FSDP wraps them, so the recomputation gathers weights again"
    return [Rules(r.kind, [x], r.file, r.kinds, r.modules).step(why, [Stmt(
        Call("runtime.parallel.checkpointing", "apply_activation_checkpointing", (Code("model"), r.globs([x]))),
        where=r.where(x))]) for x in r.rules]


def compile_(r: Rules) -> list[Step]:
    why = "compile each block after checkpointing and before FSDP, so FSDP's hooks stay outside the graph"
    return [Rules(r.kind, [x], r.file, r.kinds, r.modules).step(why, [Stmt(
        Call("runtime.parallel.compile", "apply_compile", (Code("model"), r.globs([x]))), where=r.where(x))])
        for x in r.rules]


def fsdp(r: Rules) -> list[Step]:
    reshard = bool(r.option("reshard_after_forward", True))
    offload = bool(r.option("offload", False))
    extra = (("offload", True),) if offload else ()
    stmts = []
    if "ep" in r.kinds:
        stmts.append(Stmt(Call("runtime.parallel.ep", "shard_experts", (Code("model"), Code("experts_fsdp_mesh")),
                               (("reshard_after_forward", reshard), *DTYPE.items(), *extra)),
                          note="experts first, over the ranks that hold the same experts; then the layers and "
                               "the root over all"))
    stmts.append(Stmt(Call("runtime.parallel.fsdp", "apply_fsdp", (Code("model"), Code("mesh.fsdp"), r.globs()),
                           (("reshard_after_forward", reshard), *DTYPE.items(), *extra)), where=r.lines()))
    why = "FSDP2 units bottom-up (each matching module, then the root): one unit's full weights at a time"
    return [r.step(why, stmts)]


def replicate(r: Rules) -> list[Step]:
    stmts = [Stmt(Call("runtime.parallel.ddp", "apply_replicate", (Code("model"), Code("mesh.replicate"))),
                  ("model",), where=r.lines())]
    why = "plain replication: every rank holds the whole model and gradients are all-reduced"
    return [r.step(why, stmts)]


# kind -> builder, in the one order that composes
STEPS = {"lora": lora, "tp": tp, "ep": ep, "sp": sp, "freeze": freeze, "checkpoint": checkpoint,
         "offload": offload, "compile": compile_, "fsdp": fsdp, "replicate": replicate}
ORDER = list(STEPS)
# rule kinds that are not set-up steps: they shape the optimizer (planc/lower.py)
OPTIMIZER_RULES = {"lr"}
# the steps that spread the model or its data over ranks (a one-process reference drops them)
PARALLEL = {"tp", "ep", "sp", "fsdp", "replicate"}


def build_steps(plan, file: str, matches: dict, model_kind: str = "text") -> list[Step]:
    """The plan's parallelize steps in ORDER. `matches`: (rule index, glob index) -> module names;
    `model_kind`: text | vl (the model tree's kind)."""
    modules = {}
    for i, rule in enumerate(plan.rules):
        names: list[str] = []
        for j in range(len(rule.globs)):
            names += [n for n in matches.get((i, j), []) if n not in names]
        modules[id(rule)] = names
    kinds = {r.kind for r in plan.rules}
    unknown = kinds - set(STEPS) - OPTIMIZER_RULES
    if unknown:
        raise ValueError(f"no parallelize step for rule kinds {sorted(unknown)}")
    out: list[Step] = []
    for kind in ORDER:
        rules = [r for r in plan.rules if r.kind == kind]
        if rules:
            out += STEPS[kind](Rules(kind, rules, file, kinds, modules, model_kind,
                                     [r for r in plan.rules if r.kind == "ep"]))
    return out
