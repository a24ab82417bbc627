"""Settings of a generated script, and their command-line overrides.

A generated script holds one flat dict, ``"block.key" -> value`` (JSON-like values). `load` applies
``--block.key VALUE`` / ``--block.key=VALUE`` overrides, coercing each VALUE to the type of its
default, plus ``--resume auto|none|PATH``, and returns a `Config` read by attribute
(``cfg.train.steps``, ``cfg.resume``). Usage errors print one line to stderr and exit with code 2.
"""
from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Mapping, Sequence

__all__ = ["Config", "load", "coerce", "usage_error"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def usage_error(message: str):
    """Print `error: message` to stderr and exit with code 2 (argparse's convention), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _type_name(value) -> str:
    return "none" if value is None else type(value).__name__


def _coerce_scalar(key: str, text: str, like):
    """`text` as the type of `like` (a scalar default); ValueError with a readable message."""
    if isinstance(like, bool):  # before int: bool is an int subclass
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"--{key} expects true or false, got {text!r}")
    if isinstance(like, int):
        clean = text.strip().replace("_", "")
        try:
            return int(clean)
        except ValueError:
            pass
        try:  # "1e3" is a fine way to write 1000; "2.5" is not an int
            as_float = float(clean)
        except ValueError:
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
        raise ValueError(f"--{key} expects an int, got {text!r}")
    if isinstance(like, float):
        try:
            return float(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"--{key} expects a number, got {text!r}") from None
    return text  # str, or a None default: the string as given


def coerce(key: str, text: str, default):
    """Coerce the command-line `text` for `key` to the type of `default`.

    Lists accept JSON (``[0.9, 0.95]``) or comma-separated items (``0.9,0.95``); items take the
    type of the default's first item (JSON values otherwise).
    """
    if isinstance(default, (list, tuple)):
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise ValueError(f"--{key} expects a list, got {text!r} ({e.msg})") from None
            if not isinstance(items, list):
                raise ValueError(f"--{key} expects a list, got {text!r}")
            # back to text, so JSON items and comma-separated items share one coercion
            items = [json.dumps(x) if not isinstance(x, str) else x for x in items]
        else:
            items = [p.strip() for p in stripped.split(",")] if stripped else []
        if default:
            return [_coerce_scalar(key, x, default[0]) for x in items]
        out = []
        for x in items:  # no default item to copy the type from: JSON scalars, else strings
            if isinstance(x, str):
                try:
                    x = json.loads(x)
                except json.JSONDecodeError:
                    pass
            out.append(x)
        return out
    if isinstance(default, dict):
        raise ValueError(f"--{key} is a table and cannot be overridden from the command line")
    return _coerce_scalar(key, text, default)


class _Block:
    """Attribute view of the settings under one dotted prefix (``cfg.train``, ``cfg.data.stdlib``)."""

    def __init__(self, prefix: str, values: dict):
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        prefix = object.__getattribute__(self, "_prefix")
        known = ", ".join(sorted(values))
        raise AttributeError(f"no setting '{prefix}.{name}' (known under '{prefix}': {known})")

    def __setattr__(self, name, value):
        raise AttributeError("settings are read-only; override them on the command line")

    def __getitem__(self, name):
        return self._values[name]

    def __contains__(self, name):
        return name in self._values

    def __repr__(self):
        return f"<settings {self._prefix}: {sorted(self._values)}>"


def _nest(flat: Mapping[str, object]) -> dict:
    """{"a.b.c": 1} -> {"a": _Block(b: _Block(c: 1))}."""
    tree: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"setting {key!r} clashes with a shorter key")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"setting {key!r} clashes with a longer key")
        node[parts[-1]] = value

    def freeze(prefix, node):
        return _Block(prefix, {k: freeze(f"{prefix}.{k}" if prefix else k, v) if isinstance(v, dict) else v
                               for k, v in node.items()})

    return {k: freeze(k, v) if isinstance(v, dict) else v for k, v in tree.items()}


class Config:
    """Resolved settings: ``cfg.train.steps``, ``cfg["train.steps"]``, ``cfg.resume``.

    `overrides` lists the keys changed on the command line; `str(cfg)` is a table of all settings,
    overridden ones marked with ``*``.
    """

    def __init__(self, values: Mapping[str, object], resume: str = "auto", overrides: Sequence[str] = ()):
        self._flat = dict(values)
        self.resume = resume
        self.overrides = tuple(overrides)
        self._tree = _nest(self._flat)

    def __getattr__(self, name):
        tree = self.__dict__.get("_tree", {})
        if name in tree:
            return tree[name]
        raise AttributeError(f"no settings block '{name}' (blocks: {', '.join(sorted(tree))})")

    def __getitem__(self, key: str):
        return self._flat[key]

    def __contains__(self, key: str) -> bool:
        return key in self._flat

    def as_dict(self) -> dict:
        """The flat ``"block.key" -> value`` dict (a copy), with ``resume``."""
        return {**self._flat, "resume": self.resume}

    def table(self) -> str:
        """All settings as an aligned two-column table; command-line overrides marked ``*``."""
        rows = [(k, json.dumps(v), "*" if k in self.overrides else "") for k, v in self._flat.items()]
        rows.append(("resume", self.resume, "*" if "resume" in self.overrides else ""))
        width = max(len(k) for k, _, _ in rows)
        return "\n".join(f"{mark:1} {k:<{width}}  {v}" for k, v, mark in rows)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"Config({self.as_dict()!r})"


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:  # a right key under the wrong block (`--lr`, `--data.lr`) still deserves a hint
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] == tail][:1]
    return f"; did you mean --{close[0]}?" if close else ""


def load(settings: Mapping[str, object], argv: Sequence[str] | None = None, *, prog: str | None = None) -> Config:
    """Apply command-line overrides (default: ``sys.argv[1:]``) to `settings`.

    ``--help`` prints the settings table and exits 0. Unknown keys, missing or ill-typed values
    exit 2 with a one-line message naming the nearest valid key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    values = dict(settings)
    valid = list(values) + ["resume"]
    resume = "auto"
    changed: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(f"usage: {prog or 'script'} [--block.key VALUE ...] [--resume auto|none|PATH]\n")
            print(Config(values, resume).table())
            raise SystemExit(0)
        if not arg.startswith("--") or len(arg) == 2:
            usage_error(f"unexpected argument {arg!r}: settings are given as --block.key VALUE")
        key, eq, text = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                usage_error(f"--{key} needs a value")
            text = argv[i + 1]
            i += 1
        i += 1
        if key == "resume":
            if not text:
                usage_error("--resume needs auto, none or a checkpoint path")
            resume = text
        elif key in values:
            try:
                values[key] = coerce(key, text, settings[key])
            except ValueError as e:
                usage_error(str(e))
        else:
            usage_error(f"unknown setting --{key}{_suggest(key, valid)}")
        changed.append(key)
    return Config(values, resume, changed)
