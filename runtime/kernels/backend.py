"""Which implementation of a kernel runs where: "triton", "torch" or "auto".

Triton runs on CUDA, or on CPU tensors when TRITON_INTERPRET=1 is set (the interpreter, for tests).
Triton itself is imported only when a Triton kernel is first used (see `triton_module`), so a
CPU-only install never pays for it and the interpreter switch is read at that moment.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

from ..vocab import KERNEL_BACKENDS, KERNEL_OPS


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the (slow) interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _device_type(device) -> str:
    return torch.device(device).type


def triton_runs_on(device) -> tuple[bool, str]:
    """(ok, reason): can a Triton kernel run on tensors of `device` in this process?"""
    if not triton_installed():
        return False, "triton is not installed"
    kind = _device_type(device)
    if kind == "cuda":
        return True, ""
    if kind == "cpu" and interpreter_on():
        return True, ""
    return False, f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for tests); device is {kind}"


def device_support(op: str, backend: str, device) -> tuple[bool, str]:
    """(ok, what_runs): can `backend` run `op` on `device`, and which backend runs in the end.

    ok is False only when "triton" was asked for and cannot run; what_runs is then "torch", the
    fallback that `apply_kernels` uses instead. "auto" is always ok: Triton on CUDA, torch elsewhere.
    """
    if op not in KERNEL_OPS:
        raise ValueError(f"unknown kernel op {op!r}; known: {', '.join(KERNEL_OPS)}")
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if backend == "torch":
        return True, "torch"
    ok, _ = triton_runs_on(device)
    if backend == "auto":
        # auto never picks the interpreter: it is a test tool, ~1000x slower than torch on CPU.
        use_triton = ok and _device_type(device) == "cuda"
        return True, "triton" if use_triton else "torch"
    return (True, "triton") if ok else (False, "torch")


def resolve(op: str, backend: str, device) -> str:
    """The backend that will run `op` on `device`: "triton" or "torch" (warns on a fallback)."""
    ok, runs = device_support(op, backend, device)
    if not ok:
        _, why = triton_runs_on(device)
        warnings.warn(f"kernel {op}: triton asked for but {why}; the torch implementation runs instead",
                      stacklevel=3)
    return runs


def check_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Validate an implementation name for a functional kernel call; "auto" follows the tensors' device.

    Unlike `resolve`, asking for "triton" where it cannot run is an error here: a direct call
    names exactly what it wants.
    """
    if impl not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel implementation {impl!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    device = tensors[0].device
    if impl == "auto":
        ok, _ = triton_runs_on(device)
        return "triton" if ok and device.type == "cuda" else "torch"
    if impl == "triton":
        ok, why = triton_runs_on(device)
        if not ok:
            raise RuntimeError(why)
        for t in tensors:
            if t is not None and t.device != device:
                raise ValueError(f"all tensors must be on one device; got {device} and {t.device}")
    return impl


def triton_module(name: str):
    """Import runtime.kernels._triton.<name> (and with it triton) on first use."""
    return importlib.import_module(f"runtime.kernels._triton.{name}")


def launch_warps(block: int) -> int:
    """A warp count that keeps registers per thread reasonable for a row of `block` elements."""
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def program_count(device: torch.device, work: int, per_sm: int = 4) -> int:
    """How many programs a row-looping kernel launches: a few per SM on CUDA, few in the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(work, per_sm * sms))
    return max(1, min(work, 4))
