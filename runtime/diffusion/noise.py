"""The noise of block diffusion: which response tokens of a document are masked at a step.

As dFactory draws it: one noise level t ~ U[low, high] per sample, then each maskable (response)
token is replaced by the mask token with probability t, independently.

Every draw comes from its own generator, seeded by WHAT is drawn, never by who draws it:
``(seed, step, global row of the step, document number in that row)``. The data loader plans the
same global rows at every data-parallel size (runtime.data.loader, global mode), so one process,
2 FSDP ranks or a resumed run draw the same masks for the same document at the same step. No
global RNG is touched, so the draws neither depend on nor disturb torch's generator.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_noise", "document_rng", "draw_mask"]

_DOMAIN = 0x62647366  # "bdsf": keeps these streams apart from any other use of the plan's seed


def check_noise(noise) -> tuple[float, float]:
    """(low, high) with 0 <= low <= high <= 1, else ValueError."""
    try:
        low, high = (float(x) for x in noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a pair [low, high], got {noise!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"noise range must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
    return low, high


def document_rng(seed: int, step: int, row: int, doc: int) -> np.random.Generator:
    """The generator of one document's noise at one step (global row of the step, document
    number in the row)."""
    for name, v in (("seed", seed), ("step", step), ("row", row), ("doc", doc)):
        if int(v) < 0:
            raise ValueError(f"{name} must be >= 0 to seed the noise, got {v}")
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([_DOMAIN, int(seed), int(step), int(row), int(doc)])))


def draw_mask(maskable: np.ndarray, noise, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(t, masked) for one document: t ~ U[low, high]; each maskable position masked with
    probability t. One uniform per position of the document, maskable or not, so a position's
    draw does not depend on which others are maskable."""
    low, high = check_noise(noise)
    maskable = np.asarray(maskable, dtype=bool)
    t = low + (high - low) * rng.random()
    return t, (rng.random(maskable.shape[0]) < t) & maskable
