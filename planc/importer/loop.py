"""VeOmni's training-loop extras -> plan lines: LoRA (`model.lora_config`), the W&B / TensorBoard
trackers (`train.wandb.*`, `train.use_wandb`, `train.use_tensorboard`) and the profiler window
(`train.profile.*`, `train.enable_profiling`, `train.profile_*_step`)."""
from __future__ import annotations

from .plantext import Block, Word, literal
from .readout import Settings

__all__ = ["carry_lora", "carry_trackers", "carry_profile"]

# peft's own default targets for the Llama / Qwen decoder families, used when the config names none
_DEFAULT_TARGETS = ["q_proj", "v_proj"]
# VeOmni's lora_config keys (and the peft spellings it also accepts) that the plan carries
_LORA_KEYS = {"rank": ("rank", "r"), "alpha": ("alpha", "lora_alpha"), "targets": ("lora_modules", "target_modules"),
              "dropout": ("lora_dropout",)}


def carry_lora(c: Settings, train: Block) -> None:
    """`lora "**.NAME" ... rank alpha dropout`: each VeOmni target is a module name that peft matches
    at the end of a dotted name, which is what the glob `**.NAME` matches. The config is a YAML
    mapping (one entry per key) or, from a command line, one JSON value."""
    whole, e = c.get("model.lora_config")
    if e is not None and not isinstance(whole, dict):
        if whole:
            c.note(e, "not carried over: lora_config is not a mapping")
        return
    prefix = "model.lora_config."
    found = {k[len(prefix):]: (ent.value, ent) for k, ent in c.entries.items() if k.startswith(prefix)}
    if whole:
        found = {k: (v, e) for k, v in whole.items()}
    if not found:
        return
    first = next(iter(found.values()))[1]

    def pick(field, default=None):
        for k in _LORA_KEYS[field]:
            if k in found and found[k][0] is not None:
                c.get(prefix + k)  # read
                return found[k][0]
        return default

    targets = pick("targets")
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        targets = _DEFAULT_TARGETS
        c.note(first, f"no lora_modules: peft's defaults for Llama/Qwen decoders ({', '.join(targets)}) are written",
               key="model.lora_config")
    body = {"rank": int(pick("rank", 8)), "alpha": float(pick("alpha", 8)), "dropout": float(pick("dropout", 0.0))}
    train.stmt("lora", *(literal(f"**.{t}") for t in targets), *(f"{k} = {literal(v)}" for k, v in body.items()),
               comment="model.lora_config (VeOmni's defaults rank 8, alpha 8 where it gives none)")
    known = {k for names in _LORA_KEYS.values() for k in names}
    for key in sorted(set(found) - known):
        c.get(prefix + key)
        c.note(found[key][1], "not carried over: planc's LoRA takes targets, rank, alpha and dropout",
               key=prefix + key)


def carry_trackers(c: Settings, train: Block) -> None:
    """`tracker = wandb | tensorboard` (a plan logs to one besides metrics.jsonl; W&B wins)."""
    wandb, we = c.get("train.wandb.enable", "train.use_wandb", default=False)
    board, be = c.get("train.use_tensorboard", "train.tensorboard.enable", default=False)
    if wandb:
        train.set("tracker", Word("wandb"), comment=f"{we.key} (offline unless WANDB_MODE says otherwise)")
        if board:
            c.note(be, "not carried over: a plan logs to one tracker besides metrics.jsonl, and W&B was chosen")
    elif board:
        train.set("tracker", Word("tensorboard"), comment=be.key)
    for key in ("train.wandb.project", "train.wandb.name", "train.wandb.id", "train.wandb_project", "train.wandb_name",
                "train.tensorboard_dir", "train.tensorboard.dir"):
        _, e = c.get(key)
        if e is not None:
            c.note(e, "not carried over: planc names the W&B project `planc` and the run after the plan, and writes "
                      "TensorBoard files under the output directory" if (wandb or board) else
                      "unused: no tracker is enabled")


def carry_profile(c: Settings, train: Block) -> None:
    """`profile { first steps }`: VeOmni traces the steps in [start_step, end_step)."""
    on, _ = c.get("train.profile.enable", "train.enable_profiling", default=False)
    start, se = c.get("train.profile.start_step", "train.profile_start_step", default=1)
    end, ee = c.get("train.profile.end_step", "train.profile_end_step", default=2)
    if not on:
        for e in (se, ee):
            if e is not None:
                c.note(e, "unused: profiling is not enabled")
        return
    if int(end) <= int(start):
        c.note(ee or se, f"not carried over: an empty profiling window [{start}, {end})")
        return
    train.stmt("profile", body={"first": int(start), "steps": int(end) - int(start)},
               comment=f"VeOmni's profiled steps [{start}, {end})")
    for key in ("trace_dir", "record_shapes", "profile_memory", "with_stack", "rank0_only"):
        _, e = c.get(f"train.profile.{key}", f"train.profile_{key}")
        if e is not None:
            c.note(e, "not carried over: planc traces every rank into OUT/profile/ with its own options")
