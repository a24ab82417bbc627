"""Vision-language data: record layouts, bad records with file:line, token layout against the
Hugging Face processors, video patch layout, budgets, resume and the global batch at any dp."""
import json

import numpy as np
import pytest
import torch

from runtime.data.bad_records import BadRecordError, BadRecords
from runtime.data.multimodal import RecordError, build_vl_loader, check_vl_sources, conversation
from runtime.data.multimodal.docs import VLDocMaker, build_vl_store
from runtime.data.multimodal.template import render
from runtime.data.multimodal.video import plan_video, video_pixels
from runtime.data.sources import Source, read_records

import vlfix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return vlfix.make_data(tmp_path_factory.mktemp("vl_data"))


def source(path, name="chat"):
    return Source(name, str(path), kind="sft")


def loader(data, name="tiny-qwen2.5-vl", path=None, **kw):
    proc = vlfix.processor(name, data["tokenizer"])
    args = dict(max_len=512, pack="greedy", micro_batch=2, grad_accum=2, seed=0)
    args.update(kw)
    return build_vl_loader([source(path or data["chat"])], proc, log=lambda m: None, **args)


def take(ld, n):
    it = iter(ld)
    return [next(it) for _ in range(n)]


# -- records ---------------------------------------------------------------------------------------
def test_both_layouts_give_the_same_conversation(tmp_path):
    hf = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                     {"type": "text", "text": "Compare "},
                                                     {"type": "image", "path": "/abs/b.png"}]},
                       {"role": "assistant", "content": "Same."}]}
    llava = {"images": ["a.png", "/abs/b.png"],
             "conversations": [{"from": "human", "value": "<image>Compare <image>"}, {"from": "gpt", "value": "Same."}]}
    a, b = conversation(hf, "messages", tmp_path), conversation(llava, "messages", tmp_path)
    assert a == b
    assert a[1] == [("image", str(tmp_path / "a.png")), ("image", "/abs/b.png")]
    # no placeholder at all: the media go in front of the first user turn, as LLaVA does
    msgs, media = conversation({"video": "v.mp4", "conversations": [{"from": "human", "value": "Hi"},
                                                                    {"from": "gpt", "value": "Ho"}]}, "messages", tmp_path)
    assert msgs[0]["content"][0] == {"type": "video"} and media == [("video", str(tmp_path / "v.mp4"))]


@pytest.mark.parametrize("value,reason", [
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
     "more placeholders than images"),
    ({"images": ["a.png", "b.png", "c.png"], "conversations": [{"from": "human", "value": "<image><image>"},
                                                              {"from": "gpt", "value": "x"}]},
     "fewer placeholders than images"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "http://x/a.png"}]},
                   {"role": "assistant", "content": "x"}]}, "remote image"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}]},
     "missing image path"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
])
def test_bad_conversations(value, reason, tmp_path):
    with pytest.raises(RecordError) as e:
        conversation(value, "messages", tmp_path)
    assert e.value.reason == reason


def test_bad_records_are_counted_with_file_and_line(data, tmp_path):
    big = vlfix.write_image(tmp_path / "big.png", 252, 252, seed=1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    vlfix.write_video(tmp_path / "long.mp4", frames=12, fps=4)  # 3 s
    good = vlfix.hf([{"type": "image", "image": str(data["dir"] / "media/img0.png")}, {"type": "text", "text": "?"}], "ok")
    lines = [
        json.dumps(good),
        json.dumps(vlfix.hf([{"type": "image", "image": "nowhere.png"}], "x")),
        json.dumps(vlfix.hf([{"type": "image", "image": "broken.png"}], "x")),
        json.dumps({"image": str(big), "conversations": [{"from": "human", "value": "<image> <image>"},
                                                         {"from": "gpt", "value": "x"}]}),
        json.dumps(vlfix.hf([{"type": "video", "video": "long.mp4"}], "x")),
        json.dumps(vlfix.hf([{"type": "image", "image": str(big)}], "x")),
        "{not json",
        json.dumps(vlfix.hf("I typed <|image_pad|> myself", "x")),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"], max_pixels=28 * 28 * 100, video_max_seconds=2.0)
    bad = BadRecords()
    store = build_vl_store(read_records(source(path)), VLDocMaker(source(path), proc, 64, bad))
    assert len(store) == 1
    got = {(where, reason) for where, reason, _ in bad.records}
    assert got == {(f"{path}:2", "missing image file"), (f"{path}:3", "undecodable image"),
                   (f"{path}:4", "more placeholders than images"), (f"{path}:5", "video too long"),
                   (f"{path}:6", "vision tokens exceed max_len"), (f"{path}:7", "unreadable record"),
                   (f"{path}:8", "vision tokens do not match the media")}
    with pytest.raises(BadRecordError, match=f"{path}:2: missing image file"):
        build_vl_store(read_records(source(path)), VLDocMaker(source(path), proc, 64, BadRecords("fail")))


def test_check_names_the_first_problem(data, tmp_path):
    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"])
    assert check_vl_sources([source(data["chat"])], proc, 512) == []
    path = tmp_path / "all_bad.jsonl"
    path.write_text(json.dumps(vlfix.hf([{"type": "image", "image": "gone.png"}], "x")) + "\n")
    (err,) = check_vl_sources([source(path), Source("s", str(path), kind="pretrain")], proc, 512)[:1]
    assert f"{path}:1: missing image file" in err
    assert "map-style sft" in check_vl_sources([Source("s", str(path), kind="pretrain")], proc, 512)[0]


# -- token and pixel layout -----------------------------------------------------------------------
def test_image_tokens_and_pixels_match_the_hf_processor(data):
    """Our ids and pixels equal those of transformers' own Qwen2.5-VL processor (image part)."""
    from PIL import Image

    from runtime.data.multimodal.processor import hf_processor_class

    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"])
    maker = VLDocMaker(source(data["chat"]), proc, 512, BadRecords())
    rec = next(r for r in read_records(source(data["chat"])) if "Compare" in json.dumps(r.value))
    doc, _ = maker.make(rec)
    messages, media = conversation(rec.value, "messages", data["dir"])
    text, _ = render(messages, proc.template, proc.tok)
    hf = hf_processor_class(proc.config)(image_processor=proc.image_processor, tokenizer=proc.tok)
    out = hf(images=[Image.open(p).convert("RGB") for _, p in media], text=[text], return_tensors="np")
    assert np.array_equal(out["input_ids"][0], doc[0])
    assert np.array_equal(out["mm_token_type_ids"][0], (doc[0] == proc.image_id).astype(int))
    ours = np.concatenate([proc.pixels(k, p, plan) for k, p, plan in doc.media])
    assert np.array_equal(out["pixel_values"], ours)


def test_qwen3_video_timestamps_match_the_hf_processor(data):
    """Qwen3-VL writes '<t seconds>' before every temporal patch: our expansion equals the string
    transformers' Qwen3VLProcessor.replace_video_token builds from the same sampling."""
    from transformers.video_utils import VideoMetadata

    from runtime.data.multimodal.processor import hf_processor_class

    proc = vlfix.processor("tiny-qwen3-vl", data["tokenizer"], video_fps=3.0)
    plan = proc.plan("video", str(data["dir"] / "media/clip1.mp4"))
    assert plan.grid[0] >= 2
    hf = hf_processor_class(proc.config)(image_processor=proc.image_processor, tokenizer=proc.tok)
    hf.video_processor = type("V", (), {"merge_size": 2, "temporal_patch_size": 2})()
    meta = VideoMetadata(total_num_frames=9, fps=plan.fps, frames_indices=list(plan.indices))
    text = hf.replace_video_token({"video_grid_thw": [torch.tensor(plan.grid)], "video_metadata": [meta]}, 0)
    want = proc.tok(text, add_special_tokens=False)["input_ids"]
    assert proc._expansion("video", plan) == want


def test_video_patch_layout(data, tmp_path):
    """Patches of a 2-frame video, against a layout built by hand: merged 2x2 groups of patches,
    row-major; inside a patch channel, then time (frame 0, frame 1), then the pixel rows."""
    import av

    path = vlfix.write_video(tmp_path / "two.mp4", frames=2, size=(56, 84), seed=3)
    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"], video_min_pixels=56 * 84, video_max_pixels=56 * 84)
    plan = plan_video(str(path), proc.settings)
    assert plan.indices == (0, 1) and plan.grid == (1, 4, 6) and plan.size == (56, 84)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    s = proc.settings
    x = (np.stack(frames).astype(np.float32) / 255 - np.asarray(s.image_mean)) / np.asarray(s.image_std)
    p, m = s.patch_size, s.merge_size
    rows = []
    for gy in range(2):
        for gx in range(3):
            for my in range(m):
                for mx in range(m):
                    y, xx = (gy * m + my) * p, (gx * m + mx) * p
                    patch = x[:, y:y + p, xx:xx + p, :]  # (time, P, P, C)
                    rows.append(patch.transpose(3, 0, 1, 2).reshape(-1))
    got = video_pixels(str(path), plan, s, proc.image_processor)
    assert got.shape == (24, 3 * 2 * p * p)
    assert np.abs(got - np.stack(rows)).max() < 1e-5


# -- batching, resume, dp -------------------------------------------------------------------------
def test_budgets_keep_samples_whole(data):
    """Dynamic batching: every micro-batch within the token and the patch budget (the dummy's one
    token and its patches apart), every sample once per epoch."""
    ld = loader(data, pack="dynamic", micro_batch=1, tokens=512, patches=96, grad_accum=3)
    store = ld.sampler.orders[0].store
    targets, it = 0, iter(ld)
    while ld.epoch == 0:
        for mb in next(it):
            real = mb["image_grid_thw"][mb["image_grid_thw"].prod(1) > 4]  # the dummy is (1, 2, 2)
            videos = mb.get("video_grid_thw", torch.zeros(0, 3))
            videos = videos[videos.prod(1) > 4]
            assert int(real.prod(1).sum() + videos.prod(1).sum()) <= 96
            assert int((mb["input_ids"] != proc_pad(ld)).sum()) <= 512 + 2
            targets += int((mb["labels"] != -100).sum())
    assert targets == store.targets()


def proc_pad(ld):
    return ld.dataloader.dataset.pad


def test_resume_mid_epoch_is_exact(data):
    ref = loader(data)
    steps = take(ref, 2)
    state = ref.state_dict()
    later = take(ref, 3)  # crosses into the next epoch
    fresh = loader(data)
    fresh.load_state_dict(state)
    again = take(fresh, 3)
    for a, b in zip(later, again):
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert any("pixel_values_videos" in mb for step in steps + later for mb in step)


def test_same_global_batch_at_any_dp(data):
    one = take(loader(data, grad_accum=4), 3)
    two = [take(loader(data, grad_accum=2, dp_rank=r, dp_size=2), 3) for r in range(2)]
    for k in range(3):
        mbs = two[0][k] + two[1][k]
        assert len(mbs) == len(one[k])
        for x, y in zip(one[k], mbs):
            assert all(torch.equal(x[key], y[key]) for key in x)


def test_data_without_video_runs_images_only(data):
    """No video anywhere: micro-batches get a dummy image when they have none, never a video."""
    steps = take(loader(data, path=data["chat_images"], pack="none", micro_batch=1), 4)
    assert all("pixel_values" in mb and "pixel_values_videos" not in mb for s in steps for mb in s)
