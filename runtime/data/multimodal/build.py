"""The processor of a plan: a VL processor, or an Omni thinker's (with audio settings).

Kept apart from processor.py and omni.py so neither imports the other's module for the choice."""
from __future__ import annotations

from pathlib import Path

from ..kinds import load_tokenizer
from .media import settings_for
from .omni import build_omni_processor
from .positions import is_omni
from .processor import VLProcessor

AUDIO_KEYS = {"audio_rate": "rate", "audio_hop": "hop", "audio_n_fft": "n_fft", "audio_max_seconds": "max_seconds"}
OMNI_KEYS = (*AUDIO_KEYS, "use_audio_in_video")  # the media keys only an Omni thinker takes

def build_processor(tokenizer, config, chat_template: str = "qwen_vl", **settings) -> VLProcessor:
    """The processor of a plan: a tokenizer (a local directory, or one already loaded), the model's
    config, and media settings (MediaSettings fields; the rest from the config, see settings_for).
    An Omni thinker's config gets the OmniProcessor (runtime.data.multimodal.omni), whose audio
    settings are the `audio_*` keys (AUDIO_KEYS); other models refuse them."""

    audio = {AUDIO_KEYS[k]: settings.pop(k) for k in list(settings) if k in AUDIO_KEYS}
    in_video = settings.pop("use_audio_in_video", None)
    if is_omni(config):
        return build_omni_processor(tokenizer, config, chat_template, bool(in_video), audio=audio, **settings)
    if audio or in_video is not None:
        audio = {**audio, **({} if in_video is None else {"use_audio_in_video": in_video})}
        raise ValueError(f"{config.model_type} has no audio tower: audio settings {sorted(audio)} do not apply")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    return VLProcessor(tok, config, settings_for(config, **settings), chat_template)
