"""Videos: decoded with PyAV, sampled, resized and cut into space-time patches.

A video is sampled uniformly at `video_fps` frames per second (at least `video_min_frames`, at most
`video_max_frames`, a multiple of `temporal_patch_size`; a video with fewer frames than that
repeats frames). All frames get one size (`media.resized` with the per-frame pixel budget, which
`video_max_total_pixels` shrinks as frames are added), are normalised by transformers' Pillow image
processor, and every `temporal_patch_size` consecutive frames form one temporal patch: the grid is
(frames / temporal_patch_size, h, w), with the channel, time, row, column layout inside a patch that
the Qwen-VL vision towers read (the same layout an image has, where time repeats one frame).

`plan_video` decodes the file once when the data is read (so a broken video is a bad record) and
fixes everything that depends on it; `video_pixels` decodes it again when the batch is made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .media import MediaError, MediaSettings, resized


@dataclass(frozen=True)
class VideoPlan:
    """What a video becomes: sampled frame `indices`, patch `grid` (t, h, w), resized `size`
    (height, width), the native `fps`, `second_per_grid` (seconds one temporal patch spans; the
    temporal spacing of Qwen2.5-VL positions) and `timestamps` (the middle second of each temporal
    patch; Qwen3-VL writes them into the text)."""
    indices: tuple
    grid: tuple
    size: tuple
    fps: float
    second_per_grid: float
    timestamps: tuple


def _decode(path: str, keep=None):
    """(frames kept as RGB arrays, frame count, native fps, (height, width)); MediaError if the
    file is missing or cannot be decoded. `keep`: indices of frames to keep (None: none)."""
    import av

    wanted = set(keep or ())
    frames, count = {}, 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("undecodable video", f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            for frame in container.decode(stream):
                if count in wanted:
                    frames[count] = frame.to_ndarray(format="rgb24")
                count += 1
            size = (stream.codec_context.height, stream.codec_context.width)
    except FileNotFoundError:
        raise MediaError("missing video file", path) from None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError("undecodable video", f"{path}: {type(e).__name__}: {e}") from None
    if count == 0 or not rate:
        raise MediaError("undecodable video", f"{path}: no frames or no frame rate")
    return frames, count, float(rate), size


def sample_indices(total: int, fps: float, s: MediaSettings) -> list[int]:
    """Indices of the frames kept out of `total` frames at `fps` (see the module docstring)."""
    tps = s.temporal_patch_size
    n = round(total / fps * s.video_fps)
    n = min(max(n, s.video_min_frames), s.video_max_frames, max(total, tps))
    n = max(tps, n // tps * tps)
    return [int(i) for i in np.linspace(0, total - 1, n).round()]


def frame_size(height: int, width: int, frames: int, s: MediaSettings) -> tuple[int, int]:
    """Resized (height, width) of every frame of a video sampled to `frames` frames."""
    budget = s.video_max_pixels
    if s.video_max_total_pixels is not None:
        budget = min(budget, max(s.video_max_total_pixels // frames, s.factor ** 2))
    return resized(height, width, s.factor, min(s.video_min_pixels, budget), budget)


def plan_video(path: str, s: MediaSettings) -> VideoPlan:
    """Decode `path` once and fix its sampling, size and grid; MediaError if it cannot be used."""
    _, total, fps, (height, width) = _decode(path)
    seconds = total / fps
    if s.video_max_seconds is not None and seconds > s.video_max_seconds:
        raise MediaError("video too long", f"{path}: {seconds:.1f} s > video_max_seconds {s.video_max_seconds}")
    indices = sample_indices(total, fps, s)
    h, w = frame_size(height, width, len(indices), s)
    tps = s.temporal_patch_size
    grid = (len(indices) // tps, h // s.patch_size, w // s.patch_size)
    sampled_fps = len(indices) / total * fps
    stamps = [i / fps for i in indices]
    middle = tuple((stamps[k] + stamps[k + tps - 1]) / 2 for k in range(0, len(stamps), tps))
    return VideoPlan(tuple(indices), grid, (h, w), fps, tps / sampled_fps, middle)


def video_pixels(path: str, plan: VideoPlan, s: MediaSettings, processor) -> np.ndarray:
    """Pixel patches (t*h*w, 3 * temporal_patch_size * patch_size**2) of one video, float32."""
    from PIL import Image

    kept, _, _, _ = _decode(path, keep=plan.indices)
    if len(kept) != len(set(plan.indices)):
        raise RuntimeError(f"{path}: the video has fewer frames than when the data was read")
    h, w = plan.size
    # Every frame to the planned size (bicubic, as the image processor resizes), then normalised
    # and cut into patches by the image processor itself.
    frames = [Image.fromarray(kept[i]).resize((w, h), Image.Resampling.BICUBIC) for i in plan.indices]
    out = processor(images=frames, do_resize=False, return_tensors="np")
    grids = {tuple(int(x) for x in g) for g in out["image_grid_thw"]}
    if grids != {(1, h // s.patch_size, w // s.patch_size)}:
        raise RuntimeError(f"{path}: frame grids {sorted(grids)} differ from the planned {plan.grid}")
    tps, p = s.temporal_patch_size, s.patch_size
    n = (h // p) * (w // p)
    # Each frame came out as an image, its time axis repeating the frame: keep one copy, then let
    # every tps consecutive frames fill the time axis of one temporal patch.
    x = np.asarray(out["pixel_values"], dtype=np.float32).reshape(len(frames), n, 3, tps, p, p)[:, :, :, 0]
    x = x.reshape(len(frames) // tps, tps, n, 3, p, p).transpose(0, 2, 3, 1, 4, 5)
    return np.ascontiguousarray(x.reshape(-1, 3 * tps * p * p))
