"""The Omni thinkers' processor, built offline: the VL processor plus sound clips.

`OmniProcessor(tok, config, settings, audio)` serves Qwen2.5-Omni and Qwen3-Omni-MoE thinkers. Its
token ids come from the model config (image, video, audio placeholders; vision and audio start/end),
and each must be a special token of the tokenizer (checked here, named in the error). The built-in
template writes an image as ``<vision start><image pad><vision end>``, a video likewise, and a clip
as ``<audio start><audio pad><audio end>``, in the tokenizer's own spelling of those ids (Qwen2.5-Omni
spells them ``<|vision_bos|><|IMAGE|><|vision_eos|>`` ... ``<|audio_bos|><|AUDIO|><|audio_eos|>``,
Qwen3-Omni ``<|vision_start|><|image_pad|>`` ... ``<|audio_start|><|audio_pad|><|audio_end|>``).
A clip's pad becomes one token per audio-tower output frame, counted by the family's own function.

With `use_audio_in_video`, each video's audio track is decoded too (a silent video is a bad record)
and its tokens are interleaved with the video's by the family's own processor method
(``replace_video_with_audio_token``: Qwen2.5-Omni by chunks of `seconds_per_chunk`, Qwen3-Omni by
time), called on a bare instance that holds only what it reads; the row then reads
``<vision start><audio start>...video and audio tokens...<audio end><vision end>``, as the thinkers'
``get_rope_index(use_audio_in_video=True)`` expects.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from dataclasses import dataclass

from .audio import AudioPlan, AudioSettings, audio_features, plan_audio
from .media import MediaError, MediaSettings
from .positions import OMNI_MODELS
from .processor import VLProcessor
from .template import media_chat_template, template_for
from .video import VideoPlan

_PROCESSORS = {"qwen2_5_omni_thinker": ("qwen2_5_omni", "Qwen2_5OmniProcessor"),
               "qwen3_omni_moe_thinker": ("qwen3_omni_moe", "Qwen3OmniMoeProcessor")}
_SENTINELS = {"audio_bos_token": "B", "audio_eos_token": "E", "video_token": "V", "audio_token": "A"}


@dataclass(frozen=True)
class AVPlan(VideoPlan):
    """A video and its audio track (use_audio_in_video)."""
    audio: AudioPlan = None


class Interleave:
    """The family processor's own ``replace_video_with_audio_token`` -> token ids."""

    def __init__(self, config, ids: dict, merge_size: int):
        module, name = _PROCESSORS[config.model_type]
        cls = getattr(importlib.import_module(f"transformers.models.{module}.processing_{module}"), name)
        self._shell = cls.__new__(cls)  # only the token strings, the merge size and its own methods are read
        for attr, ch in _SENTINELS.items():
            object.__setattr__(self._shell, attr, ch)
        object.__setattr__(self._shell, "video_processor", type("V", (), {"merge_size": merge_size})())
        self._replace = cls.replace_video_with_audio_token
        self._ids = {ch: ids[attr] for attr, ch in _SENTINELS.items()}
        self._kwargs = {"position_id_per_seconds": config.position_id_per_seconds,
                        "seconds_per_chunk": getattr(config, "seconds_per_chunk", 2)}

    def __call__(self, grid, second_per_grid: float, audio_tokens: int) -> list[int]:
        text = self._replace(self._shell, {"video_grid_thw": [list(grid)], "video_second_per_grid": [second_per_grid]},
                             0, {"num_audio_tokens": [audio_tokens]}, 0, **self._kwargs)
        return [self._ids[ch] for ch in text]

_IDS = ("image_token_id", "video_token_id", "audio_token_id", "vision_start_token_id", "vision_end_token_id",
        "audio_start_token_id", "audio_end_token_id")


def omni_template(t: dict) -> str:
    """The ChatML template of an Omni thinker, with the token spellings `t` (keys as _IDS, without _id)."""
    def part(kind, start, end):
        return f"{t[start]}{t[kind + '_token']}{t[end]}"

    return media_chat_template({"image": part("image", "vision_start_token", "vision_end_token"),
                                "video": part("video", "vision_start_token", "vision_end_token"),
                                "audio": part("audio", "audio_start_token", "audio_end_token")})


def audio_tokens_fn(config):
    """frames -> placeholder tokens, by the family's own function (it is the model's own count)."""
    module, _ = OMNI_MODELS[config.model_type]
    mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    if config.model_type == "qwen2_5_omni_thinker":
        encoder = mod.Qwen2_5OmniAudioEncoder
        return lambda frames: int(encoder._get_feat_extract_output_lengths(None, torch.tensor(frames))[1])
    n_window = config.audio_config.n_window
    return lambda frames: int(mod._get_feat_extract_output_lengths(torch.tensor(frames), n_window))


def audio_settings_for(config, **overrides) -> AudioSettings:
    """Audio settings of an Omni config: mel bins from its audio config, the rest from `overrides`."""
    if "mel_bins" in overrides and overrides["mel_bins"] != config.audio_config.num_mel_bins:
        raise ValueError("mel_bins comes from the model's audio config and cannot be overridden")
    return AudioSettings(**{**overrides, "mel_bins": config.audio_config.num_mel_bins})


class OmniProcessor(VLProcessor):
    def __init__(self, tok, config, settings: MediaSettings, audio: AudioSettings, chat_template: str = "qwen_vl",
                 use_audio_in_video: bool = False):
        self.tok, self.config, self.settings, self.audio = tok, config, settings, audio
        self.use_audio_in_video = use_audio_in_video
        ids = {k: getattr(config, k, None) for k in _IDS}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"the model config names no {', '.join(missing)}")
        added = {i for i in tok.get_added_vocab().values()}
        absent = [f"{k} {v}" for k, v in ids.items() if v not in added]
        if absent:
            raise ValueError("the tokenizer has no special token for the model config's " + ", ".join(absent))
        spelled = {k[:-3]: tok.convert_ids_to_tokens(v) for k, v in ids.items()}
        self.template = omni_template(spelled) if chat_template == "qwen_vl" else template_for(tok, chat_template)
        self.image_processor = settings.image_processor()
        self.extractor = audio.feature_extractor()
        self.image_id, self.video_id, self.audio_id = ids["image_token_id"], ids["video_token_id"], ids["audio_token_id"]
        self.start_id, self.end_id = ids["vision_start_token_id"], ids["vision_end_token_id"]
        self.audio_start_id, self.audio_end_id = ids["audio_start_token_id"], ids["audio_end_token_id"]
        self.timestamps = False
        self.merge = settings.merge_size ** 2
        self._stamp_ids = {}
        self.pads = {self.image_id: "image", self.video_id: "video", self.audio_id: "audio"}
        self.audio_tokens = audio_tokens_fn(config)
        self.interleave = Interleave(config, {"audio_bos_token": self.audio_start_id, "audio_eos_token": self.audio_end_id,
                                              "video_token": self.video_id, "audio_token": self.audio_id},
                                     settings.merge_size) if use_audio_in_video else None

    @property
    def media_ids(self) -> tuple:
        return (self.image_id, self.video_id, self.start_id, self.end_id, self.audio_id, self.audio_start_id,
                self.audio_end_id)

    def plan(self, kind: str, path: str):
        if kind == "video" and self.use_audio_in_video:
            video = super().plan(kind, path)
            try:
                track = self.plan("audio", path)
            except MediaError as e:
                raise MediaError("video without a usable audio track" if e.reason == "no audio stream" else e.reason,
                                 f"{e.detail} (use_audio_in_video)") from None
            return AVPlan(**{f: getattr(video, f) for f in video.__dataclass_fields__}, audio=track)
        if kind != "audio":
            return super().plan(kind, path)
        plan = plan_audio(path, self.audio)
        if self.audio_tokens(plan.frames) < 1:
            raise MediaError("audio too short", f"{path}: {plan.seconds * 1000:.0f} ms")
        return plan

    @staticmethod
    def grid(kind: str, plan) -> tuple:
        return (0, 0, 0) if kind == "audio" else VLProcessor.grid(kind, plan)

    def audio_frames(self, planned) -> list[int]:
        """Feature frames of each clip and each video's audio track, in order of appearance."""
        return [plan.frames if kind == "audio" else plan.audio.frames for kind, _, plan in planned
                if kind == "audio" or isinstance(plan, AVPlan)]

    def clips(self, kind: str, plan) -> bool:
        """Whether a medium brings audio features (a clip, or a video with its track)."""
        return kind == "audio" or isinstance(plan, AVPlan)

    def features(self, path: str, plan) -> np.ndarray:
        """Log-mel features (mel_bins, frames) of a clip (or of a video's audio track)."""
        return audio_features(path, plan.audio if isinstance(plan, AVPlan) else plan, self.audio, self.extractor)

    def pixels(self, kind: str, path: str, plan) -> np.ndarray:
        if kind == "audio":
            raise MediaError("audio has no pixels", path)
        return super().pixels(kind, path, plan)

    def _expansion(self, kind: str, plan) -> list[int]:
        if kind == "audio":
            return [self.audio_id] * self.audio_tokens(plan.frames)
        if isinstance(plan, AVPlan):
            return self.interleave(plan.grid, plan.second_per_grid, self.audio_tokens(plan.audio.frames))
        return super()._expansion(kind, plan)

    def save_hf_processor(self, out_dir):
        """The tokenizer, chat template and feature extractor settings (see export notes)."""
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save_pretrained(str(out))
        (out / "chat_template.jinja").write_text(self.template)
        self.extractor.save_pretrained(str(out))
        self.image_processor.save_pretrained(str(out))
        return out


def build_omni_processor(tokenizer, config, chat_template: str = "qwen_vl", use_audio_in_video: bool = False,
                         audio: dict | None = None, **settings) -> OmniProcessor:
    """The processor of an Omni plan: tokenizer, config, media settings and audio settings
    (AudioSettings fields: rate, hop, n_fft, max_seconds)."""
    from pathlib import Path

    from ..kinds import load_tokenizer
    from .media import settings_for

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    return OmniProcessor(tok, config, settings_for(config, **settings), audio_settings_for(config, **(audio or {})),
                         chat_template, use_audio_in_video)
