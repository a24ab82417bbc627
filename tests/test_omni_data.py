"""Omni audio data: real recordings decoded by PyAV and resampled, features without padding to 30 s,
audio tokens counted by the model's own function, records with audio parts, bad audio records."""
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from runtime.data.bad_records import BadRecords
from runtime.data.multimodal import build_vl_loader
from runtime.data.multimodal.audio import AudioSettings, decode, plan_audio
from runtime.data.multimodal.docs import VLDocMaker
from runtime.data.multimodal.records import conversation
from runtime.data.sources import Source, read_records

import omnifix
import vlfix

AUDIODATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return omnifix.make_data(tmp_path_factory.mktemp("omni_data"))


@pytest.mark.skipif(not AUDIODATA.is_dir(), reason="this Python has no test/audiodata")
def test_real_recordings_decode_alike_in_every_container():
    """CPython's pluck recordings (wav, aiff, au; 16-bit PCM) decode to the same resampled wave."""
    waves = [decode(str(AUDIODATA / f"pluck-pcm16.{ext}"), 16000) for ext in ("wav", "aiff", "au")]
    assert len({len(w) for w in waves}) == 1 and len(waves[0]) > 1000
    assert max(float(np.abs(w - waves[0]).max()) for w in waves) < 1e-3
    assert float(np.abs(waves[0]).max()) > 0.05  # real sound, not silence


def test_features_keep_the_clip_length(data):
    """WhisperFeatureExtractor would pad to 3000 frames; a clip keeps its own frames (rate / hop per s)."""
    proc = omnifix.processor("tiny-qwen2.5-omni-thinker", data["tokenizer"])
    path = str(data["dir"] / "media" / "clip1.wav")  # 0.6 s
    plan = plan_audio(path, proc.audio)
    x = proc.features(path, plan)
    assert x.shape == (32, plan.frames) and plan.frames == int(0.6 * 16000) // 160
    assert proc.audio_tokens(plan.frames) == ((plan.frames - 1) // 2 + 1 - 2) // 2 + 1  # Qwen2.5-Omni


def test_audio_parts_in_both_layouts(tmp_path):
    hf = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "?"}]},
                       {"role": "assistant", "content": "a tone"}]}
    llava = {"audio": "a.wav", "conversations": [{"from": "human", "value": "<audio>\n?"}, {"from": "gpt", "value": "a tone"}]}
    for rec in (hf, llava):
        messages, media = conversation(rec, "messages", tmp_path)
        assert media == [("audio", str(tmp_path / "a.wav"))]
        assert messages[0]["content"][0] == {"type": "audio"}


def test_bad_audio_records(data, tmp_path):
    omnifix.write_wav(tmp_path / "long.wav", 5.0)
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot audio")
    recs = [vlfix.hf([{"type": "audio", "audio": p}], "x") for p in ("missing.wav", "broken.wav", "long.wav")]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    src = Source("bad", str(tmp_path / "bad.jsonl"), kind="sft")
    bad = BadRecords()
    maker = VLDocMaker(src, omnifix.processor("tiny-qwen3-omni-moe-thinker", data["tokenizer"]), 512, bad)
    assert [maker.make(r) for r in read_records(src)] == [None, None, None]
    assert [reason for _, reason, _ in bad.records] == ["missing audio file", "undecodable audio", "audio too long"]
    # a VL model has no audio tower: an audio part is a bad record, named
    bad = BadRecords()
    vl = VLDocMaker(Source("c", str(data["chat"]), kind="sft"), vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"]),
                    512, bad)
    assert vl.make(next(iter(read_records(Source("c", str(data["chat"]), kind="sft"))))) is None
    assert bad.records[0][1] == "audio needs an Omni model"


def test_audio_tokens_must_fit_max_len(data):
    bad = BadRecords()
    src = Source("c", str(data["chat"]), kind="sft")
    maker = VLDocMaker(src, omnifix.processor("tiny-qwen2.5-omni-thinker", data["tokenizer"]), 4, bad)
    assert maker.make(next(iter(read_records(src)))) is None
    assert bad.records[0][1] == "audio tokens exceed max_len"


def test_settings_from_the_model():
    from runtime.data.multimodal.omni import audio_settings_for
    from runtime.model import load_config

    config = load_config(omnifix.CONFIGS["tiny-qwen2.5-omni-thinker"])
    assert audio_settings_for(config, hop=320).mel_bins == 32
    with pytest.raises(ValueError, match="mel_bins"):
        audio_settings_for(config, mel_bins=128)
    assert AudioSettings().mel_bins == 128


def test_micro_batches_respect_the_audio_frame_budget(data):
    """Dynamic batching on Omni data: with `audio_frames`, every micro-batch holds at most that many
    feature frames of real clips (a micro-batch without audio gets a zero dummy clip, not counted)
    and every sample once per epoch; without it, the same data packs more frames into a micro-batch.
    A record whose clips alone exceed the budget is a bad record at its line."""
    proc = omnifix.processor("tiny-qwen2.5-omni-thinker", data["tokenizer"])
    src = Source("chat", str(data["chat"]), kind="sft")

    def epoch(**budget):
        ld = build_vl_loader([src], proc, max_len=512, pack="dynamic", tokens=2048, seed=0, prefetch=0,
                             log=lambda m: None, **budget)
        frames, targets, it = [], 0, iter(ld)
        while ld.epoch == 0:
            for mb in next(it):
                real = mb["input_features"].abs().sum((1, 2)) > 0
                frames.append(int(mb["feature_attention_mask"][real].sum()))
                targets += int((mb["labels"] != -100).sum())
        assert targets == ld.sampler.orders[0].store.targets()
        return frames, ld.bad_records.records

    free, _ = epoch()
    assert max(free) > 120, free
    within, bad = epoch(audio_frames=120)
    assert max(within) <= 120 and sum(within) == sum(free) and not bad, (within, bad)
    _, bad = epoch(audio_frames=60)  # records 2 and 6 hold a 0.9 s clip: 90 frames
    assert [(where.rsplit("/", 1)[-1], reason) for where, reason, _ in bad] == \
        [("chat.jsonl:2", "too many audio frames"), ("chat.jsonl:6", "too many audio frames")], bad
