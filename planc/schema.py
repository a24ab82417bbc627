"""What a plan may say: blocks, keys, statements, their types, defaults and ranges.

The grammar only knows shapes (words, assignments, statements); this table gives them meaning, so
that an unknown name gets a located did-you-mean instead of a syntax error. Every key has the name
of the setting it becomes in the generated script (`block.key`), which is also its command-line
override (`--train.lr 1e-4`).

Ranges are at least as strict as what the value feeds (torch's AdamW, torch.manual_seed and numpy's
seeding, the data loader, the schedule): a plan the schema accepts never fails there at start-up.
tests/test_schema_ranges.py walks every numeric key and tries its bounds on its consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from runtime.vocab import (
    ANY_CHAT_TEMPLATE, ATTENTIONS, BAD_RECORD_POLICIES, DEVICES, DTYPES, KERNEL_BACKENDS, KERNEL_OPS, MASK_TOKEN, OBJECTIVES,
    PACKS, SCHEDULES, SOURCE_FORMATS, SOURCE_KINDS, TP_STYLES, TRACKERS, TRUNCATIONS,
)

from .layout import DIMS, WORLD_DIMS
from .tp_sets import NAMED as NAMED_TP_SETS

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # int | float | bool | str | path | enum | list | size | degree
    default: Any = None
    doc: str = ""
    choices: tuple = ()
    min: float | None = None  # inclusive bounds
    max: float | None = None
    above: float | None = None  # exclusive bounds: the value must be more than `above`
    below: float | None = None  #   and less than `below`
    item: str | None = None  # item type of a list
    length: int | None = None  # exact length of a list
    options: Mapping[str, Mapping[str, "Key"]] = field(default_factory=dict)  # enum value -> option keys
    setting: str | None = None  # flattened setting name when it is not block.key

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class StmtSpec:
    name: str
    doc: str
    args: str = "none"  # none | globs | style+globs | label
    styles: tuple = ()  # the first word of `tp colwise ...`, `sp ulysses ...`
    options: Mapping[str, Key] = field(default_factory=dict)
    body: Mapping[str, Key] | None = None
    once: bool = False


@dataclass(frozen=True)
class BlockSpec:
    name: str
    doc: str
    keys: Mapping[str, Key] = field(default_factory=dict)
    stmts: Mapping[str, StmtSpec] = field(default_factory=dict)
    required: bool = False


def _keys(*keys: Key) -> Mapping[str, Key]:
    return MappingProxyType({k.name: k for k in keys})


# -- option bodies of enum values ------------------------------------------------------------
_ADAMW = _keys(
    Key("lr", "float", 3e-4, "peak learning rate", min=0),
    Key("weight_decay", "float", 0.0, "decoupled weight decay (not on norms and biases)", min=0),
    Key("betas", "list", [0.9, 0.95], "Adam betas, each in [0, 1)", item="float", length=2, min=0, below=1),
    # eps = 0 divides 0 by 0 for every weight whose gradient is still 0 (unseen embedding rows): NaN
    Key("eps", "float", 1e-8, "Adam epsilon (more than 0)", above=0),
)
_SCHEDULE = _keys(
    Key("warmup", "int", 0, "linear warm-up steps", min=0),
    Key("min_lr", "float", 0.0, "final lr as a fraction of the peak", min=0, max=1),
)
_BLOCK_DIFFUSION = _keys(  # runtime/diffusion/: LLaDA2's objective as dFactory trains it
    Key("block", "int", 32, "tokens per diffusion block (divides data.max_len)", min=1),
    Key("noise", "list", [0.3, 0.8], "range [low, high] of the per-sample noise level t (each response token "
        "masked with probability t)", item="float", length=2, min=0, max=1),
    Key("mask_token", "str", MASK_TOKEN, "the tokenizer's mask token (one token)"),
)
_DYNAMIC = _keys(
    Key("tokens", "int", REQUIRED, "token budget of one micro-batch", min=1),
    Key("warmup_steps", "int", 0, "steps over which the budget grows to `tokens`", min=0),
    Key("patches", "int", None, "vision-language: vision patches one micro-batch may hold (default: no limit; "
        "at least one merged 2x2 group, the smallest image)", min=4),
    Key("audio_frames", "int", None, "Omni thinkers: audio feature frames one micro-batch may hold (default: no "
        "limit; audio_rate / audio_hop frames per second of clip)", min=1),
)

MODEL = BlockSpec("model", "the model: an HF config (and optionally weights)", _keys(
    Key("config", "path", REQUIRED, "HF config.json, or a directory holding one (and maybe *.safetensors)"),
    Key("weights", "path", None, "HF directory with *.safetensors to load"),
    Key("dtype", "enum", "fp32", "dtype of the master weights", choices=DTYPES),
    Key("attention", "enum", "sdpa", "HF attention implementation", choices=ATTENTIONS),
    Key("trust_remote_code", "bool", False, "run the modeling code a local model directory ships (auto_map in "
        "config.json, e.g. LLaDA2): planc check and the script both execute it"),
), required=True)

_DEGREES = {  # one key per mesh dim of planc/layout.py; the world dims may be `auto`
    "dp_replicate": "data-parallel replicas (HSDP outer dim, or DDP)",
    "dp_shard": "FSDP2 shard degree",
    "sp": "Ulysses sequence-parallel degree",
    "tp": "tensor-parallel degree",
    "ep": "expert-parallel degree (borrows ranks from dp_shard * sp)",
}
MESH = BlockSpec("mesh", "how ranks are laid out", _keys(
    Key("world", "int", None, "declared world size", min=1),
    *(Key(d, "degree" if d in WORLD_DIMS else "int", 1, _DEGREES[d], min=1) for d in DIMS),
    Key("pp", "int", 1, "pipeline parallelism (not built yet)", min=1),
    Key("cp", "int", 1, "context parallelism (not built yet; use sp)", min=1),
    Key("device", "enum", "cuda", "where the script runs", choices=DEVICES),
    Key("gpus_per_node", "int", 8, "devices per node, for placement checks", min=1),
))

_FSDP_OPTS = _keys(
    Key("reshard_after_forward", "bool", True, "free gathered parameters after forward"),
    Key("offload", "bool", False, "keep sharded parameters on the CPU"),
)
PARALLELIZE = BlockSpec("parallelize", "rules over module-name globs", stmts=MappingProxyType({
    "fsdp": StmtSpec("fsdp", "one FSDP2 unit per matching module (then the root)", "globs", options=_FSDP_OPTS),
    "replicate": StmtSpec("replicate", "plain data-parallel replication (DDP) instead of FSDP", once=True),
    "checkpoint": StmtSpec("checkpoint", "activation checkpointing per matching module", "globs"),
    "offload": StmtSpec("offload", "the matching modules' saved activations live in host memory (with `checkpoint` "
                        "on them: only their inputs)", "globs"),
    "compile": StmtSpec("compile", "torch.compile per matching module", "globs"),
    "tp": StmtSpec("tp", "tensor-parallel style over modules", "style+globs", TP_STYLES,
                   options=_keys(Key("plan", "enum", None, "model: the config's base_model_tp_plan; "
                                     "megatron / megatron_sp: named rule sets (planc/tp_sets.py)",
                                     choices=("model",) + NAMED_TP_SETS))),
    "ep": StmtSpec("ep", "expert parallelism over MoE experts modules", "globs",
                   options=_keys(Key("plan", "enum", None, "model: the experts of the config's base_model_ep_plan",
                                     choices=("model",)))),
    "sp": StmtSpec("sp", "Ulysses sequence parallelism over attention modules", "style+globs", ("ulysses",)),
}))

# runtime/data/multimodal/media.py MediaSettings: the settings a plan may give (patch and merge sizes come
# from the model's vision config); tests/test_vl_plan.py ties the two lists together
_MEDIA = _keys(
    Key("min_pixels", "int", None, "smallest image area in pixels (smaller images are upscaled)", min=1,
        setting="data.min_pixels"),
    Key("max_pixels", "int", None, "largest image area in pixels (larger images are downscaled)", min=1,
        setting="data.max_pixels"),
    Key("video_fps", "float", None, "video frames sampled per second", above=0, setting="data.video_fps"),
    Key("video_min_frames", "int", None, "fewest frames sampled from a video", min=1, setting="data.video_min_frames"),
    Key("video_max_frames", "int", None, "most frames sampled from a video", min=1, setting="data.video_max_frames"),
    Key("video_min_pixels", "int", None, "smallest area of a video frame", min=1, setting="data.video_min_pixels"),
    Key("video_max_pixels", "int", None, "largest area of a video frame", min=1, setting="data.video_max_pixels"),
    Key("video_max_total_pixels", "int", None, "most pixels of all a video's sampled frames together", min=1,
        setting="data.video_max_total_pixels"),
    Key("video_max_seconds", "float", None, "longest video (a longer one is a bad record)", above=0,
        setting="data.video_max_seconds"),
    # runtime/data/multimodal/audio.py AudioSettings (Omni thinkers; runtime.data.multimodal.processor.AUDIO_KEYS)
    Key("audio_rate", "int", None, "audio samples per second the clips are resampled to (16000)", min=1000,
        setting="data.audio_rate"),
    Key("audio_hop", "int", None, "audio samples per feature frame (160)", min=1, setting="data.audio_hop"),
    Key("audio_n_fft", "int", None, "audio samples per STFT window (400)", min=2, setting="data.audio_n_fft"),
    Key("audio_max_seconds", "float", None, "longest clip (a longer one is a bad record; 30)", above=0,
        setting="data.audio_max_seconds"),
    Key("use_audio_in_video", "bool", None, "each video's audio track interleaved with its frames (Omni thinkers)",
        setting="data.use_audio_in_video"),
)

_SOURCE = _keys(
    Key("path", "path", REQUIRED, "file, directory or glob"),
    Key("format", "enum", None, "file format (default: from the extension)",
        choices=SOURCE_FORMATS),
    Key("kind", "enum", "pretrain", "pretrain: text; sft: chat messages", choices=SOURCE_KINDS),
    Key("text", "str", "text", "field holding the text (pretrain)"),
    Key("messages", "str", "messages", "field holding the conversation (sft)"),
    Key("weight", "float", 1.0, "share of the mixture (more than 0)", above=0),
    Key("streaming", "bool", False, "read lazily (large sources)"),
)
DATA = BlockSpec("data", "what to train on", _keys(
    Key("tokenizer", "path", REQUIRED, "HF tokenizer directory"),
    Key("max_len", "int", 2048, "tokens per row", min=2),
    Key("pack", "enum", "greedy", "batching", choices=PACKS,
        options=MappingProxyType({"dynamic": _DYNAMIC})),
    Key("shuffle", "bool", True, "shuffle each epoch (seeded)"),
    Key("shuffle_buffer", "int", 10000, "shuffle buffer of streaming sources", min=1),
    Key("chat_template", "enum", "tokenizer", "template for sft sources (chatml: text models; qwen_vl: vision-language models)",
        choices=ANY_CHAT_TEMPLATE),
    Key("system_prompt", "str", None, "system message prepended to sft conversations"),
    Key("truncation", "enum", "right", "sft samples longer than max_len", choices=TRUNCATIONS),
    Key("on_bad_record", "enum", "skip", "skip (counted and reported) or fail", choices=BAD_RECORD_POLICIES),
), stmts=MappingProxyType({
    "source": StmtSpec("source", "a data source", "label", body=_SOURCE),
    "media": StmtSpec("media", "vision-language / omni: how images, videos and audio clips are processed (each "
                      "key defaults to the model family's own value)", body=_MEDIA, once=True),
}), required=True)

# runtime/lora.py LoraSpec; the script reads them as lora.rank, lora.alpha, lora.dropout
_LORA = _keys(
    Key("rank", "int", 16, "rank r of each adapter", min=1, setting="lora.rank"),
    Key("alpha", "float", 32.0, "scale: the update is multiplied by alpha / rank", above=0, setting="lora.alpha"),
    Key("dropout", "float", 0.0, "dropout on each adapter's input", min=0, below=1, setting="lora.dropout"),
)

TRAIN = BlockSpec("train", "the optimisation", _keys(
    # exactly one of steps and epochs (planc/checks/loop.py: train-length)
    Key("steps", "int", None, "optimizer steps", min=1),
    Key("epochs", "int", None, "passes over the data instead of `steps` (map-style sources)", min=1),
    Key("global_batch", "int", REQUIRED, "rows per step over all data-parallel ranks", min=1),
    Key("micro_batch", "int", 1, "rows per forward/backward on one rank", min=1),
    Key("optimizer", "enum", "adamw", "optimizer", choices=("adamw",),
        options=MappingProxyType({"adamw": _ADAMW})),
    Key("schedule", "enum", "constant", "learning-rate schedule", choices=SCHEDULES,
        options=MappingProxyType({"constant": _keys(_SCHEDULE["warmup"]), "linear": _SCHEDULE,
                                  "cosine": _SCHEDULE})),
    Key("objective", "enum", "causal_lm", "what the model learns: next-token prediction, or block diffusion "
        "(sft data)", choices=OBJECTIVES, options=MappingProxyType({"block_diffusion": _BLOCK_DIFFUSION})),
    Key("clip", "float", 1.0, "max gradient norm (0 = off)", min=0),
    Key("seed", "int", 0, "model init and data order (torch takes 0 .. 2**64 - 1; a plan's whole numbers stop at "
        "2**63 - 1)", min=0, max=2**63 - 1),
    Key("log_every", "int", 1, "log every N steps", min=1),
    Key("output", "path", None, "where metrics.jsonl goes (default: checkpoint.dir)"),
    Key("moe_aux_loss", "float", None, "MoE load-balancing loss weight (default: the config's router_aux_loss_coef)",
        min=0),
    Key("tracker", "enum", None, "also log to tensorboard or wandb (offline)", choices=TRACKERS),
    Key("mfu", "bool", False, "model FLOPs utilisation in the log (CUDA; on CPU the log says not measured)"),
    Key("peak_tflops", "float", None, "the device's peak TFLOPS for MFU (default: runtime/mfu.py's table)", above=0),
), stmts=MappingProxyType({
    "profile": StmtSpec("profile", "a torch.profiler trace of a few steps (DIR/profile/trace_rank{r}.json)", body=_keys(
        Key("first", "int", 3, "first profiled step", min=1, setting="profile.first"),
        Key("steps", "int", 2, "profiled steps", min=1, setting="profile.steps"),
    ), once=True),
    "freeze": StmtSpec("freeze", "no gradient and no optimizer state for the matching modules' parameters "
                       "(e.g. a vision tower)", "globs"),
    "lora": StmtSpec("lora", "LoRA adapters (peft) on the matching nn.Linear modules; every other parameter is "
                     "frozen, checkpoints hold the adapters", "globs", options=_LORA, once=True),
    "lr": StmtSpec("lr", "the matching modules' parameters at their own learning rate: `scale` times the "
                   "optimizer's lr", "globs", options=_keys(Key("scale", "float", REQUIRED,
                                                                 "factor on train.lr", above=0))),
    "mixed_precision": StmtSpec("mixed_precision", "FSDP2 compute and gradient-reduce dtypes", body=_keys(
        Key("param", "enum", "fp32", "compute dtype of gathered parameters", choices=DTYPES,
            setting="train.param_dtype"),
        Key("reduce", "enum", "fp32", "dtype of gradient reduction", choices=DTYPES,
            setting="train.reduce_dtype"),
    ), once=True),
}), required=True)

CHECKPOINT = BlockSpec("checkpoint", "DCP checkpoints and the HF export", _keys(
    Key("dir", "path", REQUIRED, "where step_N/ and hf/ go"),
    Key("every", "int", None, "save every N steps (default: at the end only)", min=1),
    Key("keep", "int", 2, "keep the newest K checkpoints", min=1),
    Key("export", "enum", "hf", "write DIR/hf at the end", choices=("hf", "none")),
))

VALIDATION = BlockSpec("validation", "held-out loss every N steps and at the end", _keys(
    Key("every", "int", None, "validate every N steps (default: at the end only)", min=1),
    Key("batches", "int", None, "validation steps of global_batch rows each (default: one whole pass of a "
        "single source)", min=1),
), stmts=MappingProxyType({
    "source": StmtSpec("source", "a held-out source (the keys of a data source)", "label", body=_SOURCE),
}))

KERNEL_CHOICES = KERNEL_BACKENDS + ("off",)  # off: the op is not swapped in
_KERNEL_DOCS = {"rmsnorm": "RMSNorm", "swiglu": "SwiGLU / GeGLU act-and-mul", "rotary": "rotary embedding",
                "fused_ce": "chunked linear + cross-entropy (no full logits)", "moe": "MoE grouped GEMM"}
KERNELS = BlockSpec("kernels", "fused kernels per operation", _keys(
    *(Key(op, "enum", "off", _KERNEL_DOCS[op], choices=KERNEL_CHOICES) for op in KERNEL_OPS)))

BLOCKS: Mapping[str, BlockSpec] = MappingProxyType(
    {b.name: b for b in (MODEL, MESH, PARALLELIZE, DATA, TRAIN, VALIDATION, CHECKPOINT, KERNELS)})
TOP_LEVEL = ("plan",) + tuple(BLOCKS)
