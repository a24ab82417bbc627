"""The vision-language processor, built offline: tokenizer + chat template + media settings.

`VLProcessor(tok, config, settings)` turns a conversation (messages of typed parts, see
records.py) and the plans of its media into token ids, labels and grids, laid out as the family's
Hugging Face processor lays them out: the template writes one ``<|image_pad|>`` (``<|video_pad|>``)
per medium, which becomes one token per merged patch group (grid t*h*w / merge_size**2); Qwen3-VL
videos become, per temporal patch, ``<{t:.1f} seconds><|vision_start|><|video_pad|>...<|vision_end|>``
inside the template's own start/end tokens. The expansion is done on token ids after tokenising the
short text, so assistant spans found on the text stay valid.

`save_hf_processor(out, ...)` writes a processor directory for the HF export: tokenizer, chat
template, the image processor, and the video settings as the family's video processor reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..kinds import shifted_labels
from .media import MediaError, MediaSettings, image_pixels, probe_image
from .records import RecordError
from .template import render, template_for
from .video import plan_video, video_pixels

_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>", "vision_start": "<|vision_start|>",
           "vision_end": "<|vision_end|>"}
_HF_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                  "qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}


class VLProcessor:
    def __init__(self, tok, config, settings: MediaSettings, chat_template: str = "qwen_vl"):
        self.tok, self.config, self.settings = tok, config, settings
        self.template = template_for(tok, chat_template)
        self.image_processor = settings.image_processor()
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in _TOKENS.items()}
        expected = {"image": config.image_token_id, "video": config.video_token_id,
                    "vision_start": config.vision_start_token_id, "vision_end": config.vision_end_token_id}
        wrong = {k: (ids[k], v) for k, v in expected.items() if ids[k] != v}
        if wrong:
            raise ValueError("the tokenizer's vision tokens do not match the model config "
                             + ", ".join(f"{_TOKENS[k]}: tokenizer {a}, config {b}" for k, (a, b) in wrong.items()))
        self.image_id, self.video_id = ids["image"], ids["video"]
        self.start_id, self.end_id = ids["vision_start"], ids["vision_end"]
        self.timestamps = config.model_type.startswith("qwen3_vl")  # Qwen3-VL writes frame times
        self.merge = settings.merge_size ** 2
        self._stamp_ids: dict[str, list[int]] = {}
        self.pads = {self.image_id: "image", self.video_id: "video"}  # placeholder id -> media kind

    @property
    def media_ids(self) -> tuple:
        """Token ids that belong to a medium (placeholders and their start/end tokens)."""
        return (self.image_id, self.video_id, self.start_id, self.end_id)

    def audio_frames(self, planned) -> list[int]:
        """Feature frames of each audio input of planned media, in order (none without an audio tower)."""
        return []

    # -- media ------------------------------------------------------------------------------
    def plan(self, kind: str, path: str):
        """(1, h, w) grid of an image, a VideoPlan of a video; MediaError if unusable."""
        if kind == "audio":
            raise MediaError("audio needs an Omni model", f"{path} ({self.config.model_type} has no audio tower)")
        return probe_image(path, self.settings) if kind == "image" else plan_video(path, self.settings)

    @staticmethod
    def grid(kind: str, plan) -> tuple:
        return tuple(plan) if kind == "image" else tuple(plan.grid)

    def pixels(self, kind: str, path: str, plan) -> np.ndarray:
        if kind == "image":
            return image_pixels(path, plan, self.settings, self.image_processor)
        return video_pixels(path, plan, self.settings, self.image_processor)

    # -- text -------------------------------------------------------------------------------
    def _stamp(self, seconds: float) -> list[int]:
        text = f"<{seconds:.1f} seconds>"
        if text not in self._stamp_ids:
            self._stamp_ids[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._stamp_ids[text]

    def _expansion(self, kind: str, plan) -> list[int]:
        t, h, w = self.grid(kind, plan)
        if kind == "image":
            return [self.image_id] * (t * h * w // self.merge)
        if not self.timestamps:
            return [self.video_id] * (t * h * w // self.merge)
        out = []
        for seconds in plan.timestamps:
            out += self._stamp(seconds) + [self.start_id] + [self.video_id] * (h * w // self.merge) + [self.end_id]
        return out

    def encode(self, messages: list[dict], media: list[tuple[str, str, object]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of one conversation whose media are [(kind, path, plan)] in order;
        labels already shifted, only on assistant tokens. Raises RecordError."""
        try:
            text, spans = render(messages, self.template, self.tok)
        except Exception as e:  # the template refused the conversation
            raise RecordError("chat template error", f"{type(e).__name__}: {e}") from None
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        mask = np.zeros(len(ids), dtype=bool)
        for s, e in spans:  # a token is the assistant's when its characters overlap a span
            mask |= (off[:, 0] < e) & (off[:, 1] > s) & (off[:, 1] > off[:, 0])
        pads = np.flatnonzero(np.isin(ids, list(self.pads)))
        kinds = [self.pads[int(ids[p])] for p in pads]
        if kinds != [m[0] for m in media]:
            counts = " / ".join(f"{kinds.count(k)} {k}" for k in self.pads.values())
            raise RecordError("vision tokens do not match the media",
                              f"text has {counts} placeholders for {len(media)} media (media tokens typed in the text?)")
        out_ids, out_mask, at = [], [], 0
        for p, (kind, _, plan) in zip(pads, media):
            out_ids.append(ids[at:p])
            out_mask.append(mask[at:p])
            tokens = self._expansion(kind, plan)
            out_ids.append(np.asarray(tokens, dtype=np.int64))
            out_mask.append(np.zeros(len(tokens), dtype=bool))  # vision tokens are never targets
            at = p + 1
        out_ids.append(ids[at:])
        out_mask.append(mask[at:])
        ids, mask = np.concatenate(out_ids), np.concatenate(out_mask)
        return ids, shifted_labels(ids, mask)

    def save_hf_processor(self, out_dir) -> Path:
        return save_hf_processor(out_dir, self.tok, self.config, self.settings, self.template)


def _image_only(cls):
    """`cls` (a Qwen-VL processor) declaring only image processor + tokenizer: the video processors
    need torchvision, which is not installed here."""

    class ImageOnly(cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


def hf_processor_class(config):
    import transformers

    name = _HF_PROCESSORS.get(config.model_type)
    if name is None:
        raise ValueError(f"no processor for model type {config.model_type!r}; known: {sorted(_HF_PROCESSORS)}")
    return _image_only(getattr(transformers, name))


def save_hf_processor(out_dir, tok, config, settings: MediaSettings, template: str) -> Path:
    """Write the processor files into `out_dir`: `processor_config.json` names the family's processor
    class and carries the image processor and the video processor settings, beside the tokenizer and
    ``chat_template.jinja``. `load_hf_processor` reads it back; transformers' AutoProcessor needs
    torchvision for the video processor and could not be tried here (none can be installed)."""
    out = Path(out_dir)
    cls = hf_processor_class(config)
    cls(image_processor=settings.image_processor(), tokenizer=tok, chat_template=template).save_pretrained(out)
    cfg_path = out / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    s = settings
    cfg["video_processor"] = {
        "video_processor_type": "Qwen3VLVideoProcessor" if config.model_type.startswith("qwen3_vl")
        else "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": s.video_min_pixels, "longest_edge": s.video_max_pixels},
        "patch_size": s.patch_size, "temporal_patch_size": s.temporal_patch_size, "merge_size": s.merge_size,
        "fps": s.video_fps, "min_frames": s.video_min_frames, "max_frames": s.video_max_frames,
        "do_sample_frames": True, "image_mean": list(s.image_mean), "image_std": list(s.image_std),
    }
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def load_hf_processor(path, config):
    """The processor `save_hf_processor` wrote (image processor + tokenizer + template)."""
    return hf_processor_class(config).from_pretrained(str(path))
