"""The runtime's vocabulary: every name a plan may choose for something the runtime implements.

Plain tuples and nothing else, importable without torch: the compiler's schema (planc/schema.py)
takes its enum choices from here, and the runtime module that implements each list checks its
arguments against the same tuple, so a name is defined once. A new source format, chat template,
kernel op or TP style is added here and in the module that implements it.
"""
from __future__ import annotations

# model (runtime/model.py maps each dtype name to a torch dtype)
DTYPES = ("fp32", "bf16", "fp16")  # a plan's choices
# what `planc verify`'s proof also runs in; not a plan's choice (the mixed-precision defaults are fp32)
PROOF_DTYPES = ("fp64",)
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")  # HF attn_implementation names
ULYSSES_ATTENTIONS = ("sdpa", "eager")  # what runtime/parallel/ulysses.py wraps
CUDA_ATTENTIONS = ("flash_attention_2",)  # the attentions that need a GPU
DEVICES = ("cpu", "cuda")  # runtime/dist.py

# parallelism (runtime/parallel/tp.py)
TP_STYLES = ("colwise", "rowwise", "sequence", "vocab", "loss")

# data (runtime/data/)
SOURCE_FORMATS = ("jsonl", "json", "parquet", "arrow", "csv", "text", "hf_disk")  # sources.py
SOURCE_KINDS = ("pretrain", "sft")  # kinds.py: text, or chat messages
PACKS = ("none", "greedy", "dynamic")  # batching.py
CHAT_TEMPLATES = ("tokenizer", "chatml")  # chat.py
VL_CHAT_TEMPLATES = ("tokenizer", "qwen_vl")  # multimodal/template.py: vision-language conversations
ANY_CHAT_TEMPLATE = tuple(dict.fromkeys(CHAT_TEMPLATES + VL_CHAT_TEMPLATES))  # the plan key; checks pick by model
TRUNCATIONS = ("right", "left", "drop")  # chat.py: sft samples longer than max_len
BAD_RECORD_POLICIES = ("skip", "fail")  # bad_records.py
IGNORE = -100  # the label of a position without a target (padding, document ends); loss.py too

# optimisation (runtime/optim.py)
SCHEDULES = ("constant", "linear", "cosine")
# training objectives: next-token cross-entropy (runtime/loss.py), or LLaDA2-style block diffusion
# (runtime/diffusion/, whose mask token is MASK_TOKEN unless a plan names another)
OBJECTIVES = ("causal_lm", "block_diffusion")
MASK_TOKEN = "<|mask|>"
TRACKERS = ("tensorboard", "wandb")  # runtime/trackers.py: metrics sinks beside metrics.jsonl

# kernels (runtime/kernels/): the ops, and which implementation runs one
KERNEL_OPS = ("rmsnorm", "swiglu", "rotary", "fused_ce", "moe")
KERNEL_BACKENDS = ("auto", "triton", "torch")  # auto: Triton on CUDA, torch elsewhere
