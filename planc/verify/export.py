"""The HF export check of `planc verify`: a layout's export against its own last DCP checkpoint."""
from __future__ import annotations

from pathlib import Path


def check_export(run_dir: Path, trust_remote_code: bool = False) -> dict:
    """The layout's HF export loaded as a user would (`from_pretrained`, one process; with the
    plan's `trust_remote_code`, so a model shipping its own code loads through the code exported
    beside it) against the model weights of the layout's own last DCP checkpoint, read back without
    any process group: missing or unexpected names, and tensors that are not bitwise equal (dtype
    included: an fp64 run's export must load as fp64).

    (Not against the one-process run's weights: after a few AdamW steps those differ by more than
    the loss does, wherever a gradient is too small to rise above rounding: Adam normalises it.)"""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from runtime.model import auto_class

    hf_logging.disable_progress_bar()
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    flat = run_dir / "last_checkpoint.pt"
    dcp_to_torch_save(ckpts[-1], flat)
    saved = torch.load(flat, weights_only=False)["model"]
    flat.unlink()
    if saved and all(".lora_" in k for k in saved):  # a LoRA run: its checkpoints hold the adapters only
        return _check_lora_export(run_dir / "checkpoints", saved, ckpts[-1].name, trust_remote_code)
    export = run_dir / "checkpoints" / "hf"
    trust = {"trust_remote_code": trust_remote_code}
    model, info = auto_class(AutoConfig.from_pretrained(export, **trust)).from_pretrained(
        export, output_loading_info=True, **trust)
    state = model.state_dict()
    problems = [f"{kind}: {names[:3]}" for kind, names in (("missing", sorted(info["missing_keys"])),
                                                          ("unexpected", sorted(info["unexpected_keys"]))) if names]
    problems += [f"not loaded: {k}" for k in sorted(set(saved) - set(state))[:3]]
    problems += [f"{k}: loads as {state[k].dtype}, trained in {saved[k].dtype}" for k in sorted(set(saved) & set(state))
                 if state[k].dtype != saved[k].dtype][:3]
    problems += [f"{k}: differs from the checkpoint" for k in sorted(set(saved) & set(state))
                 if state[k].dtype == saved[k].dtype and not torch.equal(state[k], saved[k])][:3]
    return {"tensors": len(saved), "problems": problems, "checkpoint": ckpts[-1].name}


def _check_lora_export(out: Path, saved: dict, checkpoint: str, trust_remote_code: bool = False) -> dict:
    """A LoRA run (runtime.lora.export): OUT/adapter holds the checkpoint's adapters bitwise (peft
    names them without the adapter name), and OUT/hf, the merged model, loads with every weight."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from runtime.lora import ADAPTER
    from runtime.model import auto_class

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    want = {"base_model.model." + k.replace(f".{ADAPTER}.", "."): v for k, v in saved.items()}
    problems = [f"not in the adapter: {k}" for k in sorted(set(want) - set(adapter))[:3]]
    problems += [f"{k}: differs from the checkpoint" for k in sorted(set(want) & set(adapter))
                 if adapter[k].dtype != want[k].dtype or not torch.equal(adapter[k], want[k])][:3]
    merged = out / "hf"
    trust = {"trust_remote_code": trust_remote_code}
    _, info = auto_class(AutoConfig.from_pretrained(merged, **trust)).from_pretrained(
        merged, output_loading_info=True, **trust)
    problems += [f"merged model {kind}: {names[:3]}" for kind, names in (
        ("missing", sorted(info["missing_keys"])), ("unexpected", sorted(info["unexpected_keys"]))) if names]
    return {"tensors": len(saved), "problems": problems, "checkpoint": checkpoint}
