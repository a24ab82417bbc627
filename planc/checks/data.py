"""Data rules: sources exist in a readable format with the named fields; the tokenizer fits the
model; batching budgets fit max_len."""
from __future__ import annotations

import glob as globmod
import json
from pathlib import Path

RULES = {
    "data-source": "every source path exists and holds files",
    "data-format": "every source is in a readable format (jsonl json parquet arrow csv text hf_disk)",
    "data-field": "the text / messages field exists in the first records of each source",
    "tokenizer": "the tokenizer is a local HF tokenizer directory",
    "vocab-size": "the tokenizer's vocabulary fits the model's embedding",
    "max-len": "max_len fits the model's position embeddings",
    "pack-budget": "a dynamic token budget holds at least one max_len sample",
    "chat-template": "sft sources have a chat template (the tokenizer's, or the built-in chatml)",
}

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv",
              ".txt": "text", ".md": "text"}
PEEK = 5


def source_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            return [p]
        return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in EXTENSIONS)
    return sorted(Path(q) for q in globmod.glob(path, recursive=True) if Path(q).is_file())


def infer_format(path: str, files: list[Path]) -> str | None:
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        return "hf_disk"
    exts = {EXTENSIONS.get(f.suffix) for f in files}
    return exts.pop() if len(exts) == 1 else None


def peek(path: Path, fmt: str) -> list[dict]:
    """The first few records of one file, as dicts (raises ValueError on unreadable data)."""
    if fmt == "jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
                    if not isinstance(rec, dict):
                        raise ValueError(f"{path}:{lineno}: a record must be a JSON object")
                    out.append(rec)
                if len(out) >= PEEK:
                    break
        return out
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data if isinstance(data, list) else data.get("data", [data]) if isinstance(data, dict) else []
        return [r for r in data[:PEEK] if isinstance(r, dict)]
    if fmt == "text":
        return [{"text": path.read_text(encoding="utf-8", errors="replace")[:2000]}]
    if fmt == "csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            return [row for _, row in zip(range(PEEK), csv.DictReader(f))]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).read_row_group(0).slice(0, PEEK).to_pylist()
    if fmt == "arrow":
        import pyarrow as pa

        with open(path, "rb") as f:
            try:
                table = pa.ipc.open_stream(f).read_all()
            except pa.ArrowInvalid:
                f.seek(0)
                table = pa.ipc.open_file(f).read_all()
        return table.slice(0, PEEK).to_pylist()
    if fmt == "hf_disk":
        files = sorted(path.rglob("*.arrow"))
        return peek(files[0], "arrow") if files else []
    raise ValueError(f"unknown format {fmt}")


def check(ctx) -> None:
    p = ctx.plan
    if "data" not in p.blocks:
        return
    if ctx.skip_files:
        ctx.notes.append("data and tokenizer files not read (--skip-files)")
    else:
        for src in p.sources:
            _check_source(ctx, src)
        _check_tokenizer(ctx)
    max_len = p["data.max_len"]
    if p["data.pack"] == "dynamic" and p["data.tokens"] is not None and p["data.tokens"] < max_len:
        ctx.error("pack-budget", f"a budget of {p['data.tokens']} tokens cannot hold one {max_len}-token sample",
                  p.span("data.tokens"), f"use tokens >= {max_len} (max_len)")
    if ctx.tree is not None:
        mpe = getattr(ctx.tree.config, "max_position_embeddings", None)
        if mpe and max_len > mpe:
            ctx.warn("max-len", f"max_len ({max_len}) exceeds the model's max_position_embeddings ({mpe})",
                     p.span("data.max_len"), f"use max_len <= {mpe}, or extend the rotary scaling in the config")
    if not p.sources and "data" in p.blocks:
        ctx.error("data-source", "the data block names no source", p.blocks["data"],
                  'add `source "NAME" { path = "..." }`')


def _check_source(ctx, src) -> None:
    path = src["path"]
    if path is None:
        return
    files = source_files(path)
    span = src.settings["path"].span or src.span
    if not files:
        ctx.error("data-source", f"source {src.name!r}: {path} does not exist or holds no data files", span,
                  "give a file, a directory of files, or a glob (relative to where you run planc)")
        return
    fmt = src["format"] or infer_format(path, files)
    if fmt is None:
        ctx.error("data-format", f"source {src.name!r}: cannot tell the format of {path}", span,
                  "add `format = jsonl` (or json, parquet, arrow, csv, text, hf_disk)")
        return
    try:
        records = peek(files[0], fmt)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        ctx.error("data-format", f"source {src.name!r}: {files[0]} is not readable as {fmt}: {e}",
                  src.settings["format"].span or span, "fix the file or the `format`")
        return
    except Exception as e:  # pyarrow raises its own kinds for corrupt files
        ctx.error("data-format", f"source {src.name!r}: {files[0]} is not readable as {fmt}: "
                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", span, "fix the file or the `format`")
        return
    field = src["messages"] if src["kind"] == "sft" else src["text"]
    key = "messages" if src["kind"] == "sft" else "text"
    if fmt != "text" and records and not any(field in r for r in records):
        fields = sorted({k for r in records for k in r})
        ctx.error("data-field", f"source {src.name!r}: no field {field!r} in the first records of {files[0].name}",
                  src.settings[key].span or src.span,
                  f"fields there: {', '.join(fields[:12])}" + (f" — write `{key} = \"{fields[0]}\"`" if len(fields) == 1 else ""))
    elif fmt != "text" and not records:
        ctx.warn("data-source", f"source {src.name!r}: {files[0].name} holds no records", span)


def _check_tokenizer(ctx) -> None:
    p = ctx.plan
    path = p["data.tokenizer"]
    if path is None:
        return
    d = Path(path)
    span = p.value_span("data.tokenizer")
    if not d.is_dir() or not any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        ctx.error("tokenizer", f"{path} is not a local HF tokenizer directory", span,
                  "give a directory with tokenizer.json (e.g. the model directory)")
        return
    vocab, template = _tokenizer_facts(d)
    if ctx.tree is not None and vocab:
        model_vocab = getattr(ctx.tree.config, "vocab_size", None)
        if model_vocab and vocab > model_vocab:
            ctx.error("vocab-size", f"the tokenizer has {vocab} tokens but the model's embedding has {model_vocab}",
                      span, f"raise vocab_size in the config to at least {vocab}, or use the model's own tokenizer")
    if any(s["kind"] == "sft" for s in p.sources) and p["data.chat_template"] == "tokenizer" and not template:
        src = next(s for s in p.sources if s["kind"] == "sft")
        ctx.error("chat-template", f"source {src.name!r} is sft, but the tokenizer at {path} has no chat template",
                  src.settings["kind"].span or src.span, "add `chat_template = chatml` to data (a built-in template)")


def _tokenizer_facts(d: Path) -> tuple[int | None, bool]:
    """(vocabulary size with added tokens, has a chat template) read from the files, without loading."""
    vocab = None
    tj = d / "tokenizer.json"
    if tj.exists():
        try:
            data = json.loads(tj.read_text(encoding="utf-8"))
            ids = list((data.get("model") or {}).get("vocab", {}).values()) if isinstance(
                (data.get("model") or {}).get("vocab"), dict) else []
            ids += [t.get("id", 0) for t in data.get("added_tokens", [])]
            vocab = max(ids) + 1 if ids else None
        except (OSError, json.JSONDecodeError, AttributeError, TypeError):
            vocab = None
    template = (d / "chat_template.jinja").exists() or (d / "chat_template.json").exists()
    tc = d / "tokenizer_config.json"
    if tc.exists():
        try:
            template = template or bool(json.loads(tc.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    return vocab, template
