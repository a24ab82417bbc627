"""Data rules: sources exist in a readable format with the named fields; the tokenizer fits the
model; batching budgets fit max_len."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from runtime.vocab import CHAT_TEMPLATES, SOURCE_FORMATS

from .. import paths
from ..diagnostics import elide

RULES = {
    "data-source": "every source path exists and holds files",
    "data-format": f"every source is in a readable format ({' '.join(SOURCE_FORMATS)})",
    "data-field": "the text / messages field exists in the first records of each source",
    "tokenizer": "the tokenizer is a local HF tokenizer directory",
    "vocab-size": "the tokenizer's vocabulary fits the model's embedding",
    "max-len": "max_len fits the model's position embeddings (an error for a learned position table, a "
               "warning for rotary ones, which extrapolate)",
    "pack-budget": "a dynamic token budget holds at least one max_len sample",
    "chat-template": "sft sources have a chat template (the tokenizer's, or the built-in chatml)",
    "pack-micro-batch": "dynamic batching fills each micro-batch by tokens: micro_batch = 1",
    "data-records": "the first records decode (a bad one is a warning under on_bad_record = skip)",
}

PEEK = 5


def is_vl(ctx) -> bool:
    """A vision-language model: its sources are conversations with media (planc/checks/vision.py)."""
    return ctx.tree is not None and ctx.tree.kind != "text"


def runtime_source(src):
    """The runtime's own Source for a plan source (so the checker reads data exactly as training will)."""
    from runtime.data import Source

    return Source(name=src.name, path=src["path"], format=src["format"], kind=src["kind"], text=src["text"],
                  messages=src["messages"], weight=src["weight"], streaming=src["streaming"])


def resolved_format(src) -> str | None:
    """The source's format as the loader will read it (None when it cannot be told)."""
    from runtime.data.sources import infer_format

    try:
        return src["format"] or infer_format(src["path"])
    except (ValueError, OSError):
        return None


def check(ctx) -> None:
    p = ctx.plan
    if "data" not in p.blocks:
        return
    first = len(ctx.diags)
    if ctx.skip_files:
        ctx.notes.append("not checked: the data and tokenizer files (--skip-files): sources, fields, records, "
                         "the tokenizer's vocabulary and chat template")
    else:
        for src in p.sources:
            check_source(ctx, src)
        _check_tokenizer(ctx)
    max_len = p["data.max_len"]
    if p["data.pack"] == "dynamic" and p["train.micro_batch"] not in (None, 1):
        ctx.error("pack-micro-batch", f"pack = dynamic fills each micro-batch to a token budget, so micro_batch "
                  f"must be 1, not {p['train.micro_batch']}", p.span("train.micro_batch"),
                  "set micro_batch = 1; global_batch then counts micro-batches of at most `tokens` tokens")
    if p["data.pack"] == "dynamic" and p["data.tokens"] is not None and p["data.tokens"] < max_len:
        ctx.error("pack-budget", f"a budget of {p['data.tokens']} tokens cannot hold one {max_len}-token sample",
                  p.span("data.tokens"), f"use tokens >= {max_len} (max_len)")
    if ctx.tree is not None:
        mpe = getattr(ctx.tree.text_config, "max_position_embeddings", None)
        table = _position_table(ctx.tree.model)
        if table is not None and max_len > table:
            ctx.error("max-len", f"max_len ({max_len}) exceeds the {table} positions of the model's learned "
                      "position embeddings: a longer document indexes past the table", p.span("data.max_len"),
                      f"use max_len <= {table}")
        elif mpe and max_len > mpe:
            ctx.warn("max-len", f"max_len ({max_len}) exceeds the model's max_position_embeddings ({mpe})",
                     p.span("data.max_len"), f"use max_len <= {mpe}, or extend the rotary scaling in the config")
    refused = any(d.severity == "error" and (d.rule in RULES or i >= first) for i, d in enumerate(ctx.diags))
    if not ctx.skip_files and p.sources and not refused and not is_vl(ctx):
        ctx.data_estimate = _mixture(ctx)
    if not p.sources and "data" in p.blocks:
        ctx.error("data-source", "the data block names no source", p.blocks["data"],
                  'add `source "NAME" { path = "..." }`')


def _position_table(model) -> int | None:
    """Positions a learned position-embedding table holds (GPT-2's wpe, OPT's embed_positions, less
    its offset), or None for models without one (rotary: longer rows run, extrapolated)."""
    from torch import nn

    if model is None:
        return None
    embed, sizes = model.get_input_embeddings(), []
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and m is not embed and ("position" in (name + type(m).__name__).lower()
                                                               or name.endswith(".wpe")):
            sizes.append(m.num_embeddings - int(getattr(m, "offset", 0) or 0))
    return min(sizes) if sizes else None


def check_source(ctx, src) -> None:
    """One source read as training reads it (planc/checks/loop.py reads validation sources with it)."""
    import itertools

    from runtime.data.sources import data_files, infer_format, read_records

    path = src["path"]
    if path is None:
        return
    if src["weight"] is not None and src["weight"] <= 0:
        # one mistake, one diagnostic: the source is not read (the runtime would refuse it too)
        ctx.error("range", f"source {src.name!r}: weight must be more than 0", src.settings["weight"].span,
                  "a weight is the source's share of the mixture; drop the source instead")
        return
    span = src.settings["path"].span or src.span
    fmt_span = src.settings["format"].span or span
    where = "give a file, a directory of files, or a glob (relative to where you run planc)"
    try:
        paths.check(path)
        is_glob = any(ch in path for ch in "*?[")
        missing = not is_glob and not paths.exists(path)
    except paths.PathError as e:
        ctx.error("data-source", f"source {src.name!r}: cannot use {elide(path)} as a path: {e}", span, where)
        return
    try:
        fmt = src["format"] or infer_format(path)
    except (ValueError, OSError) as e:
        if missing:
            ctx.error("data-source", f"source {src.name!r}: {path} does not exist", span, where)
        else:
            ctx.error("data-format", f"source {src.name!r}: {paths.reason(e, path) if isinstance(e, OSError) else e}",
                      fmt_span, "add `format = jsonl` (or json, parquet, arrow, csv, text, hf_disk)")
        return
    try:
        files = data_files(path, fmt)
        odd = next((f for f in files if not paths.is_file(f)), None)
    except (OSError, ValueError, paths.PathError) as e:
        msg = paths.reason(e, path) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else e
        ctx.error("data-source", f"source {src.name!r}: {msg}", span, where)
        return
    if odd is not None:  # a device (/dev/zero) or a pipe: no records end, nothing can be peeked
        ctx.error("data-source", f"source {src.name!r}: {elide(odd)} is not a regular file", span, where)
        return
    try:
        head = list(itertools.islice(read_records(runtime_source(src)), PEEK))
    except Exception as e:  # the readers raise their own kinds for unreadable files
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        ctx.error("data-format", f"source {src.name!r}: {files[0]} is not readable as {fmt}: {msg}", fmt_span,
                  "fix the file or the `format`")
        return
    if not head:
        ctx.warn("data-source", f"source {src.name!r}: {path} holds no records", span)
        return
    broken = [r for r in head if r.error is not None]
    good = [r for r in head if r.error is None and isinstance(r.value, dict)]
    if broken:
        fail = ctx.plan["data.on_bad_record"] == "fail"
        (ctx.error if fail or not good else ctx.warn)(
            "data-records", f"source {src.name!r}: bad record at {broken[0].where}: {broken[0].error}"
            + ("" if good else " (and no good one among the first records)"), span,
            "with on_bad_record = skip such records are counted and reported, then skipped" if not fail
            else "fix the record, or set on_bad_record = skip")
        if not good:
            return
    if is_vl(ctx):  # conversations with media: the vision pass renders them as training will
        return
    field = src["messages"] if src["kind"] == "sft" else src["text"]
    key = "messages" if src["kind"] == "sft" else "text"
    if not any(field in r.value for r in good):
        fields = sorted({k for r in good for k in r.value})
        ctx.error("data-field", f"source {src.name!r}: no field {field!r} in the first records of {Path(files[0]).name}",
                  src.settings[key].span or src.span,
                  f"fields there: {', '.join(fields[:12])}" + (f" — write `{key} = \"{fields[0]}\"`" if len(fields) == 1 else ""))
        return
    if src["kind"] == "sft":
        from runtime.data.chat import ConversationError, check_messages

        problems = []
        for r in good:
            try:
                check_messages(r.value.get(field))
            except ConversationError as e:
                problems.append(f"{r.where}: {e.reason}")
        if len(problems) == len(good):
            ctx.error("data-records", f"source {src.name!r}: no usable conversation in the first records "
                      f"({problems[0]})", src.settings[key].span or src.span,
                      f"`{field}` must be a list of {{role, content}} messages with an assistant turn")


def _check_tokenizer(ctx) -> None:
    p = ctx.plan
    path = p["data.tokenizer"]
    if path is None:
        return
    d = Path(path)
    span = p.value_span("data.tokenizer")
    fix = "give a directory with tokenizer.json (e.g. the model directory)"
    try:
        if not paths.is_dir(d) or not any(paths.exists(d / f) for f in ("tokenizer.json", "tokenizer_config.json",
                                                                         "vocab.json")):
            ctx.error("tokenizer", f"{path} is not a local HF tokenizer directory", span, fix)
            return
        odd = next((d / f for f in _TOKENIZER_FILES if paths.exists(d / f) and not paths.is_file(d / f)), None)
        if odd is not None:  # a directory, a device or a pipe where the loader expects a file
            ctx.error("tokenizer", f"{elide(str(odd))} is not a regular file", span, fix)
            return
        vocab, template = _tokenizer_facts(d)
    except paths.PathError as e:
        ctx.error("tokenizer", f"cannot use {elide(path)} as a tokenizer directory: {e}", span, fix)
        return
    if ctx.tree is not None and vocab:
        model_vocab = getattr(ctx.tree.text_config, "vocab_size", None)
        if model_vocab and vocab > model_vocab:
            ctx.error("vocab-size", f"the tokenizer has {vocab} tokens but the model's embedding has {model_vocab}",
                      span, f"raise vocab_size in the config to at least {vocab}, or use the model's own tokenizer")
    if is_vl(ctx):  # the vision pass checks the template the processor uses
        return
    if p["data.chat_template"] not in CHAT_TEMPLATES:
        ctx.error("chat-template", f"chat_template = {p['data.chat_template']} is for vision-language models; "
                  f"this model is a text model", p.value_span("data.chat_template"),
                  f"use one of {', '.join(CHAT_TEMPLATES)}")
        return
    if any(s["kind"] == "sft" for s in p.sources) and p["data.chat_template"] == "tokenizer" and not template:
        src = next(s for s in p.sources if s["kind"] == "sft")
        ctx.error("chat-template", f"source {src.name!r} is sft, but the tokenizer at {path} has no chat template",
                  src.settings["kind"].span or src.span, "add `chat_template = chatml` to data (a built-in template)")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model")


def _tokenizer_facts(d: Path) -> tuple[int | None, bool]:
    """(vocabulary size with added tokens, has a chat template) read from the files, without loading.
    A file that cannot be read as the JSON it should be tells nothing (the tokenizer load reports it)."""
    vocab = None
    tj = d / "tokenizer.json"
    if paths.exists(tj):
        try:
            data = json.loads(paths.read_text(tj))
            ids = list((data.get("model") or {}).get("vocab", {}).values()) if isinstance(
                (data.get("model") or {}).get("vocab"), dict) else []
            ids += [t.get("id", 0) for t in data.get("added_tokens", [])]
            vocab = max(ids) + 1 if ids else None
        except (paths.PathError, ValueError, RecursionError, AttributeError, TypeError):
            vocab = None
    template = paths.exists(d / "chat_template.jinja") or paths.exists(d / "chat_template.json")
    tc = d / "tokenizer_config.json"
    if paths.exists(tc):
        try:
            template = template or bool(json.loads(paths.read_text(tc)).get("chat_template"))
        except (paths.PathError, ValueError, RecursionError, AttributeError):
            pass
    return vocab, template


def _mixture(ctx) -> str | None:
    """Expected tokens per step, per source (the runtime's own estimate over the first records)."""
    from runtime.data.checks import estimate_mixture, format_estimate

    p = ctx.plan
    try:
        tok = cached_tokenizer(p["data.tokenizer"])
        est = estimate_mixture([runtime_source(s) for s in p.sources], tok, p["data.max_len"], p["data.pack"],
                               p["train.global_batch"], p["train.micro_batch"], tokens=p.settings["data.tokens"].value if "data.tokens" in p.settings else None,
                               chat_template=p["data.chat_template"], system_prompt=p["data.system_prompt"],
                               truncation=p["data.truncation"])
    except Exception as e:  # the estimate is a courtesy; a tokenizer that cannot load is reported here
        ctx.warn("tokenizer", f"cannot estimate tokens per step: {(str(e).splitlines() or [type(e).__name__])[0]}",
                 p.value_span("data.tokenizer"))
        return None
    return format_estimate(est)


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str):
    from runtime.data import load_tokenizer

    return load_tokenizer(path)
