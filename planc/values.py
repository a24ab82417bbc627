"""A written value checked against its schema key: type, range and enum choices (planc/schema.py).

`typed(key, value, err)` returns the Python value, or BAD after reporting through
`err(rule, message, span, hint)` (rules `type`, `range`, `unknown-value`, declared in resolve.py)."""
from __future__ import annotations

import math

from . import schema as S
from .diagnostics import elide, suggest
from .syntax import Value

BAD = object()


def _num(x) -> str:
    """A bound as written: whole numbers exactly (2**64 - 1 is not 1.84467e+19)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


class _Typer:
    def __init__(self, err):
        self.err = err

    def typed(self, key: S.Key, v: Value):
        t = key.type
        if v.body is not None and not (t == "enum" and key.options):
            self.err("type", f"`{key.name}` takes no {{ options }}", v.body.span, f"write `{key.name} = {v.value}`")
            return BAD
        if t == "degree" and v.kind == "word" and v.value == "auto":
            return "auto"
        if t in ("int", "degree"):
            if v.kind != "int":
                return self.type_error(key, v, "a whole number" + (" or `auto`" if t == "degree" else ""))
            return self.ranged(key, v, v.value)
        if t == "size":
            if v.kind not in ("size", "int"):
                return self.type_error(key, v, "a size such as `80GiB`")
            return self.ranged(key, v, v.value)
        if t == "float":
            if v.kind not in ("int", "float"):
                return self.type_error(key, v, "a number")
            if not math.isfinite(float(v.value)):
                self.err("range", f"`{key.name}` must be a finite number, not {v.text}", v.span, key.doc)
                return BAD
            return self.ranged(key, v, float(v.value))
        if t == "bool":
            if v.kind != "bool":
                return self.type_error(key, v, "`true` or `false`")
            return v.value
        if t in ("str", "path"):
            if v.kind != "string":
                hint = f'write `{key.name} = "{v.text}"`' if v.kind == "word" else None
                return self.type_error(key, v, "a string in double quotes", hint)
            if t == "path" and not v.value.strip():
                self.err("range", f"`{key.name}` is an empty path", v.span, "give a file or directory")
                return BAD
            return v.value
        if t == "enum":
            word = v.value if v.kind in ("word", "string") else None
            if word is None:
                return self.type_error(key, v, "one of " + ", ".join(key.choices))
            if word not in key.choices:
                self.err("unknown-value", f"`{elide(word)}` is not a valid `{key.name}`", v.span,
                         suggest(word, key.choices, "choices"))
                return BAD
            return word
        if t == "list":
            if v.kind != "list":
                return self.type_error(key, v, "a list such as [0.9, 0.95]")
            if key.length is not None and len(v.value) != key.length:
                self.err("type", f"`{key.name}` takes {key.length} items, not {len(v.value)}", v.span)
                return BAD
            item = S.Key(key.name, key.item or "str", min=key.min, max=key.max, above=key.above, below=key.below)
            out = [self.typed(item, x) for x in v.value]
            return BAD if any(x is BAD for x in out) else out
        raise AssertionError(t)

    def ranged(self, key: S.Key, v: Value, x):
        if key.min is not None and x < key.min:
            self.err("range", f"`{key.name}` must be at least {_num(key.min)}, not {v.text}", v.span, key.doc)
            return BAD
        if key.max is not None and x > key.max:
            self.err("range", f"`{key.name}` must be at most {_num(key.max)}, not {v.text}", v.span, key.doc)
            return BAD
        if key.above is not None and not x > key.above:
            self.err("range", f"`{key.name}` must be more than {_num(key.above)}, not {v.text}", v.span, key.doc)
            return BAD
        if key.below is not None and not x < key.below:
            self.err("range", f"`{key.name}` must be less than {_num(key.below)}, not {v.text}", v.span, key.doc)
            return BAD
        return x

    def type_error(self, key: S.Key, v: Value, want: str, hint=None):
        got = {"word": f"the word `{v.text}`", "string": "a string", "list": "a list", "bool": "a boolean",
               "int": "a whole number", "float": "a number", "size": "a size"}[v.kind]
        self.err("type", f"`{key.name}` takes {want}, not {got}", v.span, hint or key.doc)
        return BAD


def typed(key: S.Key, v: Value, err):
    """The value of `v` for `key`, or BAD (reported through `err`)."""
    return _Typer(err).typed(key, v)
