"""Training-loop rules: the run's length (steps or epochs), the validation block, profiling,
trackers and MFU (docs/loop.md: the runtime each feeds)."""
from __future__ import annotations

import importlib.util

from ..syntax import Stmt
from .data import cached_tokenizer, check_source, is_vl, runtime_source

RULES = {
    "train-length": "train gives exactly one of steps and epochs",
    "epochs-source": "epochs count passes over map-style text sources (a streaming source has no length)",
    "val-source": "the validation block names map-style text sources (a mixture of them needs `batches`)",
    "val-every": "validation.every <= the run's steps (the last step is always validated)",
    "profile-window": "the profiled steps fall inside the run",
    "tracker-package": "the tracker's package is installed (the script stops at start-up without it)",
    "mfu-peak": "peak_tflops is used only with mfu = true",
}


def block_statement(plan, block: str, name: str) -> Stmt | None:
    """The statement `name` written in `block` (e.g. train's `profile { }`), or None."""
    for entry in plan.doc.entries:
        if isinstance(entry, Stmt) and entry.name == block and entry.body is not None:
            for st in entry.body.entries:
                if isinstance(st, Stmt) and st.name == name:
                    return st
    return None


def check(ctx) -> None:
    p = ctx.plan
    if "train" not in p.blocks:
        return
    steps, epochs = p["train.steps"], p.settings.get("train.epochs")
    epochs = epochs.value if epochs is not None else None
    if steps is None and epochs is None:
        ctx.error("train-length", "`train` needs `steps` or `epochs`", p.blocks["train"],
                  "add `steps = N` (optimizer steps) or `epochs = N` (passes over the data)")
        return
    if steps is not None and epochs is not None:
        ctx.error("train-length", "`train` gives both `steps` and `epochs`", p.span("train.epochs"),
                  "keep one: the run's length is either steps or passes over the data")
        return
    if epochs is not None:
        _check_epochs(ctx, epochs)
    if "validation" in p.blocks:
        _check_validation(ctx)
    _check_profile(ctx)
    _check_tracker(ctx)
    peak = p.settings.get("train.peak_tflops")
    if peak is not None and peak.written and not p["train.mfu"]:
        ctx.warn("mfu-peak", "peak_tflops has no effect without mfu = true", p.span("train.peak_tflops"),
                 "add `mfu = true` to train, or drop peak_tflops")


def _check_epochs(ctx, epochs: int) -> None:
    p = ctx.plan
    streaming = [s for s in p.sources if s["streaming"]]
    if streaming:
        s = streaming[0]
        ctx.error("epochs-source", f"epochs need map-style sources; source {s.name!r} is streaming (no known length)",
                  s.settings["streaming"].span or s.span, "give `steps` instead, or drop `streaming = true`")
        return
    if is_vl(ctx):
        ctx.error("epochs-source", "epochs are counted over text sources; this is a vision-language plan",
                  p.span("train.epochs"), "give `steps` instead")
        return
    if ctx.skip_files or not p.sources or not ctx.ok:
        ctx.notes.append("not checked: the steps of train.epochs (they are counted from the data at start-up)")
        return
    from runtime.data.epochs import epoch_steps, format_epochs

    try:
        plan = epoch_steps([runtime_source(s) for s in p.sources], cached_tokenizer(p["data.tokenizer"]),
                           **epoch_kwargs(p))
    except Exception as e:  # the data pass reported what it could; this is the loader's own refusal
        ctx.error("epochs-source", f"cannot count the steps of {epochs} epochs: "
                  f"{(str(e).splitlines() or [type(e).__name__])[0]}", p.span("train.epochs"), "give `steps` instead")
        return
    ctx.notes.append(format_epochs(plan))
    ctx.epoch_steps = plan.steps


def epoch_kwargs(p) -> dict:
    """epoch_steps' keywords from a plan (those the script passes too)."""
    kw = dict(epochs=p["train.epochs"], max_len=p["data.max_len"], pack=p["data.pack"],
              global_batch=p["train.global_batch"], micro_batch=p["train.micro_batch"], seed=p["train.seed"],
              shuffle=p["data.shuffle"], on_bad_record=p["data.on_bad_record"])
    if p["data.pack"] == "dynamic":
        kw.update(tokens=p["data.tokens"], warmup_steps=p["data.warmup_steps"])
    if any(s["kind"] == "sft" for s in p.sources):
        kw.update(chat_template=p["data.chat_template"], system_prompt=p["data.system_prompt"],
                  truncation=p["data.truncation"])
    return kw


def run_steps(ctx) -> int | None:
    """The run's steps: written, or counted from epochs (None when they could not be counted)."""
    return ctx.plan["train.steps"] or getattr(ctx, "epoch_steps", None)


def _check_validation(ctx) -> None:
    p = ctx.plan
    if is_vl(ctx):
        ctx.error("val-source", "validation runs over text sources; this is a vision-language plan",
                  p.blocks["validation"], "drop the validation block")
        return
    if not p.val_sources:
        ctx.error("val-source", "the validation block names no source", p.blocks["validation"],
                  'add `source "held" { path = "..." }`')
        return
    for s in p.val_sources:
        if s["streaming"]:
            ctx.error("val-source", f"validation source {s.name!r} is streaming: a streaming source is split by rank, "
                      "so the validation set would change with the layout", s.settings["streaming"].span or s.span,
                      "drop `streaming = true` (validation sets are small)")
            return
    if len(p.val_sources) > 1 and p["validation.batches"] is None:
        ctx.error("val-source", "a validation mixture needs `batches` (a whole pass is defined for one source)",
                  p.blocks["validation"], "add `batches = N` to the validation block")
        return
    if not ctx.skip_files:
        for s in p.val_sources:  # read exactly as the training sources are
            check_source(ctx, s)
    every, steps = p["validation.every"], run_steps(ctx)
    if every is not None and steps is not None and every > steps:
        ctx.error("val-every", f"validation every {every} steps, but the run has {steps}",
                  p.span("validation.every"), f"use every <= {steps} (the last step is always validated)")


def _check_profile(ctx) -> None:
    p = ctx.plan
    st = block_statement(p, "train", "profile")
    steps = run_steps(ctx)
    if st is None or steps is None:
        return
    last = p["profile.first"] + p["profile.steps"] - 1
    if last > steps:
        ctx.error("profile-window", f"the profile covers steps {p['profile.first']}..{last}, but the run has {steps}",
                  st.name_span, f"profile steps within 1..{steps} (the trace is written when the window ends)")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _check_tracker(ctx) -> None:
    p = ctx.plan
    kind = p.settings.get("train.tracker")
    if kind is None or kind.value is None:
        return
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[kind.value]
    package = "tensorboard" if kind.value == "tensorboard" else "wandb"
    if not installed(package):
        ctx.warn("tracker-package", f"tracker = {kind.value} needs the {package} package ({module}), which is "
                 "not installed here", p.value_span("train.tracker"), f"pip install -e '.[{kind.value}]'")
