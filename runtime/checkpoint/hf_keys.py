"""transformers' own checkpoint key conversion, for loading and exporting sharded models.

A checkpoint's keys need not be the module tree's names: Qwen2-VL / Qwen2.5-VL ``save_pretrained``
writes ``model.layers.*`` and ``visual.*`` for the tree's ``model.language_model.layers.*`` and
``model.visual.*``; Qwen3-VL-MoE hub checkpoints store fused experts transposed. transformers 5
describes these as per-model lists of `WeightRenaming` (key renames) and `WeightConverter` (tensor
operations) that `from_pretrained` applies and `save_pretrained` reverts. Both functions here use
those very lists, read from a fresh meta-device copy of the model (FSDP renames the classes of
wrapped modules, by which transformers looks the lists up):

- `load_converted`: checkpoint keys that are only renamed are read through DCP's Hugging Face
  reader into each rank's shards (no rank reads more than its share); keys that need a tensor
  operation are read whole on each rank, converted, and scattered to the shards.
- `export_state`: the model's state dict under the keys ``save_pretrained`` would write.
"""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

__all__ = ["reference_model", "load_converted", "export_state"]


def reference_model(model: nn.Module) -> nn.Module:
    """A meta-device model of the same class and config (transformers' lookups need the real
    class names; FSDP2 renames wrapped modules' classes)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    config = model.config
    for mapping in (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING):
        if type(config) in mapping:
            with torch.device("meta"):
                return mapping[type(config)](config)
    raise ValueError(f"no model class for config {type(config).__name__}")


def _file_keys(path: Path) -> dict[str, Path]:
    from safetensors import safe_open

    keys = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            keys.update({k: f for k in h.keys()})
    return keys


def _read(file: Path, key: str):
    def load():
        from safetensors import safe_open

        with safe_open(str(file), "pt") as h:
            return h.get_tensor(key)
    return load


def load_converted(model: nn.Module, path, skip=()) -> None:
    """Fill `model` (possibly sharded) from the HF safetensors in `path`, converting keys and
    tensors as transformers' `from_pretrained` would. `skip`: state-dict keys not to fill (aliases
    of tied weights)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    path = Path(path)
    ref = reference_model(model)
    transforms = get_model_conversion_mapping(ref)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    meta = ref.state_dict()
    state = {k: v for k, v in get_model_state_dict(model).items() if k not in set(skip)}
    plain, converting, unexpected = {}, {}, []
    files = _file_keys(path)
    for fkey in sorted(files, key=dot_natural_key):
        key, pattern = rename_source_key(fkey, renamings, converters, ref.base_model_prefix, meta)
        if key not in meta and fkey in meta:  # as transformers: a key already in the model's own form
            key, pattern = fkey, None
        if key not in state:
            unexpected.append(fkey)
        elif pattern is None:
            plain[fkey] = state[key]
        else:
            converting.setdefault(key, deepcopy(by_pattern[pattern])).add_tensor(key, fkey, pattern, _read(files[fkey], fkey))
    converted = {}
    for first, conv in converting.items():
        converted.update(conv.convert(first, model=ref, config=ref.config))
    loaded = {id(v) for v in plain.values()}
    filled = {k for k, v in state.items() if id(v) in loaded} | set(converted)
    missing = sorted(set(state) - filled)
    if missing:
        raise RuntimeError(f"could not load weights from {path}: {len(missing)} missing, e.g. {missing[:3]}"
                           + (f"; keys not used: {unexpected[:3]}" if unexpected else ""))
    try:
        if plain:
            dcp.load(plain, storage_reader=HuggingFaceStorageReader(str(path)))
    except Exception as e:  # name the directory, keep the cause
        raise RuntimeError(f"could not load weights from {path}: {e}") from e
    set_model_state_dict(model, {k: v for k, v in state.items() if k not in converted},
                         options=StateDictOptions(strict=False))
    if converted:
        full = {k: (v[0] if isinstance(v, list) else v).to(state[k].dtype) for k, v in converted.items()}
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def export_state(model: nn.Module, skip=()) -> dict:
    """The model's (sharded) state dict under the checkpoint keys `save_pretrained` writes."""
    from transformers.core_model_loading import revert_weight_conversion

    state = {k: v for k, v in get_model_state_dict(model).items() if k not in set(skip)}
    return revert_weight_conversion(reference_model(model), state)
