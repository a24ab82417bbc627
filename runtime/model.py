"""Build a Hugging Face causal LM (or vision-language model) on the meta device, and materialise
it after sharding.

`build_meta` makes the module tree without allocating weights, so sharding rules can be applied
first. `materialize` then allocates each rank's shards (`to_empty`) and fills them either from
``*.safetensors`` (read shard by shard through DCP's Hugging Face reader) or with a random init
identical to a single-process ``from_config`` under the same seed (rank 0 builds the full model and
broadcasts it). Rotary-embedding buffers are non-persistent, so neither path restores them: they
are rebuilt here (the vision tower's too).

A config with a `vision_config` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE...) is built with
`AutoModelForImageTextToText` (`AutoModelForCausalLM` refuses it), and its safetensors are read with
transformers' own key conversion (runtime.checkpoint.hf_keys): Qwen2.5-VL's `save_pretrained`
writes keys that differ from its module tree.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, set_model_state_dict,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

__all__ = ["DTYPES", "load_config", "weights_dir", "build_meta", "materialize", "tied_keys",
           "reset_rotary_buffers", "is_vision_language", "auto_class", "retie"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def is_vision_language(config) -> bool:
    """Whether a config describes a vision-language model (it has a vision tower)."""
    return getattr(config, "vision_config", None) is not None


def auto_class(config):
    """The transformers auto class that builds `config`."""
    return AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM


def load_config(path, *, attention: str = "sdpa", trust_remote_code: bool = False):
    """HF config from a ``config.json`` file or a directory holding one; `use_cache` off.

    `use_cache=False` matters beyond memory: with a cache, transformers attends across packed
    documents instead of restarting at each document's `position_ids == 0`. A VL model reads it
    from its TEXT config (the top-level one does not reach it), so it is turned off there too.
    A directory that ships its own modeling code (``auto_map``, e.g. LLaDA2) is loaded only with
    `trust_remote_code=True`: that code runs in this process.
    """
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise SystemExit(f"error: model.config: {path} holds no config.json")
    if not path.exists():
        raise SystemExit(f"error: model.config: {path} does not exist")
    try:  # an explicit False: transformers would otherwise ask on stdin (and wait)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise SystemExit(f"error: model.config: {path} ships its own modeling code (auto_map in config.json); "
                         "it runs only when trusted: set trust_remote_code = true in the model block") from None
    config.use_cache = False
    if getattr(config, "text_config", None) is not None:
        config.text_config.use_cache = False
    config._attn_implementation = attention  # reaches the sub-configs (text, vision) as well
    return config


def weights_dir(config_path, weights=None) -> Path | None:
    """The directory whose ``*.safetensors`` to load: `weights` if given, else the config's
    directory when it holds safetensors, else None (random init)."""
    if weights:
        w = Path(weights)
        if not any(w.glob("*.safetensors")):
            raise SystemExit(f"error: model.weights: {w} holds no *.safetensors")
        return w
    c = Path(config_path)
    c = c if c.is_dir() else c.parent
    return c if any(c.glob("*.safetensors")) else None


def build_meta(config_path, *, dtype: str = "fp32", attention: str = "sdpa",
               trust_remote_code: bool = False) -> nn.Module:
    """The causal LM (or VL model) on the meta device (no memory), in `dtype`, with `attention`; a
    model whose directory ships its modeling code only with `trust_remote_code=True` (transformers
    then registers that class for the config, so `materialize` rebuilds the same one). Parameters
    the forward never reads (NEVER_USED) are frozen."""
    if dtype not in DTYPES:
        raise SystemExit(f"error: model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = load_config(config_path, attention=attention, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = auto_class(config).from_config(config, dtype=DTYPES[dtype], attn_implementation=attention,
                                               trust_remote_code=trust_remote_code)
    freeze_never_used(model)
    if dtype == "fp64" and getattr(model.config, "_experts_implementation", None) == "grouped_mm":
        # torch's grouped GEMM takes fp32, bf16 and fp16 only: fp64 experts run transformers' own loop
        model.set_experts_implementation("eager")
    return model


# Parameters a model's forward never reads, by module class: Qwen2.5-Omni's audio tower holds an
# `audio_bos_eos_token` embedding that its forward does not use, so it never gets a gradient. They are
# frozen at build time: the optimizer never holds them, so a checkpoint's optimizer state covers
# every parameter it has (DCP refuses to load one whose state is missing), and FSDP and clipping
# never see a gradient that exists on no rank. They are still saved, loaded and exported.
NEVER_USED = {"Qwen2_5OmniAudioEncoder": ("audio_bos_eos_token",)}


def freeze_never_used(model: nn.Module) -> list[str]:
    """Turn off gradients of the NEVER_USED parameters; returns their names."""
    frozen = []
    for name, module in model.named_modules():
        for child in NEVER_USED.get(type(module).__name__, ()):
            for pname, param in getattr(module, child).named_parameters():
                param.requires_grad_(False)
                frozen.append(".".join(x for x in (name, child, pname) if x))
    return frozen


def tied_keys(model: nn.Module) -> list[str]:
    """State-dict keys that only alias another parameter (e.g. ``lm_head.weight`` when the
    embeddings are tied): safetensors files written by HF leave them out."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    return sorted(getattr(model, "_tied_weights_keys", None) or ())  # a dict {alias: source} in transformers 5


def retie(model: nn.Module) -> None:
    """Tie the output head to the input embeddings again when the config ties them.

    `to_empty` allocates each module's parameters separately, so on a model that FSDP did not wrap
    (one process: runtime.parallel.fsdp skips it) the head and the embedding come out as two
    tensors; the head would then be left uninitialised by safetensors (which hold only the
    embedding) and train apart from it. FSDP2 keeps the tie itself (then this is a no-op)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is not emb.weight:
        head.weight = emb.weight


def reset_rotary_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute the non-persistent buffers that `to_empty` left uninitialised.

    Rotary embeddings (``inv_freq`` and friends) are rebuilt from the module's own config, the Omni
    audio towers' sinusoid tables by their own method. Any other non-persistent buffer is an error
    rather than silent garbage.
    """
    unknown = []
    for name, module in model.named_modules():
        nonpersistent = getattr(module, "_non_persistent_buffers_set", set())
        if not nonpersistent:
            continue
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(config=module.config)
            for bname, buf in fresh.named_buffers(recurse=False):
                module._buffers[bname] = buf.to(device)
            for attr in ("attention_scaling",):
                if hasattr(fresh, attr):
                    setattr(module, attr, getattr(fresh, attr))
        elif hasattr(module, "compute_default_singular_positional_embedding"):
            # the Omni audio towers' sinusoid table, computed by the module's own method
            old = module.positional_embedding
            module._buffers["positional_embedding"] = module.compute_default_singular_positional_embedding().to(
                device=device, dtype=old.dtype)
        else:
            unknown += [f"{name}.{b}" for b in sorted(nonpersistent)]
    if unknown:
        raise RuntimeError(f"don't know how to initialise non-persistent buffers after a meta build: {unknown}")


def materialize(model: nn.Module, device: torch.device, *, seed: int, weights: Path | None = None) -> None:
    """Allocate this rank's shards on `device` and fill them.

    With `weights`, every rank reads just its own shards from the safetensors there. Without,
    rank 0 seeds and builds the full model exactly as ``from_config`` would on one process and
    broadcasts it, so any mesh starts from the same weights as a single-process run. (That needs
    the full model in rank 0's CPU memory: fine for the models random init is used for.)
    """
    model.to_empty(device=device)
    retie(model)
    if weights is not None:
        load_safetensors(model, weights)
    else:
        full = {}
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.manual_seed(seed)
            # A copy: from_config sets its attention implementation on the config and all its
            # sub-configs, which would undo a per-part choice (Ulysses on a VL model's text side).
            config = copy.deepcopy(model.config)
            ref = auto_class(config).from_config(config, dtype=next(model.parameters()).dtype,
                                                 attn_implementation=config._attn_implementation)
            full = ref.state_dict()
        set_model_state_dict(model, full, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=dist.is_initialized()))
    reset_rotary_buffers(model, device)


def load_safetensors(model: nn.Module, path) -> None:
    """Fill the (possibly sharded) model from an HF safetensors directory, each rank reading only
    the slices of its own shards (DCP's Hugging Face reader reshards on the fly). VL models go
    through transformers' key conversion (runtime.checkpoint.hf_keys)."""
    if is_vision_language(model.config):
        from runtime.checkpoint.hf_keys import load_converted

        load_converted(model, path, skip=tied_keys(model))
        return
    state = get_model_state_dict(model)
    for key in tied_keys(model):
        state.pop(key, None)  # an alias: filled through the parameter it is tied to
    try:
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(path)))
    except Exception as e:  # a missing tensor is the usual cause: name it, keep the cause
        raise RuntimeError(f"could not load weights from {path}: {e}") from e
    set_model_state_dict(model, state, options=StateDictOptions(strict=False))
