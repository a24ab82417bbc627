"""Audio: decoded with PyAV, resampled to the feature extractor's rate, turned into log-mel features.

A clip (a sound file, or the audio track of a video with `use_audio_in_video`) is decoded by PyAV
(FFmpeg: wav, aiff, au, flac, mp3, ogg, the audio of mp4/mkv...), mixed down to mono and resampled
to `audio_rate` samples per second by FFmpeg's resampler. transformers' `WhisperFeatureExtractor`
(the Omni thinkers' feature extractor) makes its log-mel features: `num_mel_bins` rows from the
model's audio config, one column per `audio_hop` samples. A clip is NOT padded to 30 s (Whisper's
default pads every clip to 3000 frames): the Omni audio towers take any length, so a clip keeps its
own frames, and a micro-batch pads its clips only to the longest one (`feature_attention_mask`).

The audio tower turns F feature frames into fewer tokens (Qwen2.5-Omni: ((F - 1) // 2 + 1 - 2) // 2 + 1;
the count is the family's own function, runtime.data.multimodal.omni.audio_tokens_fn), the number of
audio placeholders the text gets.

`plan_audio` decodes the file once when the data is read (so a missing or broken clip is a bad
record); `audio_features` decodes it again when the batch is made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .media import MediaError


@dataclass(frozen=True)
class AudioSettings:
    """What the feature extractor does to a clip (the plan's audio settings). `mel_bins` comes from
    the model's audio config; a clip over `max_seconds` is a bad record (the audio towers' position
    table holds 30 s of frames)."""
    mel_bins: int = 128
    rate: int = 16000
    hop: int = 160
    n_fft: int = 400
    max_seconds: float = 30.0

    def feature_extractor(self):
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor(feature_size=self.mel_bins, sampling_rate=self.rate, hop_length=self.hop,
                                       n_fft=self.n_fft, chunk_length=max(1, int(np.ceil(self.max_seconds))))


@dataclass(frozen=True)
class AudioPlan:
    """A clip's `frames` (feature columns), `seconds` and `stream` ("audio": a sound file; "video": the
    audio track of a video)."""
    frames: int
    seconds: float


def decode(path: str, rate: int) -> np.ndarray:
    """The first audio stream of `path`, mono float32 at `rate`; MediaError if missing/undecodable."""
    import av

    chunks = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream", path)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError("missing audio file", path) from None
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError("undecodable audio", f"{path}: {type(e).__name__}: {e}") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave


def plan_audio(path: str, s: AudioSettings) -> AudioPlan:
    """Decode `path` once and fix its number of feature frames; MediaError if it cannot be used."""
    wave = decode(path, s.rate)
    seconds = len(wave) / s.rate
    if seconds > s.max_seconds:
        raise MediaError("audio too long", f"{path}: {seconds:.1f} s > audio_max_seconds {s.max_seconds}")
    frames = len(wave) // s.hop
    if frames < 1 or len(wave) <= s.n_fft // 2:  # (the STFT pads half a window by reflection)
        raise MediaError("audio too short", f"{path}: {seconds * 1000:.0f} ms")
    return AudioPlan(frames, seconds)


def features(wave: np.ndarray, s: AudioSettings, extractor) -> np.ndarray:
    """Log-mel features (mel_bins, frames) of a mono wave at s.rate, no padding beyond the clip."""
    out = extractor(wave, sampling_rate=s.rate, padding="longest", truncation=False, return_tensors="np")
    return np.asarray(out["input_features"][0], dtype=np.float32)


def audio_features(path: str, plan: AudioPlan, s: AudioSettings, extractor) -> np.ndarray:
    """Log-mel features (mel_bins, plan.frames) of the clip at `path`, float32."""
    x = features(decode(path, s.rate), s, extractor)
    if x.shape[1] != plan.frames:
        raise RuntimeError(f"{path}: {x.shape[1]} feature frames != {plan.frames} planned when the data was read")
    return x
