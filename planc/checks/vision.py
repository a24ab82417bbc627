"""Vision-language rules: a VL model trains on conversations with images and videos through the
offline processor (runtime/data/multimodal/); the media settings are consistent, and one image at
the largest size fits a row and a micro-batch's patch budget. A text model refuses VL settings; audio
settings (and an audio-frame budget) are for Omni thinkers, whose longest clip must fit a row."""
from __future__ import annotations

from runtime.data.multimodal.build import AUDIO_KEYS, OMNI_KEYS
from runtime.data.multimodal.docs import MEDIA_COSTS
from runtime.vocab import VL_CHAT_TEMPLATES

from ..schema import DATA
from .data import is_vl, runtime_source

RULES = {
    "vl-settings": "media settings and media budgets (patches, audio frames) are for vision-language models only",
    "vl-source": "a vision-language model trains on map-style sft sources (conversations with media)",
    "vl-media": "media ranges are ordered (min <= max for pixels and frames)",
    "vl-fits": "one image at max_pixels fits max_len tokens and the micro-batch's patch budget",
    "vl-chat-template": "the processor has a chat template (the tokenizer's, or the built-in qwen_vl)",
    "vl-records": "the first records render as training renders them (media opened, placeholders expanded)",
    "vl-text-only": "`tp sequence` is a text-model path (a VL model merges image features into the whole row)",
    "vl-audio": "audio settings and an audio-frame budget are for Omni thinkers (an audio tower), and a clip of "
                "audio_max_seconds fits max_len",
}

# data.KEY of the `media { }` statement, as runtime.data.multimodal.media.MediaSettings names them
MEDIA_KEYS = tuple(DATA.stmts["media"].body)
# the `pack = dynamic { }` budgets of a document's media costs (runtime.data.multimodal.docs.MEDIA_COSTS)
BUDGET_KEYS = tuple(f"data.{k}" for k in MEDIA_COSTS)
_ORDERED = (("min_pixels", "max_pixels"), ("video_min_pixels", "video_max_pixels"),
            ("video_min_frames", "video_max_frames"))


def media_settings(plan) -> dict:
    """The media settings a plan writes (the others are the model family's defaults)."""
    return {k: plan[f"data.{k}"] for k in MEDIA_KEYS if plan.settings.get(f"data.{k}") is not None
            and plan[f"data.{k}"] is not None}


def check(ctx) -> None:
    p = ctx.plan
    if "data" not in p.blocks or ctx.tree is None:
        return
    written = [k for k in (*(f"data.{m}" for m in MEDIA_KEYS), *BUDGET_KEYS)
               if p.settings.get(k) is not None and p.settings[k].written]
    if not is_vl(ctx):
        if written:
            ctx.error("vl-settings", f"`{written[0].split('.', 1)[1]}` is a vision-language setting, and "
                      f"{ctx.tree.model_type} is a text model", p.span(written[0]),
                      "drop it, or point `model.config` at a vision-language model")
        return
    seq = next((r for r in p.rules if r.kind == "tp" and r.style == "sequence"), None)
    if seq is not None:
        ctx.error("vl-text-only", "`tp sequence` is built for text models: a vision-language model merges image "
                  "features into the whole row first", seq.span, "drop the `tp sequence` rule (colwise/rowwise stay)")
    for s in p.sources:
        if s["kind"] != "sft" or s["streaming"]:
            key = "kind" if s["kind"] != "sft" else "streaming"
            ctx.error("vl-source", f"source {s.name!r}: a vision-language model trains on conversations "
                      "(kind = sft), read map-style (not streaming)", s.settings[key].span or s.span,
                      "write `kind = sft` and drop `streaming`")
    if p["data.chat_template"] not in VL_CHAT_TEMPLATES:
        ctx.error("vl-chat-template", f"chat_template = {p['data.chat_template']} is a text template; "
                  "a vision-language conversation needs image and video placeholders",
                  p.value_span("data.chat_template"), f"use one of {', '.join(VL_CHAT_TEMPLATES)}")
        return
    settings = _settings(ctx)
    if settings is None or not _audio(ctx):
        return
    _fits(ctx, settings)
    if ctx.skip_files or not ctx.ok or p["data.tokenizer"] is None:
        return
    _records(ctx)


def _audio(ctx) -> bool:
    """Audio settings only on an Omni thinker, and its longest clip's tokens within max_len; False after an error."""
    from runtime.data.multimodal.omni import audio_settings_for, audio_tokens_fn
    from runtime.data.multimodal.positions import is_omni

    p = ctx.plan
    written = {k: v for k, v in media_settings(p).items() if k in OMNI_KEYS}
    if p.settings.get("data.audio_frames") is not None and p["data.audio_frames"] is not None:
        written["audio_frames"] = p["data.audio_frames"]
    if not is_omni(ctx.tree.config):
        if written:
            first = next(iter(written))
            ctx.error("vl-audio", f"`{first}` is an audio setting, and {ctx.tree.model_type} has no audio tower",
                      p.span(f"data.{first}"), "drop it, or point `model.config` at an Omni thinker")
            return False
        return True
    a = audio_settings_for(ctx.tree.config, **{AUDIO_KEYS[k]: v for k, v in written.items() if k in AUDIO_KEYS})
    tokens = audio_tokens_fn(ctx.tree.config)(int(a.max_seconds * a.rate) // a.hop)
    if p["data.max_len"] is not None and tokens >= p["data.max_len"]:
        where = "data.audio_max_seconds" if "audio_max_seconds" in written else "data.max_len"
        ctx.error("vl-audio", f"a clip of audio_max_seconds = {a.max_seconds:g} s is {tokens} audio tokens, and a row "
                  f"holds max_len = {p['data.max_len']}: such a conversation can never be trained on",
                  p.span(where), "use a smaller audio_max_seconds, or a larger max_len")
        return False
    frames = int(a.max_seconds * a.rate) // a.hop
    if written.get("audio_frames", frames) < frames:
        ctx.warn("vl-audio", f"a clip of audio_max_seconds = {a.max_seconds:g} s is {frames} audio frames, over the "
                 f"audio-frame budget ({written['audio_frames']}): such clips are skipped as bad records",
                 p.span("data.audio_frames"), f"use audio_frames >= {frames}, or a smaller audio_max_seconds")
    return True


def _settings(ctx):
    """The processor's media settings (family defaults + the plan's), or None after an error."""
    from runtime.data.multimodal.media import settings_for

    p = ctx.plan
    try:
        s = settings_for(ctx.tree.config, **{k: v for k, v in media_settings(p).items() if k not in OMNI_KEYS})
    except ValueError as e:
        ctx.error("vl-media", str(e), p.blocks["data"], "see the `media` keys in docs/language.md")
        return None
    bad = False
    for lo, hi in _ORDERED:
        a, b = getattr(s, lo), getattr(s, hi)
        if a > b:
            where = hi if p.settings.get(f"data.{hi}") is not None and p.settings[f"data.{hi}"].written else lo
            ctx.error("vl-media", f"{lo} ({a}) is more than {hi} ({b})"
                      + ("" if all(p.settings[f"data.{k}"].written for k in (lo, hi)) else
                         " (one of them is the model family's default)"),
                      p.span(f"data.{where}"), f"use {lo} <= {hi}")
            bad = True
    return None if bad else s


def _fits(ctx, s) -> None:
    """An image at the largest size: its tokens in one row, its patches in one micro-batch."""
    p = ctx.plan
    tokens = s.max_pixels // (s.factor * s.factor)  # merged tokens of the largest image
    patches = tokens * s.merge_size ** 2
    max_len = p["data.max_len"]
    if max_len is not None and tokens >= max_len:
        side = int((max_len // 2) ** 0.5) * s.factor
        ctx.error("vl-fits", f"an image at max_pixels = {s.max_pixels} is {tokens} tokens, and a row holds "
                  f"max_len = {max_len}: such a conversation can never be trained on",
                  p.span("data.max_pixels"), f"use max_pixels <= {side * side} (about half a row of image "
                  f"tokens), or a larger max_len")
        return  # one mistake, one diagnostic: the patch budget follows from max_pixels too
    budget = p["data.patches"] if "data.patches" in p.settings else None
    if budget is not None and budget < patches:
        ctx.error("vl-fits", f"the patch budget ({budget}) is smaller than one image at max_pixels = {s.max_pixels} "
                  f"({patches} patches): such a sample fits no micro-batch and is skipped as a bad record",
                  p.span("data.patches"), f"use patches >= {patches}, or lower max_pixels")
        return
    # a video at the most frames, each at the largest frame area (within the total): a warning, as
    # shorter or smaller videos do fit
    frames = -(-s.video_max_frames // s.temporal_patch_size) * s.temporal_patch_size
    area = s.video_max_pixels if s.video_max_total_pixels is None else min(
        s.video_max_pixels, s.video_max_total_pixels // frames)
    video = frames // s.temporal_patch_size * (area // (s.patch_size * s.patch_size))
    if budget is not None and budget < video:
        ctx.warn("vl-fits", f"a video of {frames} frames at video_max_pixels = {area} is up to {video} patches, over "
                 f"the patch budget ({budget}): such videos are skipped as bad records",
                 p.span("data.patches"), f"use patches >= {video}, or lower video_max_pixels / video_max_frames")


def _records(ctx) -> None:
    from runtime.data.multimodal import build_processor
    from runtime.data.multimodal.checks import check_vl_sources

    p = ctx.plan
    try:
        processor = build_processor(p["data.tokenizer"], ctx.tree.config, chat_template=p["data.chat_template"],
                                    **media_settings(p))
    except Exception as e:  # a tokenizer without a template, or one that cannot load
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        ctx.error("vl-chat-template", f"cannot build the processor: {msg}", p.value_span("data.tokenizer"),
                  "use the model's own tokenizer (its special tokens are the config's ids)" if "special token" in msg
                  else "add `chat_template = qwen_vl` to data (a built-in template)")
        return
    for s in p.sources:
        for problem in check_vl_sources([runtime_source(s)], processor, p["data.max_len"]):
            (ctx.error if p["data.on_bad_record"] == "fail" or "no usable" in problem or "no records" in problem
             or "does not exist" in problem or "cannot read" in problem else ctx.warn)(
                "vl-records", problem, s.settings["path"].span or s.span,
                "a record is a conversation whose image/video paths exist (relative to the file)")

