"""Module-name globs, shared by the plan checker and the runtime (torch-free on purpose).

A glob is matched against a whole dotted module name such as ``model.layers.3.self_attn.q_proj``:

- ``*``      any characters within one name part (never a dot), possibly none
- ``**``     any number of whole parts, including none (``model.**.q_proj``)
- ``?``      exactly one character other than a dot
- ``{a,b}``  either alternative (alternatives may hold globs themselves; no nesting of braces)

Everything else matches itself.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable

__all__ = ["GlobError", "compile_glob", "expand", "match_modules", "matches"]


class GlobError(ValueError):
    """A malformed glob (unbalanced braces, empty pattern)."""


def _translate(glob: str) -> str:
    """Regex source (without anchors) for one glob."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                # `**` spans whole parts: `a.**.b` must also match `a.b`, so the dot after
                # `**` is folded into the group and may vanish with it.
                if glob.startswith("**.", i):
                    out.append(r"(?:[^.]+\.)*")
                    i += 3
                else:
                    out.append(r".*")
                    i += 2
            else:
                out.append(r"[^.]*")
                i += 1
        elif c == "?":
            out.append(r"[^.]")
            i += 1
        elif c == "{":
            end = glob.find("}", i)
            if end < 0:
                raise GlobError(f"unclosed '{{' in glob {glob!r}")
            inner = glob[i + 1:end]
            if "{" in inner:
                raise GlobError(f"nested '{{' in glob {glob!r}")
            out.append("(?:" + "|".join(_translate(alt) for alt in inner.split(",")) + ")")
            i = end + 1
        elif c == "}":
            raise GlobError(f"unmatched '}}' in glob {glob!r}")
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def compile_glob(glob: str) -> re.Pattern:
    """Compile a glob once into an anchored regex (cached: the checker and runtime reuse globs)."""
    if not isinstance(glob, str) or not glob:
        raise GlobError(f"empty glob: {glob!r}")
    return re.compile(_translate(glob) + r"\Z")


def matches(name: str, glob: str) -> bool:
    """True when the whole dotted `name` matches `glob`."""
    return compile_glob(glob).match(name) is not None


def match_modules(model_or_names, pattern: str) -> list[str]:
    """Names matching `pattern`, in module order.

    `model_or_names` is anything with `named_modules()` (a torch module, without importing torch
    here) or an iterable of dotted names. The root module (empty name) never matches.
    """
    if hasattr(model_or_names, "named_modules"):
        names: Iterable[str] = (n for n, _ in model_or_names.named_modules())
    else:
        names = model_or_names
    rx = compile_glob(pattern)
    return [n for n in names if n and rx.match(n)]


def expand(model_or_names, patterns) -> list[str]:
    """Every name matching any of `patterns`, once each, in module order (a plan rule's globs
    resolved against the real model)."""
    if hasattr(model_or_names, "named_modules"):
        names = [n for n, _ in model_or_names.named_modules()]
    else:
        names = list(model_or_names)
    rxs = [compile_glob(p) for p in patterns]
    return [n for n in names if n and any(rx.match(n) for rx in rxs)]
