"""The Omni thinkers' processor, built offline: the VL processor plus sound clips.

`OmniProcessor(tok, config, settings, audio)` serves Qwen2.5-Omni and Qwen3-Omni-MoE thinkers. Its
token ids come from the model config (image, video, audio placeholders; vision and audio start/end),
and each must be a special token of the tokenizer (checked here, named in the error). The built-in
template writes an image as ``<vision start><image pad><vision end>``, a video likewise, and a clip
as ``<audio start><audio pad><audio end>``, in the tokenizer's own spelling of those ids (Qwen2.5-Omni
spells them ``<|vision_bos|><|IMAGE|><|vision_eos|>`` ... ``<|audio_bos|><|AUDIO|><|audio_eos|>``,
Qwen3-Omni ``<|vision_start|><|image_pad|>`` ... ``<|audio_start|><|audio_pad|><|audio_end|>``).
A clip's pad becomes one token per audio-tower output frame, counted by the family's own function.

`use_audio_in_video` (each video's audio track interleaved with its frames) is refused for now:
both thinkers accept it, but their interleaving orders differ and are not built here yet.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from .audio import AudioSettings, audio_features, plan_audio
from .media import MediaError, MediaSettings
from .positions import OMNI_MODELS
from .processor import VLProcessor
from .template import template_for

_IDS = ("image_token_id", "video_token_id", "audio_token_id", "vision_start_token_id", "vision_end_token_id",
        "audio_start_token_id", "audio_end_token_id")


def omni_template(t: dict) -> str:
    """The ChatML template of an Omni thinker, with the token spellings `t` (keys as _IDS, without _id)."""
    def part(kind, start, end):
        return (f"{{%- elif part['type'] == '{kind}' -%}}{{{{ '{t[start]}{t[kind + '_token']}{t[end]}' }}}}")

    return (
        "{%- macro parts(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        + part("image", "vision_start_token", "vision_end_token")
        + part("video", "vision_start_token", "vision_end_token")
        + part("audio", "audio_start_token", "audio_end_token")
        + "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' -%}"
        "{% generation %}{{ parts(message['content']) + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{%- else -%}{{ parts(message['content']) + '<|im_end|>\\n' }}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


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
        if use_audio_in_video:
            raise ValueError("use_audio_in_video is not supported yet (each video's audio track, interleaved)")
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

    @property
    def media_ids(self) -> tuple:
        return (self.image_id, self.video_id, self.start_id, self.end_id, self.audio_id, self.audio_start_id,
                self.audio_end_id)

    def plan(self, kind: str, path: str):
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
        return [plan.frames for kind, _, plan in planned if kind == "audio"]

    def features(self, path: str, plan) -> np.ndarray:
        """Log-mel features (mel_bins, frames) of a clip."""
        return audio_features(path, plan, self.audio, self.extractor)

    def pixels(self, kind: str, path: str, plan) -> np.ndarray:
        if kind == "audio":
            raise MediaError("audio has no pixels", path)
        return super().pixels(kind, path, plan)

    def _expansion(self, kind: str, plan) -> list[int]:
        if kind == "audio":
            return [self.audio_id] * self.audio_tokens(plan.frames)
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
