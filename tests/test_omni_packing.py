"""Omni thinkers (Qwen2.5-Omni, Qwen3-Omni-MoE; one process, fp32): packed rows with audio and images
against each sample alone, positions against the model's own get_rope_index per sample, and the
dummy clip of a micro-batch without audio."""
from pathlib import Path

import pytest
import torch

from runtime.data.bad_records import BadRecords
from runtime.data.multimodal import Collator, model_inputs
from runtime.data.multimodal.docs import VLDocMaker
from runtime.data.multimodal.positions import rope_index
from runtime.data.sources import Source, read_records
from runtime.loss import cross_entropy_sum

import omnifix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return omnifix.make_data(tmp_path_factory.mktemp("omni_packing"))


def run(model, batch, **extra):
    with torch.no_grad():
        out = model(**{**model_inputs(batch), **extra}, use_cache=False)
    return out.logits, float(cross_entropy_sum(out.logits, batch["labels"]))


@pytest.fixture(scope="module", params=list(omnifix.CONFIGS))
def packed(request, data):
    name = request.param
    proc = omnifix.processor(name, data["tokenizer"])
    src = Source("chat", str(data["chat"]), kind="sft")
    made = [VLDocMaker(src, proc, 512, BadRecords()).make(r) for r in read_records(src)]
    assert all(m is not None for m in made)
    docs = [d for d, _ in made]
    assert {k for d in docs for k, _, _ in d.media} == {"image", "audio"}
    model = omnifix.reference(name).eval()
    rope = rope_index(proc.config)
    alone = Collator(proc, rope, needs=())
    pad = proc.tok.pad_token_id
    singles = [alone([[d]], len(d[0]), pad) for d in docs]
    separate = [run(model, b) for b in singles]
    batch = Collator(proc, rope, needs=("image", "audio"))([docs], sum(len(d[0]) for d in docs), pad)
    return name, proc, model, docs, singles, separate, batch


def test_packed_equals_separate(packed):
    name, _, model, docs, _, separate, batch = packed
    assert batch["input_features"].shape[0] == sum(k == "audio" for d in docs for k, _, _ in d.media)
    logits, loss = run(model, batch)
    total = sum(s for _, s in separate)
    assert abs(loss - total) <= 1e-5 * total, (name, loss, total)
    at, worst = 0, 0.0
    for d, (alone, _) in zip(docs, separate):
        worst = max(worst, float((logits[0, at:at + len(d[0])] - alone[0]).abs().max()))
        at += len(d[0])
    assert worst < 1e-4, (name, worst)


def test_positions_are_the_models_own_per_sample(packed):
    """Rows 1-3 of each sample's positions == the model's get_rope_index on that sample with a 2-D mask."""
    name, proc, model, docs, singles, _, _ = packed
    for d, b in zip(docs, singles):
        images = [proc.grid(k, p) for k, _, p in d.media if k == "image"]
        audio = proc.audio_frames(d.media)
        ids = torch.as_tensor(d[0])[None]
        own, _ = model.model.get_rope_index(
            ids, image_grid_thw=torch.tensor(images) if images else None, attention_mask=torch.ones_like(ids),
            audio_seqlens=torch.tensor(audio) if audio else None)
        assert torch.equal(b["position_ids"][1:, :, :len(d[0])], own.long()), name


def test_hf_positions_from_the_2d_mask_match(packed):
    """The thinker given the 2-D mask (and no positions) computes what the pipeline passes; without
    the mask it silently falls back to 1-D positions and the logits of an image sample move."""
    name, _, model, docs, singles, separate, _ = packed
    moved = 0.0
    for d, b, (logits, _) in zip(docs, singles, separate):
        kw = {k: v for k, v in model_inputs(b).items() if k != "position_ids"}
        own, _ = run(model, b, position_ids=None, attention_mask=torch.ones_like(b["input_ids"]))
        assert float((own - logits).abs().max()) < 1e-5, name
        if any(k == "image" for k, _, _ in d.media) and name.startswith("tiny-qwen2.5"):
            with torch.no_grad():
                flat = model(**kw, use_cache=False).logits
            moved = max(moved, float((flat - logits).abs().max()))
    if name.startswith("tiny-qwen2.5"):
        assert moved > 1e-4, moved


def test_dummy_clip_joins_with_zero_weight(packed):
    """A micro-batch without audio gets a dummy clip: the loss is unchanged, and the audio tower runs
    (its parameters get gradients, all zero)."""
    name, proc, model, docs, _, _, _ = packed
    quiet = [d for d in docs if not any(k == "audio" for k, _, _ in d.media)]
    rope = rope_index(proc.config)
    pad = proc.tok.pad_token_id
    length = sum(len(d[0]) for d in quiet)
    plain = Collator(proc, rope, needs=("image",))([quiet], length, pad)
    dummy = Collator(proc, rope, needs=("image", "audio"))([quiet], length, pad)
    assert "input_features" not in plain and dummy["input_features"].shape[0] == 1
    _, want = run(model, plain)
    model.zero_grad()
    out = model(**model_inputs(dummy), use_cache=False)
    loss = cross_entropy_sum(out.logits, dummy["labels"])
    assert abs(float(loss.detach()) - want) <= 1e-5 * want
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("model.audio_tower.")}
    used = {n: g for n, g in grads.items() if g is not None}
    assert used and all(float(g.abs().max()) == 0.0 for g in used.values()), name
    model.zero_grad()
