"""Export the trained model as a Hugging Face directory (safetensors + config + tokenizer).

Every rank writes its own shards through DCP's Hugging Face writer, and rank 0 then consolidates
them into full tensors, so no rank ever gathers the whole model in memory. Keys are the model's own
parameter names (``model.layers.0...``, ``lm_head.weight``), i.e. what ``from_pretrained`` expects;
aliases of tied weights are left out, as ``save_pretrained`` does. A vision-language model's keys
are those ``save_pretrained`` writes (transformers' own conversion, runtime.checkpoint.hf_keys),
and its processor (image processor, video settings, tokenizer, chat template) is saved beside it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from runtime.model import is_vision_language, tied_keys

__all__ = ["export_hf", "copy_model_code"]


def export_hf(out_dir, model, tokenizer=None, processor=None) -> Path:
    """Write `out_dir` (replacing an earlier export) loadable by ``AutoModelForCausalLM.from_pretrained``
    (``AutoModelForImageTextToText`` for a VL model; pass its VLProcessor as `processor`)."""
    out = Path(out_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and out.exists():
        shutil.rmtree(out)  # stale files of an earlier export must not mix with this one
    if dist.is_initialized():
        dist.barrier()
    if is_vision_language(model.config):
        from runtime.checkpoint.hf_keys import export_state

        state = export_state(model, skip=tied_keys(model))
    else:
        state = get_model_state_dict(model)
        for key in tied_keys(model):
            state.pop(key, None)
    writer = HuggingFaceStorageWriter(str(out), save_distributed=True, enable_consolidation=True)
    dcp.save(state, storage_writer=writer)
    if rank == 0:
        shutil.rmtree(out / "sharded", ignore_errors=True)  # per-rank pieces, now consolidated
        model.config.save_pretrained(out)
        copy_model_code(model.config, out)
        if processor is not None:
            processor.save_hf_processor(out)
        elif tokenizer is not None:
            tokenizer.save_pretrained(out)
    if dist.is_initialized():
        dist.barrier()
    return out


def copy_model_code(config, out: Path) -> list[str]:
    """A model that ships its own modeling code (``auto_map``, loaded with trust_remote_code) is
    exported with that code beside it, so the export loads the same way: the ``*.py`` files of the
    directory the config came from. Returns the names copied."""
    if not getattr(config, "auto_map", None):
        return []
    src = Path(config._name_or_path)
    copied = []
    for f in sorted(src.glob("*.py")) if src.is_dir() else []:
        shutil.copy2(f, Path(out) / f.name)
        copied.append(f.name)
    return copied
