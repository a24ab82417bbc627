"""YAML settings with their places: every leaf of a config as a dotted key, its value and its
`file:line:col` (pyyaml's node marks), plus `--section.key VALUE` overrides from a command line."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["Entry", "ImportError_", "load_entries", "apply_overrides"]


class ImportError_(ValueError):
    """A config that cannot be read at all (not YAML, not a mapping, a bad override)."""


@dataclass
class Entry:
    """One setting: its value (lists and mappings below a leaf key stay whole) and where it was."""
    key: str
    value: Any
    file: str
    line: int  # 1-based; 0 for the command line
    col: int   # 1-based

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else f"{self.file} (argument {self.col})"




def _value(node, file: str):
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise ImportError_(f"{file}:{node.start_mark.line + 1}: {e}") from None
    finally:
        loader.dispose()


def _walk(node, prefix: str, file: str, out: dict) -> None:
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        if isinstance(value_node, yaml.MappingNode) and value_node.value:
            _walk(value_node, key + ".", file, out)
        else:
            mark = key_node.start_mark
            out[key] = Entry(key, _value(value_node, file), file, mark.line + 1, mark.column + 1)


def load_entries(path) -> dict[str, Entry]:
    """Every leaf setting of the YAML mapping in `path`, keyed by its dotted name."""
    path = Path(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ImportError_(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ImportError_(f"{path}: not valid YAML: {e}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ImportError_(f"{path}:1:1: expected a mapping of sections (model, data, train)")
    out: dict[str, Entry] = {}
    _walk(root, "", str(path), out)
    return out


def apply_overrides(entries: dict[str, Entry], argv: Sequence[str]) -> dict[str, Entry]:
    """`--train.lr 1e-4` / `--train.lr=1e-4` arguments on top of `entries` (values read as YAML
    scalars, so numbers and booleans keep their types); returns a new dict."""
    out = dict(entries)
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg, n = argv[i], i + 1
        if not arg.startswith("--") or len(arg) < 3:
            raise ImportError_(f"override {arg!r}: expected --section.key VALUE")
        key, eq, text = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ImportError_(f"override {arg!r} has no value")
            text, i = argv[i + 1], i + 1
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        for old in [k for k in out if k == key or k.startswith(key + ".")]:
            del out[old]  # a whole section replaced, or one leaf
        out[key] = Entry(key, value, "<command line>", 0, n)
        i += 1
    return out
