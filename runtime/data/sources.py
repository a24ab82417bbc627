"""Data sources: what a plan's `source` statement describes, and reading its records.

Columnar formats (parquet, arrow, csv, plain-text folders, `save_to_disk` directories) are read
with HF `datasets` in streaming mode (lazy, no cache files written). JSON Lines and JSON are read
line by line with the stdlib instead: `datasets`' arrow JSON reader fails a whole chunk on one
malformed line or on a field whose type changes, and cannot say which line it was; here such a
record becomes a bad record with its own `file:line`, to be skipped or failed on by policy.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from ..vocab import SOURCE_FORMATS, SOURCE_KINDS

_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
    ".arrow": "arrow", ".csv": "csv", ".txt": "text", ".md": "text", ".py": "text",
}


@dataclass(frozen=True)
class Source:
    """One data source of a plan. `text` / `messages` name the record fields read by each kind;
    `weight` is the source's share of tokens in a mixture; `streaming` reads it lazily, split
    over data-parallel ranks, instead of loading, tokenising and shuffling it whole."""

    name: str
    path: str
    format: str | None = None
    kind: str = "pretrain"
    text: str = "text"
    messages: str = "messages"
    weight: float = 1.0
    streaming: bool = False

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source {self.name!r}: kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.format is not None and self.format not in SOURCE_FORMATS:
            raise ValueError(f"source {self.name!r}: format must be one of {SOURCE_FORMATS}, got {self.format!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise ValueError(f"source {self.name!r}: weight must be a number > 0, got {self.weight!r}")

    @property
    def resolved_format(self) -> str:
        return self.format or infer_format(self.path)


class Record(NamedTuple):
    """A raw record: its index in the source, where it came from (`file:line` or `file:row N`),
    the decoded value, and an error message when it could not be decoded at all."""

    index: int
    where: str
    value: Any
    error: str | None = None


def infer_format(path: str | os.PathLike) -> str:
    """Format from a path: a `save_to_disk` directory, a folder of one file type, or an extension."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            return "hf_disk"
        kinds = {_EXTENSIONS.get(f.suffix) for f in p.rglob("*") if f.is_file()} - {None}
        if len(kinds) == 1:
            return kinds.pop()
        raise ValueError(f"{path}: cannot infer the format of a folder holding {sorted(kinds) or 'no known files'};"
                         f" set `format` (one of {SOURCE_FORMATS})")
    fmt = _EXTENSIONS.get(p.suffix)
    if fmt is None:
        raise ValueError(f"{path}: cannot infer the format from the extension {p.suffix!r}; set `format`"
                         f" (one of {SOURCE_FORMATS})")
    return fmt


def data_files(path: str | os.PathLike, fmt: str) -> list[str]:
    """The files of a source: the file itself, a glob, or a folder's files of that format (sorted)."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        exts = [e for e, f in _EXTENSIONS.items() if f == fmt]
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix in exts)
    else:
        files = sorted(glob.glob(str(path), recursive=True))
    if not files:
        raise FileNotFoundError(f"{path}: no {fmt} files found")
    return files


def read_records(source: Source, rank: int = 0, world: int = 1) -> Iterator[Record]:
    """Every record of a source in file order, keeping those with `index % world == rank`.

    Indices count all records (bad ones included), so they are stable whatever `world` is."""
    fmt = source.resolved_format
    if fmt in ("jsonl", "json"):
        yield from _read_json(source.path, fmt, rank, world)
        return
    for rec in _read_hf(source.path, fmt):
        if rec.index % world == rank:
            yield rec


def _read_json(path, fmt, rank: int = 0, world: int = 1) -> Iterator[Record]:
    """This rank's records; other ranks' lines are counted for the index but never parsed."""
    index = 0
    for file in data_files(path, fmt):
        with open(file, encoding="utf-8", errors="strict") as f:
            head = f.read(1)
            while head.isspace():
                head = f.read(1)
            f.seek(0)
            if fmt == "json" and head == "[":
                # A JSON array: one record per item; the whole file must parse.
                try:
                    items = json.load(f)
                except ValueError as e:
                    raise ValueError(f"{file}: not valid JSON: {e}") from None
                for i, item in enumerate(items):
                    if index % world == rank:
                        yield Record(index, f"{file}:item {i}", item)
                    index += 1
                continue
            if fmt == "json" and head == "{" and _one_object(f):
                raise ValueError(f"{file}: one JSON object; records must be a JSON array or JSON Lines")
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue  # blank lines are layout, not records
                if index % world != rank:
                    index += 1
                    continue
                try:
                    yield Record(index, f"{file}:{lineno}", json.loads(line))
                except ValueError as e:
                    yield Record(index, f"{file}:{lineno}", None, f"malformed JSON ({e})")
                index += 1


def _one_object(f) -> bool:
    """Whether a .json file is a single (pretty-printed) object rather than JSON Lines."""
    try:
        json.loads(f.readline())
        return False  # the first line is a record of its own: JSON Lines
    except ValueError:
        f.seek(0)
        try:
            json.load(f)
            return True
        except ValueError:
            return False  # broken JSON Lines: its bad lines are reported one by one
    finally:
        f.seek(0)


def _read_hf(path, fmt) -> Iterator[Record]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if fmt == "hf_disk":
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"{path}: a DatasetDict without a 'train' split ({list(ds)})")
            ds = ds["train"]
        for i, value in enumerate(ds.to_iterable_dataset()):
            yield Record(i, f"{path}:row {i}", value)
        return
    files = data_files(path, fmt)
    kwargs = {"sample_by": "document"} if fmt == "text" else {}  # one record per text file
    ds = datasets.load_dataset(fmt, data_files=files, split="train", streaming=True, **kwargs)
    for i, value in enumerate(ds):
        where = files[i] if fmt == "text" and len(files) > i else f"{path}:row {i}"
        yield Record(i, where, value)
