"""Packed vision-language rows against each sample run alone (one process, fp32): the silent
failures of MULTIMODAL.md are checked to fail when the runtime's safeguards are removed."""
import numpy as np
import pytest
import torch

from runtime.data.multimodal import Collator, RopeIndex, model_inputs
from runtime.data.multimodal.docs import VLDocMaker
from runtime.data.bad_records import BadRecords
from runtime.data.sources import Source, read_records
from runtime.loss import cross_entropy_sum

import vlfix

FAMILIES = ["tiny-qwen2.5-vl", "tiny-qwen3-vl"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return vlfix.make_data(tmp_path_factory.mktemp("vl_packing"))


def documents(name, data):
    proc = vlfix.processor(name, data["tokenizer"])
    maker = VLDocMaker(Source("chat", str(data["chat"]), kind="sft"), proc, 512, BadRecords())
    docs = [maker.make(r) for r in read_records(Source("chat", str(data["chat"]), kind="sft"))]
    assert all(d is not None for d in docs)
    return proc, [d for d, _ in docs]


def run(model, batch):
    with torch.no_grad():
        out = model(**model_inputs(batch), use_cache=False)
    return out.logits, float(cross_entropy_sum(out.logits, batch["labels"]))


@pytest.fixture(scope="module", params=FAMILIES)
def packed(request, data):
    name = request.param
    proc, docs = documents(name, data)
    docs = docs[:6]  # images, two images, a video, text only, ...
    assert {k for d in docs for k, _, _ in d.media} == {"image", "video"}
    model = vlfix.reference(name).eval()
    rope = RopeIndex(proc.config)
    alone = Collator(proc, rope, needs=())
    pad = proc.tok.pad_token_id
    separate = [run(model, alone([[d]], len(d[0]), pad)) for d in docs]
    batch = Collator(proc, rope, needs=("image", "video"))([docs], sum(len(d[0]) for d in docs), pad)
    return name, model, docs, separate, batch


def per_sample(logits, docs):
    out, at = [], 0
    for d in docs:
        out.append(logits[0, at:at + len(d[0])])
        at += len(d[0])
    return out


def test_packed_equals_separate(packed):
    name, model, docs, separate, batch = packed
    logits, loss = run(model, batch)
    total = sum(s for _, s in separate)
    assert abs(loss - total) <= 1e-5 * total, (name, loss, total)
    worst = max(float((a - s[0][0]).abs().max()) for a, s in zip(per_sample(logits, docs), separate))
    assert worst < 1e-5, (name, worst)


def test_three_position_rows_attend_across_samples(packed):
    """Without the text row (position_ids of 3 rows), transformers cannot see where samples start:
    samples attend to each other and the logits move (silently). The same check as above fails."""
    name, model, docs, separate, batch = packed
    wrong = dict(batch, position_ids=batch["position_ids"][1:])
    logits, loss = run(model, wrong)
    worst = max(float((a - s[0][0]).abs().max()) for a, s in zip(per_sample(logits, docs), separate))
    assert worst > 1e-3, (name, worst)


def test_positions_per_sample_not_per_row(packed):
    """mrope positions of the packed row computed in one go (the method continues them from one
    sample into the next) differ from the per-sample ones the collator lays out."""
    name, model, docs, separate, batch = packed
    ids = batch["input_ids"][0].numpy()
    rope = RopeIndex(model.config)
    images = [g for d in docs for (k, _, p) in d.media if k == "image" for g in [tuple(p)]]
    videos = [d for d in docs for (k, _, p) in d.media if k == "video"]
    grids = batch["image_grid_thw"].tolist()
    assert [tuple(g) for g in grids[:len(images)]] == images
    whole = rope(ids, grids, batch["video_grid_thw"].tolist(), [1.0] * len(batch["video_grid_thw"]))
    assert videos and not np.array_equal(whole, batch["position_ids"][1:, 0].numpy())


def test_rope_index_equals_the_models_own(data):
    """RopeIndex (config only) gives what model.model.get_rope_index gives, per family, with
    images and videos (Qwen2.5-VL with its video time spacing)."""
    for name in vlfix.CONFIGS:
        proc, docs = documents(name, data)
        model = vlfix.reference(name)
        rope = RopeIndex(proc.config)
        for d in docs:
            ids = torch.as_tensor(d[0])[None]
            types = torch.zeros_like(ids)
            types[ids == proc.image_id], types[ids == proc.video_id] = 1, 2
            images = [tuple(p) for k, _, p in d.media if k == "image"]
            videos = [p for k, _, p in d.media if k == "video"]
            if not images and not videos:
                assert np.array_equal(d.pos, np.broadcast_to(np.arange(len(d[0])), (3, len(d[0]))))
                continue
            kw = {}
            if images:
                kw["image_grid_thw"] = torch.tensor(images)
            if videos:
                kw["video_grid_thw"] = torch.tensor([v.grid for v in videos])
                kw["second_per_grid_ts"] = torch.tensor([v.second_per_grid for v in videos])
            want, _ = model.model.get_rope_index(ids, mm_token_type_ids=types, **kw)
            assert np.array_equal(d.pos, want[:, 0].numpy()), name


def test_dummy_image_weighs_nothing(data):
    """A text-only micro-batch gets a dummy image (so the vision tower runs): the loss is the same
    as without it, the vision tower's gradients are exactly zero, and every other gradient is the
    same up to summation order (the row is one token longer)."""
    name = "tiny-qwen3-vl"  # deepstack features join the text too
    proc, docs = documents(name, data)
    text = [d for d in docs if not d.media][:2]
    model = vlfix.reference(name)
    rope = RopeIndex(proc.config)
    pad = proc.tok.pad_token_id
    plain = Collator(proc, rope, needs=())([text], 0, pad)
    dummy = Collator(proc, rope, needs=("image", "video"))([text], 0, pad)
    assert "pixel_values" not in plain and "pixel_values" in dummy and "pixel_values_videos" in dummy
    grads = []
    for batch in (plain, dummy):
        model.zero_grad()
        loss = cross_entropy_sum(model(**model_inputs(batch), use_cache=False).logits, batch["labels"])
        loss.backward()
        grads.append((loss.item(), {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    assert l0 == l1
    for k, g in g1.items():
        if k.startswith("model.visual."):
            assert g is not None and not g.any(), k  # ran, with weight zero
        else:
            assert (g - g0[k]).abs().max() <= 1e-6 * g0[k].abs().max(), k
