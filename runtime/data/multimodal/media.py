"""Media settings and images: how big each image becomes, and its pixel patches.

Sizes follow the Qwen-VL image processors: an image is resized (aspect kept) so both sides are
multiples of ``patch_size * merge_size`` and its area lies within [min_pixels, max_pixels]
(transformers' own `smart_resize`); it is then cut into ``patch_size`` squares, repeated
``temporal_patch_size`` times along time, giving a grid (1, h, w) of patches and ``h * w /
merge_size**2`` placeholder tokens. Pixels come from transformers' Pillow image processor
(`Qwen2VLImageProcessorPil`), so no torchvision is needed.

`probe_image` opens and fully decodes the file once, when the data is read, so a missing or
broken image is a bad record at its ``file:line`` rather than a crash in the middle of training.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class MediaError(ValueError):
    """A media file that cannot be used; `reason` is the bad-record reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class MediaSettings:
    """What the processor does to images and videos (a plan's processor settings).

    Video frames are sampled at `video_fps` (between `video_min_frames` and `video_max_frames`),
    each frame's area is kept within [video_min_pixels, video_max_pixels] and the sampled frames
    together within `video_max_total_pixels` (None: no total limit). A video longer than
    `video_max_seconds` is a bad record (None: any length; long videos are sampled more sparsely).
    """
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 768
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_max_total_pixels: int | None = None
    video_max_seconds: float | None = None

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def image_processor(self):
        """transformers' Pillow image processor with these settings."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(
            min_pixels=self.min_pixels, max_pixels=self.max_pixels, patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size, merge_size=self.merge_size,
            image_mean=list(self.image_mean), image_std=list(self.image_std))


def settings_for(config, **overrides) -> MediaSettings:
    """Settings matching a VL model config: patch, temporal patch and merge sizes from its vision
    config (they must agree with the model), the family's normalisation and pixel defaults
    (Qwen3-VL: 16-pixel patches, mean/std 0.5), then `overrides` (any MediaSettings field)."""
    unknown = set(overrides) - {f.name for f in fields(MediaSettings)}
    if unknown:
        raise ValueError(f"unknown media settings: {sorted(unknown)}")
    vision = config.vision_config
    s = MediaSettings(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                      merge_size=vision.spatial_merge_size)
    if config.model_type.startswith(("qwen3_vl", "qwen3_omni")):
        s = replace(s, image_mean=HALF, image_std=HALF, min_pixels=256 * 256, max_pixels=4096 * 4096,
                    video_min_pixels=128 * 32 * 32, video_max_pixels=768 * 32 * 32)
    fixed = {"patch_size", "temporal_patch_size", "merge_size"} & {k for k, v in overrides.items()
                                                                   if v != getattr(s, k)}
    if fixed:
        raise ValueError(f"{sorted(fixed)} come from the model's vision config and cannot be overridden")
    return replace(s, **overrides)


def resized(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) after the Qwen-VL resize (transformers' `smart_resize`)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    try:
        return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:  # an aspect ratio over 200
        raise MediaError("extreme aspect ratio", str(e)) from None


def open_image(path: str):
    """The decoded RGB Pillow image at `path`, or MediaError (missing / undecodable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode everything now: a truncated file fails here
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError("missing image file", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError("undecodable image", f"{path}: {type(e).__name__}: {e}") from None


def probe_image(path: str, s: MediaSettings) -> tuple[int, int, int]:
    """The patch grid (t=1, h, w) the image will have; decodes the file once to check it."""
    width, height = open_image(path).size
    h, w = resized(height, width, s.factor, s.min_pixels, s.max_pixels)
    return 1, h // s.patch_size, w // s.patch_size


def image_pixels(path: str, grid, s: MediaSettings, processor) -> np.ndarray:
    """Pixel patches (t*h*w, 3 * temporal_patch_size * patch_size**2) of one image, float32."""
    out = processor(images=[open_image(path)], return_tensors="np")
    got = tuple(int(x) for x in out["image_grid_thw"][0])
    if got != tuple(grid):  # the file changed since it was read, or the settings differ
        raise RuntimeError(f"{path}: image grid {got} != {tuple(grid)} planned when the data was read")
    return np.asarray(out["pixel_values"], dtype=np.float32)
