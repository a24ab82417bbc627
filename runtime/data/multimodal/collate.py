"""Packed vision-language rows -> the model's keyword arguments (and labels).

A micro-batch is rows of whole samples laid end to end, then padding. Its batch dict holds:

- ``input_ids``, ``labels`` (B, L): as for text; labels already shifted, -100 off target;
- ``position_ids`` (4, B, L): row 0 the text position, restarting at 0 for every sample (and for
  the padding), rows 1-3 each sample's own mrope positions (positions.py). transformers finds the
  sample boundaries from row 0 and attends within each sample when ``attention_mask`` is None and
  ``use_cache`` is False; with only the 3 mrope rows, samples would attend to each other, silently;
- ``pixel_values`` (patches, C*T*P*P) and ``image_grid_thw`` (images, 3): every image of the
  micro-batch in sample order (the order of their placeholder tokens in the flattened rows);
- ``pixel_values_videos`` and ``video_grid_thw``: the same for videos;
- ``input_features`` (clips, mel bins, frames) and ``feature_attention_mask`` (clips, frames): every
  sound clip of the micro-batch in sample order (Omni thinkers), zero-padded to the longest clip.

Every micro-batch runs the vision tower for each kind in `needs` (images always; videos too when
the data has any): a micro-batch without one gets a dummy of the smallest grid (1, merge, merge) of
zero pixels, whose single placeholder token sits alone as its own sample (its own text positions)
after the last row's samples, with label -100. Its output enters the forward and, through that
token, the loss with weight exactly zero, so every rank runs the same FSDP collectives of the vision
tower (a rank that skipped them would hang the others). Omni thinkers need "audio" too: the dummy
clip is a few zero feature frames making one audio token, between the audio start/end tokens. The row grows by that token if it has no
padding left; lengths are rounded up to `multiple` (the sequence-parallel degree).
"""
from __future__ import annotations

import numpy as np
import torch

from ..kinds import IGNORE
from ..packing import round_up
from .docs import VLDoc


class Collator:
    """`collate(rows, length, pad)` for the loader (a picklable callable)."""

    def __init__(self, processor, rope, needs=("image",), multiple: int = 1):
        self.proc, self.rope, self.needs, self.multiple = processor, rope, tuple(needs), multiple
        s = processor.settings
        self.dim = 3 * s.temporal_patch_size * s.patch_size ** 2
        self.dummy_grid = (1, s.merge_size, s.merge_size)

    def dummy(self, kind: str) -> VLDoc:
        """The one-token sample of a zero image (or video) of the smallest grid, or of a zero clip."""
        if kind == "audio":
            frames = next(f for f in range(1, 64) if self.proc.audio_tokens(f) == 1)
            ids = np.asarray([self.proc.audio_start_id, self.proc.audio_id, self.proc.audio_end_id], dtype=np.int64)
            return VLDoc(ids, np.full(3, IGNORE, dtype=np.int64), [("audio", None, frames)],
                         self.rope(ids, audio_frames=[frames]))
        token = self.proc.image_id if kind == "image" else self.proc.video_id
        ids = np.full(self.dummy_grid[1] * self.dummy_grid[2] // self.proc.merge, token, dtype=np.int64)
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        if kind == "image":
            pos = self.rope(ids, image_grids=[self.dummy_grid])
        else:
            pos = self.rope(ids, video_grids=[self.dummy_grid], second_per_grid=[1.0])
        return VLDoc(ids, labels, [(kind, None, None)], pos)

    def _pixels(self, kind, path, plan):
        if path is None:  # a dummy
            return np.zeros((int(np.prod(self.dummy_grid)), self.dim), dtype=np.float32), self.dummy_grid
        return self.proc.pixels(kind, path, plan), self.proc.grid(kind, plan)

    def __call__(self, rows, length: int, pad: int) -> dict:
        rows = [list(r) for r in rows]
        present = {kind for row in rows for doc in row for kind, _, _ in doc.media}
        missing = [k for k in self.needs if k not in present]
        if missing:
            rows[-1] += [self.dummy(k) for k in missing]
        need = max(sum(len(d[0]) for d in row) for row in rows)
        length = round_up(max(length, need), self.multiple)
        n = len(rows)
        ids = np.full((n, length), pad, dtype=np.int64)
        labels = np.full((n, length), IGNORE, dtype=np.int64)
        floats = any(np.issubdtype(doc.pos.dtype, np.floating) for row in rows for doc in row)
        pos = np.zeros((4, n, length), dtype=np.float32 if floats else np.int64)  # float: Qwen3-Omni videos
        pixels = {"image": [], "video": []}
        grids = {"image": [], "video": []}
        clips = []
        for r, docs in enumerate(rows):
            at = 0
            for doc in docs:
                k = len(doc[0])
                ids[r, at:at + k], labels[r, at:at + k] = doc[0], doc[1]
                pos[0, r, at:at + k] = np.arange(k)
                pos[1:, r, at:at + k] = doc.pos
                for kind, path, plan in doc.media:
                    if kind == "audio" or (path is not None and getattr(self.proc, "clips", None)
                                           and self.proc.clips(kind, plan)):
                        clips.append(self._features(path, plan))  # a clip, or a video's audio track
                    if kind == "audio":
                        continue
                    px, grid = self._pixels(kind, path, plan)
                    pixels[kind].append(px)
                    grids[kind].append(grid)
                at += k
            pos[:, r, at:] = np.arange(length - at)  # padding: one more sample without targets
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                 "position_ids": torch.from_numpy(pos)}
        for kind, (pv, gk) in {"image": ("pixel_values", "image_grid_thw"),
                               "video": ("pixel_values_videos", "video_grid_thw")}.items():
            if pixels[kind]:
                batch[pv] = torch.from_numpy(np.concatenate(pixels[kind]))
                batch[gk] = torch.tensor(grids[kind], dtype=torch.long)
        if clips:
            frames = max(c.shape[1] for c in clips)
            feats = np.zeros((len(clips), clips[0].shape[0], frames), dtype=np.float32)
            mask = np.zeros((len(clips), frames), dtype=np.int64)
            for i, c in enumerate(clips):
                feats[i, :, :c.shape[1]], mask[i, :c.shape[1]] = c, 1
            batch["input_features"], batch["feature_attention_mask"] = torch.from_numpy(feats), torch.from_numpy(mask)
        return batch

    def _features(self, path, plan):
        if path is None:  # the dummy clip: `plan` is its frame count
            return np.zeros((self.proc.audio.mel_bins, plan), dtype=np.float32)
        return self.proc.features(path, plan)


MODEL_KEYS = ("input_ids", "position_ids", "pixel_values", "image_grid_thw", "pixel_values_videos",
              "video_grid_thw", "input_features", "feature_attention_mask")


def model_inputs(batch: dict) -> dict:
    """The keyword arguments of the model's forward in a batch (everything but the labels)."""
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}
