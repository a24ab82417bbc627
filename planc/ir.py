"""The lowered plan: what the template needs and nothing else (codegen reads only this).

The set-up of a script — the mesh, the model, its kernels, every parallelize step and the optimizer
— is a list of `Stmt`s: calls of runtime functions with their arguments. The template renders them
as code (planc/emit.py) and `planc check --dry-run` executes them (planc/dryrun.py), so the two
cannot disagree about what a plan does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Code:
    """A Python expression over the names the script defines (`model`, `mesh.fsdp`, `cfg.train.lr`)."""

    src: str


@dataclass(frozen=True)
class Call:
    """A call of `module.name`. `via` is how the script spells the module when it imports the
    module itself (`from runtime import dist` -> `dist.build_mesh`); without it the function is
    imported by name (`from runtime.parallel.fsdp import apply_fsdp`)."""

    module: str
    name: str
    args: tuple = ()  # Expr, ...
    kwargs: tuple = ()  # (keyword, Expr), ...
    via: str | None = None

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Items:
    """A list written one item per line, each with its own plan-line comment."""

    items: tuple  # (Expr, comment), ...
    prefix: Code | None = None  # `tp_rules + [...]`


Expr = Union[Code, Call, Items, Any]  # anything else is a plain literal (rendered with repr)


@dataclass
class Stmt:
    """One statement of the set-up: `[assign =] call  # where`, optionally wrapped at `wrap` columns."""

    call: Call
    assign: tuple[str, ...] = ()
    where: str | None = None  # the plan line, as a trailing comment
    note: str | None = None  # a comment line above the statement
    wrap: int | None = 100  # None: one line whatever its length
    span: Any = None  # the plan Span a failure of this statement is reported at (dry run)


@dataclass
class SettingLine:
    key: str  # "train.lr"
    value: Any  # a plain Python value, emitted with repr()
    where: str  # "demo.veo:27", or "demo.veo:25 (default)"


@dataclass
class Step:
    """One parallelize step, in the order the compiler applies them: its statements, the plan line
    it comes from and why it sits where it does."""

    kind: str  # a key of planc.steps.STEPS
    where: str
    why: str
    stmts: list[Stmt] = field(default_factory=list)
    # (plan span, module names) of each rule behind the step: the dry run blames the rule whose
    # modules a runtime error names
    blame: list[tuple[Any, list[str]]] = field(default_factory=list)


@dataclass
class SourceIR:
    name: str
    fields: list[str]  # the source keys the script passes (path, format, text, ...)


def _wrapped(pairs, indent: int) -> str:
    """`k=expr, ` keywords, each line of them under ~76 columns, each line ending in a newline and
    the indent, so the keyword written after them starts a line of its own ("" for none)."""
    lines, line = [], ""
    for k, e in pairs:
        if line and len(line) + len(k) + len(e) + 3 > 76:
            lines.append(line.rstrip())
            line = ""
        line += f"{k}={e}, "
    lines += [line.rstrip()] if line else []
    return "".join(f"{x}\n{' ' * indent}" for x in lines)


@dataclass
class LoopIR:
    """The training-loop features a plan uses (planc/lower_loop.py); each adds lines only when on."""

    epochs: bool = False  # the run's length is counted from the data at start-up (`steps`)
    val_sources: list = field(default_factory=list)  # SourceIR of the validation block ([] = no validation)
    val_loader_kwargs: list = field(default_factory=list)  # build_val_loader keyword -> expression
    profile: bool = False
    tracker: bool = False
    mfu: str = ""  # the MFU(...) keywords after `model, ` ("" = no MFU)
    epoch_kwargs: list = field(default_factory=list)  # epoch_steps keyword -> expression
    where: dict = field(default_factory=dict)  # feature -> plan line

    @property
    def val_kwargs_text(self) -> str:
        return _wrapped(self.val_loader_kwargs, 41)

    @property
    def epoch_kwargs_text(self) -> str:
        return _wrapped(self.epoch_kwargs, 20)

    @property
    def modules(self) -> list[str]:
        """`from runtime import ...` names the loop features need."""
        return [m for m, on in (("mfu", self.mfu), ("profiling", self.profile), ("trackers", self.tracker),
                                ("validation", self.val_sources)) if on]


@dataclass
class ScriptIR:
    name: str
    plan_path: str  # as given to planc (sanitised for comments)
    plan_file: str  # basename, for `# demo.veo:12` comments
    out_path: str  # generated/<name>.py
    world: int
    device: str
    description: str
    settings: list[SettingLine]
    where: dict[str, str]  # section -> "demo.veo:11" or "demo.veo:13-16"
    mesh: dict[str, str]  # mesh degree -> settings key ("dp_shard" -> "mesh.dp_shard")
    build_mesh: Stmt
    build_model: Stmt
    steps: list[Step]
    build_optimizer: Stmt
    sources: list[SourceIR]
    apply_kernels: list[Stmt] = field(default_factory=list)
    imports: dict[str, list[str]] = field(default_factory=dict)  # module -> names, in import order
    loader_kwargs: list[tuple[str, str]] = field(default_factory=list)  # build_loader keyword -> expression
    pad_multiple: str = ""  # rows padded to a multiple of this expression (sequence sharding)
    one_process: str = ""  # the overrides that run a data-parallel plan as one process
    gpus_per_node: int = 8  # processes per node (mesh.gpus_per_node): more than that spans nodes
    launch: str = ""  # the command line that starts the script (a node's, when it spans nodes)
    launch_lines: list[str] = field(default_factory=list)  # how to start it, as the docstring says
    tp_loss: bool = False  # vocab-sharded logits: cross-entropy and backward under loss_parallel
    tp_sequence: bool = False  # sequence-parallel norms: an explicit block-causal mask is needed
    model_parallel: bool = False  # tp, ep or sp steps: the docstring says how to verify the layout
    block_mask: bool = False  # the loop builds the packed documents' mask itself (tp sequence without sp)
    moe_aux: bool = False  # an MoE model: its load-balancing loss joins the backward
    kernels: dict[str, str] = field(default_factory=dict)  # op -> settings key
    checkpoint: bool = False
    modality: str = "text"  # text | vl: the data path, the forward and the export (planc.model_tree.ModelTree.kind)
    processor_kwargs: list[tuple[str, str]] = field(default_factory=list)  # VL build_processor keyword -> expression
    features: set[str] = field(default_factory=set)  # step kinds, plus "kernels"
    objective: str = "causal_lm"  # causal_lm | block_diffusion (runtime.vocab.OBJECTIVES)
    loop: LoopIR = field(default_factory=LoopIR)  # validation, epochs, profiling, trackers, MFU

    def setup(self) -> list[tuple[str, list[Stmt]]]:
        """The set-up in the order the script runs it: what the dry run executes."""
        return ([("mesh", [self.build_mesh]), ("model", [self.build_model]), ("kernels", self.apply_kernels)]
                + [(s.kind, s.stmts) for s in self.steps] + [("optimizer", [self.build_optimizer])])
