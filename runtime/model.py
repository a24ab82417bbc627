"""Build a Hugging Face causal LM on the meta device, and materialise it after sharding.

`build_meta` makes the module tree without allocating weights, so sharding rules can be applied
first. `materialize` then allocates each rank's shards (`to_empty`) and fills them either from
``*.safetensors`` (read shard by shard through DCP's Hugging Face reader) or with a random init
identical to a single-process ``from_config`` under the same seed (rank 0 builds the full model and
broadcasts it). Rotary-embedding buffers are non-persistent, so neither path restores them: they
are rebuilt here.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, set_model_state_dict,
)
from transformers import AutoConfig, AutoModelForCausalLM

__all__ = ["DTYPES", "load_config", "weights_dir", "build_meta", "materialize", "tied_keys",
           "reset_rotary_buffers", "retie"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_config(path, *, attention: str = "sdpa"):
    """HF config from a ``config.json`` file or a directory holding one; `use_cache` off.

    `use_cache=False` matters beyond memory: with a cache, transformers attends across packed
    documents instead of restarting at each document's `position_ids == 0`.
    """
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise SystemExit(f"error: model.config: {path} holds no config.json")
    if not path.exists():
        raise SystemExit(f"error: model.config: {path} does not exist")
    config = AutoConfig.from_pretrained(path)  # a directory or a config file itself
    config.use_cache = False
    config._attn_implementation = attention
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


def build_meta(config_path, *, dtype: str = "fp32", attention: str = "sdpa") -> nn.Module:
    """The causal LM on the meta device (no memory), in `dtype`, with `attention`."""
    if dtype not in DTYPES:
        raise SystemExit(f"error: model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = load_config(config_path, attention=attention)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], attn_implementation=attention)
    return model


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

    Rotary embeddings (``inv_freq`` and friends) are rebuilt from the module's own config. Any
    other non-persistent buffer is an error rather than silent garbage.
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
            config = model.config
            ref = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype,
                                                   attn_implementation=config._attn_implementation)
            full = ref.state_dict()
        set_model_state_dict(model, full, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=dist.is_initialized()))
    reset_rotary_buffers(model, device)


def load_safetensors(model: nn.Module, path) -> None:
    """Fill the (possibly sharded) model from an HF safetensors directory, each rank reading only
    the slices of its own shards (DCP's Hugging Face reader reshards on the fly)."""
    state = get_model_state_dict(model)
    for key in tied_keys(model):
        state.pop(key, None)  # an alias: filled through the parameter it is tied to
    try:
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(path)))
    except Exception as e:  # a missing tensor is the usual cause: name it, keep the cause
        raise RuntimeError(f"could not load weights from {path}: {e}") from e
    set_model_state_dict(model, state, options=StateDictOptions(strict=False))
