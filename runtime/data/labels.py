"""Next-token labels of a document: the one place both record kinds (kinds.py: pretrain text,
chat.py: sft conversations) shift ids into targets."""
from __future__ import annotations

import numpy as np

from ..vocab import IGNORE


def shifted_labels(ids: np.ndarray, target_mask: np.ndarray | None = None) -> np.ndarray:
    """labels[t] = ids[t+1] where token t+1 is a target (all of them when no mask), else -100."""
    labels = np.full(len(ids), IGNORE, dtype=np.int32)
    labels[:-1] = ids[1:]
    if target_mask is not None:
        labels[:-1][~np.asarray(target_mask[1:], dtype=bool)] = IGNORE
    return labels
