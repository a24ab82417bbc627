"""use_audio_in_video (one process, fp32): each video's audio track interleaved with its frames by the
family's own processor method; positions from the thinker's own get_rope_index(use_audio_in_video=True)
with a 2-D mask equal what the pipeline passes, packed rows equal separate runs; a silent video is a
bad record."""
import json

import numpy as np
import pytest
import torch

from runtime.data.bad_records import BadRecords
from runtime.data.multimodal import Collator, model_inputs
from runtime.data.multimodal.docs import VLDocMaker
from runtime.data.multimodal.positions import rope_index
from runtime.data.sources import Source, read_records
from runtime.loss import cross_entropy_sum

import omnifix
import vlfix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return omnifix.make_data(tmp_path_factory.mktemp("omni_av"))


def run(model, batch, **extra):
    with torch.no_grad():
        out = model(**{**model_inputs(batch), **extra}, use_cache=False)
    return out.logits, float(cross_entropy_sum(out.logits, batch["labels"]))


@pytest.mark.parametrize("name", list(omnifix.CONFIGS))
def test_audio_in_video(data, name):
    proc = omnifix.processor(name, data["tokenizer"], use_audio_in_video=True)
    src = Source("av", str(data["chat_av"]), kind="sft")
    made = [VLDocMaker(src, proc, 512, BadRecords()).make(r) for r in read_records(src)]
    assert all(m is not None for m in made)
    docs = [d for d, _ in made]
    ids = docs[0][0]
    start = int(np.flatnonzero(ids == proc.start_id)[0])
    assert ids[start + 1] == proc.audio_start_id  # <vision start><audio start> video and audio tokens ...
    inside = ids[start + 2:int(np.flatnonzero(ids == proc.audio_end_id)[0])]
    assert set(inside.tolist()) == {proc.video_id, proc.audio_id}
    assert (np.diff(np.flatnonzero(inside == proc.audio_id)) > 1).any()  # interleaved, not one block
    model = omnifix.reference(name).eval()
    rope = rope_index(proc.config, use_audio_in_video=True)
    alone = Collator(proc, rope, needs=())
    pad = proc.tok.pad_token_id
    separate = []
    for d in docs:
        b = alone([[d]], len(d[0]), pad)
        assert b["input_features"].shape[0] == len(proc.audio_frames(d.media))
        logits, s = run(model, b)
        separate.append((logits, s))
        kw = {"position_ids": None, "attention_mask": torch.ones_like(b["input_ids"]), "use_audio_in_video": True}
        if "video_grid_thw" in b:
            kw["video_second_per_grid"] = torch.tensor([p.second_per_grid for k, _, p in d.media if k == "video"])
        own, _ = run(model, b, **kw)
        assert float((own - logits).abs().max()) < 1e-5, name
    batch = Collator(proc, rope, needs=("image", "video", "audio"))([docs], sum(len(d[0]) for d in docs), pad)
    _, loss = run(model, batch)
    total = sum(s for _, s in separate)
    assert abs(loss - total) <= 1e-5 * total, (name, loss, total)


def test_a_silent_video_is_a_bad_record(data, tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps(vlfix.hf([{"type": "video", "video": str(data["silent"])}], "x")) + "\n")
    bad = BadRecords()
    src = Source("s", str(tmp_path / "s.jsonl"), kind="sft")
    maker = VLDocMaker(src, omnifix.processor("tiny-qwen2.5-omni-thinker", data["tokenizer"], use_audio_in_video=True),
                       512, bad)
    assert maker.make(next(iter(read_records(src)))) is None
    assert bad.records[0][1] == "video without a usable audio track", bad.records
