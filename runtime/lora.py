"""LoRA adapters with peft, on a model built on the meta device and sharded like any other.

    spec = lora.LoraSpec(rank=16, alpha=32, dropout=0.0, targets=("model.layers.*.self_attn.{q,v}_proj",))
    lora.check_layout(spec, mesh.degrees)                   # TP: refused (see below)
    names = lora.apply_lora(model, spec)                     # before parallelize; freezes the base
    ... parallelize (Ulysses, checkpointing, FSDP2) as the plan says ...
    lora.materialize(model, info.device, spec, seed=cfg.train.seed, weights=...)   # instead of models.materialize
    optimizer = optim.build_optimizer(model, ...)            # sees the adapters only (requires_grad)
    ... dcp.save(..., trainable_only=True) / dcp.load(..., trainable_only=True) ...
    lora.export(cfg.checkpoint.dir, model, spec, tokenizer, base=cfg.model.config)  # DIR/adapter + DIR/hf

`apply_lora` resolves the plan's globs to module names (runtime.parallel.globs) and injects peft
LoRA layers in place with `peft.inject_adapter_in_model` (no PeftModel wrapper), so every other
module keeps its name: `model.layers.*` still names the blocks for FSDP and checkpointing. A
target ``...q_proj`` becomes a peft ``Linear`` holding ``base_layer`` (the frozen weight) and
``lora_A``/``lora_B`` (trainable), so its weight's key gains ``.base_layer``.

`materialize` fills the base weights from safetensors (each rank reading its shards, keys mapped
back to the HF names) or, without weights, from a seeded `from_config` on rank 0 (as
runtime.model does), and initialises the adapters from `seed` alone, the same way on every layout:
lora_A Kaiming-uniform (peft's default init, drawn from one generator in name order), lora_B zero,
so the adapted model starts equal to the base.

Layouts. FSDP2 and HSDP shard frozen and trainable parameters in one unit (FSDP2 reduces only the
gradients that exist). Ulysses works unchanged: LoRA layers act per token, like the projections
they wrap. EP works when no target lies inside an experts module (peft adapts nn.Linear modules,
not the fused 3-D expert parameters EP shards). TP is refused: TP's parallel styles replace
nn.Linear weights by DTensor shards, while a LoRA layer adds a full-width A/B path beside the
projection, which would need its own colwise/rowwise placement (not built).
Dropout > 0 draws its masks per rank, so layouts then match one process only in distribution.
"""
from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from runtime.model import reset_rotary_buffers, retie, tied_keys
from runtime.parallel.globs import expand

__all__ = ["LoraSpec", "check_layout", "apply_lora", "lora_config", "materialize", "adapter_init",
           "hf_key", "export"]

ADAPTER = "default"  # peft's adapter name; stripped from the keys of an exported adapter


@dataclass(frozen=True)
class LoraSpec:
    """rank r, alpha (the update is scaled by alpha / r), dropout on the adapter's input, and the
    module globs to adapt (each must match at least one nn.Linear)."""
    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"lora rank must be an int >= 1, got {self.rank!r}")
        if not self.alpha > 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora needs alpha > 0 and 0 <= dropout < 1, got {self.alpha}, {self.dropout}")
        if not self.targets:
            raise ValueError("lora needs at least one target glob")


def check_layout(spec: LoraSpec, degrees: dict, expert_modules=()) -> None:
    """Refuse the layouts LoRA does not support here, with the reason (see the module docstring).
    `expert_modules`: names of the MoE experts modules EP shards, when the plan uses EP."""
    if degrees.get("tp", 1) > 1:
        raise ValueError("lora with tensor parallelism (tp > 1) is not supported: TP shards the "
                         "projections' weights, and the LoRA A/B path beside each one has no TP "
                         "placement here; use dp_shard / dp_replicate / sp (and ep) for LoRA runs")
    for glob in spec.targets:
        inside = [e for e in expert_modules if re.match(re.escape(e) + r"(\.|$)", glob)]
        if inside:
            raise ValueError(f"lora target {glob!r} lies inside the experts module {inside[0]!r}: peft "
                             "adapts nn.Linear modules, not the fused expert weights EP shards")


def _targets(model: nn.Module, spec: LoraSpec) -> list[str]:
    names = []
    for glob in spec.targets:
        found = expand(model, [glob])
        linear = [n for n in found if isinstance(model.get_submodule(n), nn.Linear)]
        if not linear:
            kinds = sorted({type(model.get_submodule(n)).__name__ for n in found})
            raise ValueError(f"lora target {glob!r} matches no nn.Linear module"
                             + (f" (it matches {', '.join(kinds)})" if kinds else ""))
        names += [n for n in linear if n not in names]
    return names


def lora_config(spec: LoraSpec, names, base: str | None = None):
    """The peft LoraConfig adapting exactly `names` (a full-match regex of them)."""
    from peft import LoraConfig

    pattern = "(" + "|".join(re.escape(n) for n in names) + ")"
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=pattern,
                      base_model_name_or_path=base, bias="none")


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Inject LoRA layers into the modules the globs match (meta device is fine) and freeze every
    other parameter; returns the adapted module names. Call before any parallelize step."""
    from peft import inject_adapter_in_model

    names = _targets(model, spec)
    inject_adapter_in_model(lora_config(spec, names), model, adapter_name=ADAPTER)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    model._lora_spec = (spec, tuple(names))  # what export() rebuilds the adapter config from
    return names


def hf_key(key: str) -> str:
    """The Hugging Face name of a base parameter of an adapted model (``...q_proj.base_layer.weight``
    -> ``...q_proj.weight``)."""
    return key.replace(".base_layer.", ".")


def _is_adapter(key: str) -> bool:
    return ".lora_" in key


def adapter_init(model: nn.Module, seed: int) -> dict:
    """Full initial values of every adapter parameter, from `seed` only (any layout gets the same):
    lora_A Kaiming-uniform with a = sqrt(5) (nn.Linear's and peft's default), lora_B zero."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(model.named_parameters()):
        if not _is_adapter(name):
            continue
        t = torch.empty(p.shape, dtype=p.dtype)  # DTensor .shape is the global shape
        if ".lora_A." in name:
            nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        else:
            nn.init.zeros_(t)
        out[name] = t
    return out


def materialize(model: nn.Module, device: torch.device, *, seed: int, weights: Path | None = None) -> None:
    """runtime.model.materialize for an adapted model: allocate this rank's shards, fill the base
    (safetensors, or rank 0's seeded `from_config` broadcast) and initialise the adapters."""
    from transformers import AutoModelForCausalLM

    model.to_empty(device=device)
    retie(model)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    broadcast = StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized(), strict=False)
    if weights is not None:
        state = get_model_state_dict(model)
        tied = set(tied_keys(model))
        base = {hf_key(k): v for k, v in state.items() if not _is_adapter(k) and hf_key(k) not in tied}
        try:
            dcp.load(base, storage_reader=HuggingFaceStorageReader(str(weights)))
        except Exception as e:
            raise RuntimeError(f"could not load weights from {weights}: {e}") from e
        set_model_state_dict(model, {k: base[hf_key(k)] for k in state if hf_key(k) in base},
                             options=StateDictOptions(strict=False))
        full = adapter_init(model, seed) if rank0 else {}
    else:
        full = {}
        if rank0:
            torch.manual_seed(seed)
            ref = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype,
                                                   attn_implementation=model.config._attn_implementation)
            plain = ref.state_dict()
            full = {k: plain[hf_key(k)] for k, _ in model.state_dict().items() if not _is_adapter(k)}
            full.update(adapter_init(model, seed))
    set_model_state_dict(model, full, options=broadcast)
    reset_rotary_buffers(model, device)


def _gather(model: nn.Module, adapters_only: bool) -> dict:
    """Full tensors on rank 0's CPU (empty dicts elsewhere); a collective on every rank. A tensor
    that is the live parameter itself (an unsharded model on the CPU) is copied: the merge
    writes into the base weights."""
    full = get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapters_only))
    live = {p.untyped_storage().data_ptr() for p in model.parameters()
            if p.device.type == "cpu" and not isinstance(p, DTensor)}
    return {k: v.clone() if v.untyped_storage().data_ptr() in live else v for k, v in full.items()}


def export(out_dir, model: nn.Module, tokenizer=None, *, base: str | None = None, merged: bool = True) -> Path:
    """Write ``OUT/adapter`` (a peft adapter directory: adapter_model.safetensors +
    adapter_config.json, loadable with ``PeftModel.from_pretrained(base_model, OUT/adapter)``) and,
    with `merged`, ``OUT/hf``: the base with the adapters merged in by peft's `merge_and_unload`,
    a plain HF model directory (+ tokenizer). Call on every rank; rank 0 gathers the full weights
    into its CPU memory for the merge (the adapter alone is small)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    spec, names = model._lora_spec
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    full = _gather(model, adapters_only=not merged)
    if rank0:
        config = lora_config(spec, names, base=str(base) if base else None)
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
        peft_model = get_peft_model(plain, config, adapter_name=ADAPTER)
        prefixed = {"base_model.model." + k: v for k, v in full.items()}
        peft_model.load_state_dict(prefixed, strict=merged, assign=True)
        for sub in ("adapter", "hf"):
            shutil.rmtree(out / sub, ignore_errors=True)
        peft_model.save_pretrained(out / "adapter")
        if merged:
            merged_model = peft_model.merge_and_unload()
            if getattr(merged_model.config, "tie_word_embeddings", False):
                merged_model.tie_weights()
            reset_rotary_buffers(merged_model, torch.device("cpu"))
            merged_model.save_pretrained(out / "hf")
            if tokenizer is not None:
                tokenizer.save_pretrained(out / "hf")
    if dist.is_initialized():
        dist.barrier()
    return out
