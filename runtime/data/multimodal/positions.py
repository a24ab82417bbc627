"""Multimodal rotary positions (mrope) of one sample, from the model config alone.

Qwen-VL models rotate each token by three positions (time, height, width): text tokens advance all
three together, an image's tokens take their grid coordinates. The model's own
``model.model.get_rope_index`` computes them and reads nothing but the config, so `RopeIndex`
calls that very method on a bare instance of the family's base-model class that holds only the
config: no modules, no weights, whatever the model's size. Computed PER SAMPLE (on a packed row
the method would continue the positions from one sample into the next).

`mm_token_type_ids` marks image (1) and video (2) placeholder tokens, as the processor would.
"""
from __future__ import annotations

import numpy as np
import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def token_types(ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """0 for text, 1 for image placeholders, 2 for video placeholders."""
    types = np.zeros(len(ids), dtype=np.int64)
    types[ids == image_token_id] = IMAGE
    types[ids == video_token_id] = VIDEO
    return types


class RopeIndex:
    """``get_rope_index`` of a VL config's base model (Qwen2VLModel, Qwen2_5_VLModel, ...)."""

    def __init__(self, config):
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        cls = MODEL_MAPPING[type(config)]
        if not hasattr(cls, "get_rope_index"):
            raise ValueError(f"{cls.__name__} has no get_rope_index: not an mrope vision-language model")
        self.config, self._cls = config, cls
        self._shell = cls.__new__(cls)  # an uninitialised module: only `config` is ever read
        object.__setattr__(self._shell, "config", config)

    def __call__(self, ids: np.ndarray, image_grids=(), video_grids=(), second_per_grid=()) -> np.ndarray:
        """(3, len(ids)) int64 positions of one sample; grids in order of appearance. Text-only
        samples get plain 0..L-1 on all three rows (what the method gives them, without calling it)."""
        types = token_types(ids, self.config.image_token_id, self.config.video_token_id)
        if not types.any():
            return np.broadcast_to(np.arange(len(ids)), (3, len(ids))).copy()
        kwargs = {}
        if len(image_grids):
            kwargs["image_grid_thw"] = torch.tensor(np.asarray(image_grids), dtype=torch.long)
        if len(video_grids):
            kwargs["video_grid_thw"] = torch.tensor(np.asarray(video_grids), dtype=torch.long)
            if len(second_per_grid):  # Qwen2.5-VL spaces video frames in time; others ignore it
                kwargs["second_per_grid_ts"] = torch.tensor(list(second_per_grid), dtype=torch.float)
        with torch.no_grad():
            pos, _ = self._cls.get_rope_index(
                self._shell, torch.as_tensor(np.asarray(ids, dtype=np.int64))[None],
                mm_token_type_ids=torch.as_tensor(types)[None], **kwargs)
        return pos[:, 0].numpy()
