"""File-system probes for planc's checks: any string of a plan may reach them.

A plan's strings name files (model.config, model.weights, data.tokenizer, a source's path,
checkpoint.dir), and a string can hold what no file name can: a name longer than the file system
allows, a character the file system encoding cannot write, a directory one may not enter. Every
probe goes through this module, which turns OSError and ValueError into PathError, whose text says
why in words, so that each check reports it on the plan's own line instead of crashing.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class PathError(Exception):
    """A path that cannot be probed; str(e) says why (`a name in it is longer than ...`)."""


def reason(e: BaseException, probed=None) -> str:
    """Why, in words; with the file it happened to when that is not the path probed (a directory
    deep inside a folder that was searched)."""
    text = _why(e)
    where = getattr(e, "filename", None)
    if where is not None and (probed is None or os.fspath(where) != os.fspath(probed)):
        from .diagnostics import elide

        text += f": {elide(os.fsdecode(where))}"
    return text


def _why(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(e, UnicodeError):
        return "it holds a character that cannot be part of a file name"
    if isinstance(e, ValueError):
        return "it holds a NUL character" if "null" in str(e).lower() else str(e)
    if isinstance(e, OSError):
        if e.errno == errno.ENAMETOOLONG:
            return "a name in it is longer than the file system allows (255 bytes a name, 4096 a path)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if e.errno == errno.ELOOP:
            return "it runs into a loop of symbolic links"
        return e.strerror or type(e).__name__
    return str(e)


def probe(fn, *args, **kwargs):
    """fn(*args, **kwargs), with OSError and ValueError turned into PathError."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        raise PathError(reason(e, args[0] if args else None)) from None


def _stat(path) -> os.stat_result | None:
    """The path's stat, None when nothing is there; PathError when it cannot be asked."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise PathError(reason(e, path)) from None


def check(path) -> None:
    """PathError when the path cannot name a file here (whether or not one is there)."""
    _stat(path)


def exists(path) -> bool:
    return _stat(path) is not None


def is_dir(path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def is_file(path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def has_match(directory, pattern: str) -> bool:
    """Whether a glob pattern matches anything in the directory."""
    return probe(lambda d: any(Path(d).glob(pattern)), directory)


def read_bytes(path, limit: int) -> bytes:
    """At most `limit` bytes of a file (a pipe too); PathError when it holds more (/dev/zero)."""
    def read(p):
        with open(p, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise PathError(f"it is larger than {limit} bytes")
        return data

    return probe(read, path)


def read_text(path) -> str:
    """A regular file as UTF-8 text (PathError when it is not: a device such as /dev/zero never ends)."""
    if not is_file(path):
        raise PathError("it is not a regular file")
    return probe(lambda p: Path(p).read_text(encoding="utf-8"), path)
