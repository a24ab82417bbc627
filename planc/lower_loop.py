"""Lower the training-loop features of a plan (docs/loop.md): the settings they read and what the
template needs to write their lines. A plan that uses none of them gets no setting and no line."""
from __future__ import annotations

from .checks.loop import block_statement
from .ir import LoopIR, SourceIR

# build_loader keywords of the data settings, as planc/lower.py's _LOADER_KEYS; the validation loader
# fixes warmup_steps (the set must not depend on it) and neither takes a streaming source's buffer
_VAL_KEYS = ("data.tokens", "data.chat_template", "data.system_prompt", "data.truncation")
_EPOCH_KEYS = ("data.tokens", "data.warmup_steps", "data.chat_template", "data.system_prompt", "data.truncation")


def source_fields(s, sft: bool, mixture: bool) -> list[str]:
    """The Source keywords a script passes for a plan source (as planc/lower.py does for data)."""
    fields = ["path", "format", "kind"] if sft else ["path", "format"]
    fields.append("messages" if s["kind"] == "sft" else "text")
    if mixture:
        fields.append("weight")
    return fields


def lower_loop(lw) -> LoopIR:
    """`lw`: planc.lower._Lowering, after the data and train settings are added."""
    from .checks.data import resolved_format

    p = lw.plan
    loop = LoopIR()
    keys = {s.key for s in lw.settings}
    if p["train.epochs"] is not None:
        loop.epochs = True
        loop.epoch_kwargs = [(k.split(".")[1], f"cfg.{k}") for k in _EPOCH_KEYS if k in keys]
        loop.where["epochs"] = lw.where("train.epochs")
    if p.val_sources:
        sft = any(s["kind"] == "sft" for s in p.val_sources)
        for s in p.val_sources:
            fields = source_fields(s, sft, len(p.val_sources) > 1)
            for f in fields:
                value = s[f]
                if f == "format" and value is None:
                    value = resolved_format(s)
                lw.add(f"validation.{s.name}.{f}", value)
            loop.val_sources.append(SourceIR(s.name, fields))
        every = p["validation.every"]
        lw.add("validation.every", every or p["train.steps"] or 0,
               None if every else "0: the last step only" if loop.epochs else "the last step")
        batches = p["validation.batches"]
        lw.add("validation.batches", batches or 0, None if batches else "0: one whole pass of the source")
        loop.val_loader_kwargs = [(k.split(".")[1], f"cfg.{k}") for k in _VAL_KEYS if k in keys]
        loop.where["validation"] = lw.block_where("validation")
    st = block_statement(p, "train", "profile")
    if st is not None:
        loop.profile = True
        lw.add("profile.enabled", True, f"{lw.file}:{st.span.line}")
        for k in ("profile.first", "profile.steps"):
            lw.add(k, None, lw.where(k) if p.settings[k].written else f"{lw.file}:{st.span.line} (default)")
        loop.where["profile"] = f"{lw.file}:{st.span.line}"
    if p["train.tracker"] is not None:
        loop.tracker = True
        lw.add("train.trackers", [p["train.tracker"]], lw.where("train.tracker"))
    if p["train.mfu"]:
        dtype = "cfg.train.param_dtype" if "train.param_dtype" in keys else "cfg.model.dtype"
        kw = f"seq_len=cfg.data.max_len, device=info.device, dtype=models.DTYPES[{dtype}]"
        if "mesh.tp" in keys:
            kw += ", tp=cfg.mesh.tp"
        if p["train.peak_tflops"] is not None:
            lw.add("train.peak_tflops")
            kw += ", peak=cfg.train.peak_tflops"
        loop.mfu = kw
        loop.where["mfu"] = lw.where("train.mfu")
    return loop
