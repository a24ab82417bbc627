"""Packing: placing documents into rows (bins) of a token capacity, and collating rows to tensors.

A packed row is documents laid end to end, then padding. Position ids restart at 0 for every
document (transformers then attends within each document when `attention_mask` is None and
`use_cache=False`); padding forms one last segment whose labels are all -100.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch

from ..vocab import IGNORE


def fit_bins(lengths: Sequence[int], n_bins: int, capacity: int, worst: bool = False
             ) -> tuple[list[list[int]], list[int]]:
    """Place items (in the given priority order) into n_bins bins of `capacity`, each into the
    fullest bin that still has room (best fit), or with `worst` into the emptiest one (worst fit:
    long items spread over the bins, so bins end up alike). Returns the bins (lists of item
    positions) and the positions that fit nowhere. Items longer than `capacity` are an error."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    free = [(capacity, b) for b in range(n_bins)]  # sorted by room left, then bin number
    left: list[int] = []
    for pos, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"document of {n} tokens exceeds the bin capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            left.append(pos)
            continue
        if worst:
            k = len(free) - 1
        room, b = free.pop(k)
        bins[b].append(pos)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins, left


def fit_bins_nd(lengths: Sequence[int], costs: Sequence[Sequence[int]], n_bins: int, capacity: int,
                budgets: Sequence[int], worst: bool = False) -> tuple[list[list[int]], list[int]]:
    """`fit_bins` with more budgets per bin: item i also costs `costs[i][j]` of budget j (vision
    patches, audio frames...) and a bin holds at most `budgets[j]` of it. An item goes to the bin
    with the least token room left that has room for all (with `worst`, the most); ties go to the
    lower bin (with `worst`, the higher), as in `fit_bins`."""
    room = [capacity] * n_bins
    spare = [list(budgets) for _ in range(n_bins)]
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    left: list[int] = []
    for pos, (n, c) in enumerate(zip(lengths, costs)):
        if len(c) != len(budgets):
            raise ValueError(f"item {pos} has {len(c)} costs for {len(budgets)} budgets")
        if n > capacity or any(x > b for x, b in zip(c, budgets)):
            raise ValueError(f"item of {n} tokens / costs {tuple(c)} exceeds the bin capacity {capacity} / "
                             f"budgets {tuple(budgets)}")
        fits = [b for b in range(n_bins) if room[b] >= n and all(x <= r for x, r in zip(c, spare[b]))]
        if not fits:
            left.append(pos)
            continue
        b = max(fits, key=lambda b: (room[b], b)) if worst else min(fits, key=lambda b: (room[b], b))
        bins[b].append(pos)
        room[b] -= n
        spare[b] = [r - x for r, x in zip(spare[b], c)]
    return bins, left


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_rows(rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], length: int, pad: int) -> dict:
    """Rows of (ids, labels) documents -> {input_ids, labels, position_ids}, LongTensor (rows, length)."""
    n = len(rows)
    ids = np.full((n, length), pad, dtype=np.int64)
    labels = np.full((n, length), IGNORE, dtype=np.int64)
    pos = np.zeros((n, length), dtype=np.int64)
    for r, docs in enumerate(rows):
        at = 0
        for d_ids, d_labels in docs:
            k = len(d_ids)
            if at + k > length:
                raise ValueError(f"row {r} holds more than {length} tokens")
            ids[r, at:at + k] = d_ids
            labels[r, at:at + k] = d_labels
            pos[r, at:at + k] = np.arange(k)
            at += k
        pos[r, at:] = np.arange(length - at)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos)}
