"""Multimodal rotary positions (mrope) of one sample, from the model config alone.

Qwen-VL models rotate each token by three positions (time, height, width): text tokens advance all
three together, an image's tokens take their grid coordinates. The model's own
``model.model.get_rope_index`` computes them and reads nothing but the config, so `RopeIndex`
calls that very method on a bare instance of the family's base-model class that holds only the
config: no modules, no weights, whatever the model's size. Computed PER SAMPLE (on a packed row
the method would continue the positions from one sample into the next).

`mm_token_type_ids` marks image (1) and video (2) placeholder tokens, as the processor would.

The Omni thinkers (Qwen2.5-Omni, Qwen3-Omni-MoE) compute mrope only when their forward is given a
2-D attention mask, and otherwise SILENTLY use 1-D positions: `OmniRopeIndex` always calls their
``get_rope_index`` with a 2-D mask of ones and each audio's feature frames, and the training
forward always gets these positions (position_ids), so the fallback cannot happen.
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

    def __call__(self, ids: np.ndarray, image_grids=(), video_grids=(), second_per_grid=(), audio_frames=()) -> np.ndarray:
        """(3, len(ids)) int64 positions of one sample; grids in order of appearance. Text-only
        samples get plain 0..L-1 on all three rows (what the method gives them, without calling it)."""
        if len(audio_frames):
            raise ValueError(f"{self._cls.__name__} has no audio tower")
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


OMNI_MODELS = {"qwen2_5_omni_thinker": ("qwen2_5_omni", "Qwen2_5OmniThinkerModel"),
               "qwen3_omni_moe_thinker": ("qwen3_omni_moe", "Qwen3OmniMoeThinkerModel")}


def is_omni(config) -> bool:
    """Whether `config` is an Omni thinker's (vision + audio towers, mrope from a 2-D mask)."""
    return getattr(config, "model_type", None) in OMNI_MODELS


class OmniRopeIndex:
    """``get_rope_index`` of an Omni thinker, per sample, always with a 2-D attention mask."""

    def __init__(self, config, use_audio_in_video: bool = False):
        import importlib

        module, name = OMNI_MODELS[config.model_type]
        self._cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)
        self.config, self.use_audio_in_video = config, use_audio_in_video
        self._shell = self._cls.__new__(self._cls)  # only `config` and the merge size are read
        object.__setattr__(self._shell, "config", config)
        object.__setattr__(self._shell, "spatial_merge_size", config.vision_config.spatial_merge_size)

    def __call__(self, ids: np.ndarray, image_grids=(), video_grids=(), second_per_grid=(), audio_frames=()) -> np.ndarray:
        """(3, len(ids)) positions of one sample (int64, or float32 where the model makes floats); grids, seconds per temporal patch and audio
        feature frames (audio parts and videos' audio tracks) in order of appearance."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
        kwargs = {"attention_mask": torch.ones_like(ids), "use_audio_in_video": self.use_audio_in_video}
        if len(image_grids):
            kwargs["image_grid_thw"] = torch.tensor(np.asarray(image_grids), dtype=torch.long)
        if len(video_grids):
            kwargs["video_grid_thw"] = torch.tensor(np.asarray(video_grids), dtype=torch.long)
            kwargs["second_per_grids"] = torch.tensor(list(second_per_grid), dtype=torch.float)
        if len(audio_frames):
            kwargs["audio_seqlens"] = torch.tensor(list(audio_frames), dtype=torch.long)
        with torch.no_grad():
            pos, _ = self._cls.get_rope_index(self._shell, ids, **kwargs)
        # Qwen3-Omni's positions are floats (a video's time steps need not be whole): kept as they are
        return pos[:, 0].numpy()


def rope_index(config, use_audio_in_video: bool = False):
    """The per-sample position function of a VL or Omni config."""
    return OmniRopeIndex(config, use_audio_in_video) if is_omni(config) else RopeIndex(config)
