"""Command-line values, checked where argparse reads them: a bad one is a usage error (exit 2,
with the command's usage line), never a silent default (`--world 0` read as "no world") and never
an internal error (`--device-memory lots`)."""
from __future__ import annotations

import argparse
import math
import re

from .diagnostics import elide, printable

RANK_MAX = 2**31 - 1  # torch.distributed numbers ranks with 32-bit integers
_SIZE = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([KMGT]i?B)?\s*")


def _shown(text: str) -> str:
    return printable(elide(repr(text)))


def count(text: str) -> int:
    """A whole number of ranks, devices, processes or steps: 1 .. 2**31 - 1."""
    try:
        n = int(text.strip().replace("_", ""), 10) if len(text) < 32 else None
    except ValueError:
        n = None
    if n is None:
        raise argparse.ArgumentTypeError(f"expected a whole number such as 8, not {_shown(text)}")
    if not 1 <= n <= RANK_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {RANK_MAX}, not {n}")
    return n


def positive(text: str) -> float:
    """A finite number above 0 (a tolerance, a timeout in seconds)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e-5, not {_shown(text)}") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {_shown(text)}")
    return x


def size_bytes(text: str) -> int | None:
    """`80GiB`, `80 GB`, `1.5TiB` or a plain number of bytes -> bytes; None when it is not a size
    of at least one byte (and at most 2**63 - 1)."""
    from .parse import size_bytes as exact

    m = _SIZE.fullmatch(text)
    if not m:
        return None
    n = exact(m.group(1), m.group(2) or "")
    return n if n is not None and n >= 1 else None


def size(text: str) -> int:
    """A memory size option (`--device-memory 80GiB`), in bytes."""
    n = size_bytes(text)
    if n is None:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte such as 80GiB (units KiB MiB GiB "
                                         f"TiB KB MB GB TB, or plain bytes), not {_shown(text)}")
    return n
