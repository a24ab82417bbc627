"""The schema's ranges are at least as strict as what each value feeds.

For every numeric key of planc/schema.py (walked, so a new key without a consumer here fails),
`CONSUMERS` names the runtime / torch / numpy call the value reaches in a generated script. The
values at the schema's bounds must be accepted by the resolver AND by that call; values just past
a bound must be refused by the resolver with one `range` error at the value's line:col.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from planc import schema as S
from planc.frontend import check_file
from planc.parse import INT_MAX
from tests.planfix import base_plan, make_workspace

SEED_MAX = 2**64 - 1  # what torch takes (a plan's whole numbers stop at planc.parse.INT_MAX)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4))


def _optimizer(**kw):
    from runtime.optim import build_optimizer

    args = dict(lr=1e-3, weight_decay=0.0, betas=[0.9, 0.95], eps=1e-8)
    args.update(kw)
    model = _model()
    opt = build_optimizer(model, **args)
    model(torch.tensor([1, 2])).sum().backward()  # rows 0 and 3..7 get zero gradients
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"AdamW {kw} made non-finite weights"
    return opt


def _schedule(**kw):
    from runtime.optim import build_schedule

    args = dict(kind="cosine", steps=10, warmup=0, min_lr=0.0)
    args.update(kw)
    opt = _optimizer()
    sched = build_schedule(opt, **args)
    for _ in range(3):
        opt.step()
        sched.step()


def _loader(pack="greedy", max_len=8, micro_batch=1, grad_accum=1, tokens=None, warmup_steps=0, weights=(1.0,),
            patches=None, audio_frames=None):
    """One step of the runtime's loader over small synthetic documents (cut at max_len, as
    runtime.data.kinds cuts real ones); with `patches` / `audio_frames` (the VL loader's budgets, in
    runtime.data.multimodal.docs.MEDIA_COSTS order), every other document holds one image of one
    merged 2x2 patch group (the least a VL image can be) and every third one of one audio frame."""
    from runtime.data.kinds import DocStore, shifted_labels
    from runtime.data.loader import loader_from_orders
    from runtime.data.mixture import MapOrder

    class WithMedia(MapOrder):
        def costs(self, d):
            return 4 * (d % 2), int(d % 3 == 0)

    orders = []
    for i, _ in enumerate(weights):
        store = DocStore()
        for d in range(40):
            ids = np.arange(min(max_len, 3 + d % 5), dtype=np.int32) + 1  # documents are cut at max_len
            store.add(ids, shifted_labels(ids), d)
        orders.append((MapOrder if patches is None and audio_frames is None else WithMedia)(store, 0, i))
    loader = loader_from_orders(orders, list(weights), pack=pack, max_len=max_len, micro_batch=micro_batch,
                                grad_accum=grad_accum, tokens=tokens, warmup_steps=warmup_steps,
                                budgets=(patches, audio_frames))
    step = next(iter(loader))
    assert len(step) == grad_accum


def _audio(**kw):
    """The features of a 1 s tone with these audio settings (the others at their defaults)."""
    import numpy as np

    from runtime.data.multimodal.audio import AudioSettings, features
    from runtime.data.multimodal.build import AUDIO_KEYS

    s = AudioSettings(mel_bins=16, **{AUDIO_KEYS[k]: v for k, v in kw.items()})
    wave = np.sin(np.arange(int(1.0 * s.rate)) / 7.0).astype(np.float32)
    x = features(wave, s, s.feature_extractor())
    assert x.shape[0] == 16 and np.isfinite(x).all()
    return x


def _media(**kw):
    """The image and video geometry a processor with these settings computes (the others at the
    family's defaults, ordered as `vl-media` requires)."""
    from runtime.data.multimodal.media import MediaSettings, resized
    from runtime.data.multimodal.video import frame_size, sample_indices

    s = MediaSettings(**kw)
    h, w = resized(40, 90, s.factor, min(s.min_pixels, s.max_pixels), s.max_pixels)
    assert h > 0 and w > 0 and h % s.factor == 0 and w % s.factor == 0
    low, high = min(s.video_min_frames, s.video_max_frames), max(s.video_min_frames, s.video_max_frames)
    s = MediaSettings(**{**kw, "video_min_frames": low, "video_max_frames": high})
    frames = sample_indices(60, 30.0, s)
    assert 0 < len(frames) <= max(high, s.temporal_patch_size)
    h, w = frame_size(40, 90, len(frames), s)
    assert h > 0 and w > 0


def _step_loader(weights=(1.0,)):
    from runtime.data.kinds import DocStore, shifted_labels
    from runtime.data.loader import loader_from_orders
    from runtime.data.mixture import MapOrder

    orders = []
    for i, _ in enumerate(weights):
        store = DocStore()
        for d in range(12):
            ids = np.arange(3 + d % 5, dtype=np.int32) + 1
            store.add(ids, shifted_labels(ids), d)
        orders.append(MapOrder(store, 0, i))
    return loader_from_orders(orders, list(weights), pack="greedy", max_len=8, micro_batch=1, grad_accum=2)


def _epochs(v):
    from runtime.data.epochs import steps_per_epoch

    assert steps_per_epoch(_step_loader().sampler.planner, v) >= v  # each epoch takes a step at least


def _val_batches(v):
    from runtime.validation import ValLoader

    assert len(list(ValLoader(_step_loader(), v))) == v


def _profile(tmp, **kw):
    from runtime.profiling import Profiler

    args = {"first": 1, "steps": 1, **kw}
    Profiler(tmp, enabled=True, start=args["first"] + args["steps"], **args).close()  # the window checked, not run


def _seed(v):
    torch.manual_seed(v)  # the model init and the script's own seed
    np.random.default_rng([v, 0, 0]).permutation(4)  # the data order (runtime.data.mixture/streaming)


def _grad_accum(global_batch=1, micro_batch=1):
    from runtime.dist import Mesh

    Mesh(None, None, None, None, None, dp_rank=0, dp_size=1).grad_accum(global_batch, micro_batch)


def _degrees(name):
    from runtime.dist import check_degrees

    return lambda v: check_degrees(v, **{name: v})


def _ep(v):
    from planc.dryrun import fake_world
    from runtime import dist as rdist
    from runtime.parallel.mesh_ep import ep_meshes

    with fake_world(0, v):
        info = rdist.DistInfo(0, v, 0, torch.device("cpu"), "fake")
        ep_meshes(rdist.build_mesh(info, dp_shard=v).root, v)


def _metrics(tmp, **kw):
    from runtime.metrics import Metrics

    m = Metrics(tmp, **{"steps": 4, **kw})
    m.start_at(0)


def _every(v):
    assert all(isinstance(step % v, int) for step in range(1, 5))  # `step % cfg.checkpoint.every`


def _keep(v):
    names = [f"step_{i}" for i in range(1, 6)]
    assert names[:-v]  # dcp.save removes complete_checkpoints()[:-keep]: keep=0 would keep everything
    assert names[-v:]


def _diffusion_block(v):
    from runtime.diffusion.mask import block_diffusion_mask

    pos = torch.arange(8).repeat(2)[None]  # one [x_t ; x_0] row of 8 tokens
    return block_diffusion_mask(pos, v, "sdpa")


def _diffusion_noise(v):
    from runtime.diffusion.noise import document_rng, draw_mask

    for noise in ([v, 1.0], [0.0, v]):
        draw_mask(np.ones(4, dtype=bool), noise, document_rng(0, 1, 0, 0))


def _gpus_per_node(v):
    from planc.layout import Layout

    Layout.from_degrees(dict(dp_replicate=1, dp_shard=2, sp=1, tp=2, ep=1)).spans_nodes("tp", v)


def _lora(**kw):
    """runtime.lora.LoraSpec and peft's LoraConfig with the value, and one forward of an adapted layer."""
    from runtime import lora

    spec = lora.LoraSpec(**{"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ("1",), **kw})
    model = _model()
    lora.apply_lora(model, spec)
    assert torch.isfinite(model(torch.tensor([1, 2]))).all()


# setting -> a call that feeds the value where a generated script (or planc itself) uses it
CONSUMERS = {
    "mesh.world": _degrees("dp_shard"),
    "mesh.dp_replicate": _degrees("dp_replicate"),
    "mesh.dp_shard": _degrees("dp_shard"),
    "mesh.tp": _degrees("tp"),
    "mesh.sp": _degrees("sp"),
    "mesh.ep": _ep,
    "mesh.pp": None,  # not built: anything but 1 is refused by `mesh-unsupported`
    "mesh.cp": None,
    "mesh.gpus_per_node": _gpus_per_node,
    "data.max_len": lambda v: _loader(max_len=v),
    "data.tokens": lambda v: _loader(pack="dynamic", max_len=2, tokens=max(v, 2)),  # pack-budget: tokens >= max_len
    "data.warmup_steps": lambda v: _loader(pack="dynamic", max_len=4, tokens=16, warmup_steps=v),
    "data.shuffle_buffer": None,  # runtime.data.streaming.StreamOrder clamps it to >= 1
    "data.web.weight": lambda v: _loader(weights=(v, 1.0)),
    "train.steps": lambda v: _schedule(steps=v),
    "train.global_batch": lambda v: _grad_accum(global_batch=v),
    "train.micro_batch": lambda v: (_grad_accum(global_batch=v, micro_batch=v), _loader(micro_batch=v)),
    "train.lr": lambda v: _optimizer(lr=v),
    "train.weight_decay": lambda v: _optimizer(weight_decay=v),
    "train.betas": lambda v: (_optimizer(betas=[v, 0.95]), _optimizer(betas=[0.9, v])),
    "train.eps": lambda v: _optimizer(eps=v),
    "train.warmup": lambda v: _schedule(warmup=v),
    "train.min_lr": lambda v: _schedule(min_lr=v),
    "train.clip": lambda v: __import__("runtime.optim", fromlist=["x"]).clip_grad_norm(
        [p for p in _optimizer().param_groups[0]["params"]], v),
    "train.lr.scale": lambda v: _optimizer(parts=[("1", 1e-3 * v)]),
    "train.lora.rank": lambda v: _lora(rank=v),
    "train.lora.alpha": lambda v: _lora(alpha=v),
    "train.lora.dropout": lambda v: _lora(dropout=v),
    "data.patches": lambda v: _loader(max_len=8, micro_batch=2, patches=v),
    "data.audio_frames": lambda v: _loader(max_len=8, micro_batch=2, audio_frames=v),
    **{f"data.{k}": (lambda k: lambda v: _media(**{k: v}))(k) for k in (
        "min_pixels", "max_pixels", "video_fps", "video_min_frames", "video_max_frames", "video_min_pixels",
        "video_max_pixels", "video_max_total_pixels", "video_max_seconds")},
    **{f"data.{k}": (lambda k: lambda v: _audio(**{k: v}))(k) for k in (
        "audio_rate", "audio_hop", "audio_n_fft", "audio_max_seconds")},
    "train.seed": _seed,
    "train.log_every": "metrics",
    "train.block": _diffusion_block,
    "train.noise": _diffusion_noise,
    "train.moe_aux_loss": lambda v: float(v) * torch.tensor(0.5, requires_grad=True),
    "checkpoint.every": _every,
    "train.epochs": _epochs,
    "validation.every": _every,  # `step % cfg.validation.every`
    "validation.batches": _val_batches,
    "profile.first": "profile.first",
    "profile.steps": "profile.steps",
    "train.peak_tflops": lambda v: __import__("runtime.mfu", fromlist=["x"]).peak_tflops(
        torch.device("cpu"), torch.float32, v)[0] > 0,
    "checkpoint.keep": _keep,
}


def numeric_keys():
    """(setting, Key, how to write it into the base plan) for every numeric key of the schema."""
    out = []

    def add(setting, key, where):
        if key.type in ("int", "float", "degree", "size") or (key.type == "list" and key.item in ("int", "float")):
            out.append((setting, key, where))

    for block in S.BLOCKS.values():
        for key in block.keys.values():
            add(key.setting or f"{block.name}.{key.name}", key, ("key", block.name))
            for choice, opts in key.options.items():
                for opt in opts.values():
                    add(f"{block.name}.{opt.name}", opt, ("option", key.name, choice))
        for st in block.stmts.values():
            for opt in st.options.values():
                add(f"{block.name}.{st.name}.{opt.name}", opt, ("rule", st.name))
            for key in (st.body or {}).values():
                setting = key.setting or (f"data.web.{key.name}" if st.name == "source" else f"{block.name}.{key.name}")
                add(setting, key, ("body", st.name))
    return sorted({s: (s, k, w) for s, k, w in out}.values(), key=lambda t: t[0])


def test_every_numeric_key_has_a_consumer():
    keys = {s for s, _, _ in numeric_keys()}
    assert keys == set(CONSUMERS), f"keys without a consumer: {sorted(keys - set(CONSUMERS))}; " \
                                   f"consumers of no key: {sorted(set(CONSUMERS) - keys)}"


def _boundaries(key) -> tuple[list, list]:
    """(values the schema accepts at its bounds, values just past them)."""
    whole = key.type in ("int", "degree", "size") or key.item == "int"
    inside, outside = [], []
    if key.min is not None:
        inside.append(key.min)
        outside.append(key.min - 1 if whole else -1e-9 if key.min == 0 else key.min * (1 - 1e-9))
    if key.max is not None:
        inside.append(key.max)
        if not (whole and key.max >= INT_MAX):  # past the largest number a plan can write: the parser's
            outside.append(key.max + 1 if whole else key.max * (1 + 1e-9))  # syntax error, not a range

    if key.above is not None:
        inside.append(key.above + 1 if whole else 1e-30 if key.above == 0 else key.above * (1 + 1e-9))
        outside.append(key.above)
    if key.below is not None:
        inside.append(key.below - 1 if whole else math.nextafter(key.below, -math.inf))
        outside.append(key.below)
    return inside, outside


def _text(v) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def _plan_with(ws, setting, key, where, value_text) -> tuple[str, str]:
    """The base plan with `setting` written as `value_text`; returns (plan, the written assignment)."""
    text = base_plan(ws)
    name = key.name
    assign = f"{name} = {value_text}"
    if key.type == "list":
        assign = f"{name} = [{value_text}, 0.5]"
    kind = where[0]
    if kind == "key" and where[1] == "mesh":
        old = "mesh { dp_shard = 2  device = cpu }"
        new = f"mesh {{ {assign}  device = cpu }}" if name == "dp_shard" else f"mesh {{ dp_shard = 2  device = cpu  {assign} }}"
        return text.replace(old, new), assign
    if kind == "key" and where[1] == "data":
        return (text.replace("  max_len   = 64\n", f"  {assign}\n") if name == "max_len"
                else text.replace("  max_len   = 64\n", f"  max_len   = 64\n  {assign}\n")), assign
    if kind == "key" and where[1] == "train":
        line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
        rest = re.sub(rf"\b{name} = \d+\s*", "", line.strip())
        return text.replace(line, f"  {assign}  {rest}\n"), assign
    if kind == "key" and where[1] == "checkpoint":
        return text.replace("  every = 5 }", f"  {assign} }}" if name == "every" else f"  every = 5  {assign} }}"), assign
    if kind == "option" and where[1] == "optimizer":
        return text.replace("adamw { lr = 1e-3 }", f"adamw {{ {assign} }}"), assign
    if kind == "option" and where[1] == "schedule":
        return text.replace("cosine { warmup = 2 }", f"cosine {{ {assign} }}"), assign
    if kind == "option" and where[1] == "objective":
        line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
        return text.replace(line, f"{line}  objective = block_diffusion {{ {assign} }}\n"), assign
    if kind == "option" and where[1] == "pack":
        return text.replace("pack      = greedy", f"pack = dynamic {{ tokens = 64  {assign} }}" if name != "tokens"
                            else f"pack = dynamic {{ {assign} }}"), assign
    if kind == "body" and where[1] == "media":
        return text.replace("  max_len   = 64\n", f"  max_len   = 64\n  media {{ {assign} }}\n"), assign
    if kind == "rule" and where[1] == "lr":
        line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
        return text.replace(line, f'{line}  lr "model.layers.*" {assign}\n'), assign
    if kind == "key" and where[1] == "validation":
        return text + f'validation {{ source "held" {{ path = "{ws}/data.jsonl" }}  {assign} }}\n', assign
    if kind == "body" and where[1] == "profile":
        line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
        return text.replace(line, f"{line}  profile {{ {assign} }}\n"), assign
    if kind == "rule" and where[1] == "lora":
        line = "  steps = 10  global_batch = 8  micro_batch = 2\n"
        return text.replace(line, f'{line}  lora "model.layers.*.self_attn.q_proj" {assign}\n'), assign
    if kind == "body" and where[1] == "source":
        return text.replace('text = "text" }', f'text = "text"  {assign} }}'), assign
    raise AssertionError(f"no way to write {setting} into the base plan ({where})")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ranges"))


@pytest.mark.parametrize("setting,key,where", numeric_keys(), ids=lambda x: x if isinstance(x, str) else "")
def test_bounds_are_the_consumers(ws, tmp_path, setting, key, where):
    consumer = CONSUMERS[setting]
    if consumer == "metrics":
        consumer = lambda v: _metrics(tmp_path, log_every=v)  # noqa: E731
    elif consumer in ("profile.first", "profile.steps"):
        consumer = (lambda k: lambda v: _profile(tmp_path, **{k: v}))(consumer.split(".")[1])
    inside, outside = _boundaries(key)
    assert inside or outside, f"{setting} has no range at all"
    for v in inside:
        text, _ = _plan_with(ws, setting, key, where, _text(v))
        path = ws / "inside.veo"
        path.write_text(text)
        checked = check_file(str(path), skip_files=True)
        assert not [d for d in checked.diagnostics if d.rule in ("range", "type")], \
            (setting, v, [(d.rule, d.message) for d in checked.diagnostics])
        if consumer is not None:
            consumer(v)  # the library takes what the schema lets through
    for v in outside:
        text, assign = _plan_with(ws, setting, key, where, _text(v))
        path = ws / "outside.veo"
        path.write_text(text)
        checked = check_file(str(path), skip_files=True)
        ranges = [d for d in checked.diagnostics if d.rule == "range"]
        assert len(ranges) == 1, (setting, v, [(d.rule, d.message) for d in checked.diagnostics])
        i = text.index(assign) + assign.index("=") + 2 + (key.type == "list")  # a list: its first item
        line, col = text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
        assert (ranges[0].span.line, ranges[0].span.col) == (line, col), (setting, ranges[0].span)
        assert not checked.ok


# values past the schema's bounds really are refused by the libraries (so the bounds are not arbitrary).
# Stricter than the library on purpose: weight_decay < 0 (AdamW checks only its default, not the
# per-group value build_optimizer gives), moe_aux_loss < 0, eps = 0 (test_eps_zero_makes_nan).
REFUSED = [
    ("train.lr", -1e-9), ("train.betas", 1.0), ("train.eps", -1e-12),
    ("train.seed", -1), ("train.seed", SEED_MAX + 1), ("data.max_len", 1), ("train.min_lr", 1.5),
    ("train.warmup", -1), ("data.web.weight", 0.0), ("train.global_batch", 0),
    ("train.block", 0), ("train.noise", 1.5), ("train.noise", -0.1),
]


@pytest.mark.parametrize("setting,value", REFUSED)
def test_past_the_bounds_the_libraries_refuse(setting, value):
    with pytest.raises((ValueError, RuntimeError, ZeroDivisionError, SystemExit, AssertionError)):
        CONSUMERS[setting](value)


def test_eps_zero_makes_nan():
    """torch takes eps = 0, but AdamW then divides 0 by 0 for weights whose gradient is still 0."""
    with pytest.raises(AssertionError, match="non-finite"):
        _optimizer(eps=0.0)
