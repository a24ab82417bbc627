"""Generate text from a trained model: an HF export directory, or a DCP checkpoint + the config.

    text = sample.run("out/demo/hf", "def main(", max_new_tokens=40)                  # HF export
    text = sample.run("out/demo/step_40", "def main(", config="plans/models/tiny-llama",
                      tokenizer="data/demo/tokenizer")                                 # a checkpoint

One process, no process group. An HF directory (what `checkpoint { export = hf }` writes: weights,
config, tokenizer) loads with `from_pretrained`. A DCP checkpoint (``step_N``, written by any
layout) is read straight into a model built from `config`: DCP reshards on load, so only the
model's entries are read (not the optimizer's), without converting the whole checkpoint first
(torch.distributed.checkpoint.format_utils.dcp_to_torch_save would load the optimizer state too).
Generation is transformers' `generate`: greedy by default (`temperature=0`), else sampling with
`temperature` and `top_p` from `seed`. The key-value cache is on for generation (training turns it
off: packed rows must not attend across documents; a single prompt has no such rows).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_model", "generate", "run"]


def _is_dcp(path: Path) -> bool:
    return (path / ".metadata").is_file()


def load_model(path, *, config=None, dtype: str = "fp32", device: str = "cpu"):
    """The causal LM at `path` (HF export directory, or DCP checkpoint with `config`), in eval mode."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    from runtime.model import DTYPES, load_config, reset_rotary_buffers

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist")
    if _is_dcp(path):
        if config is None:
            raise SystemExit(f"error: {path} is a DCP checkpoint: give the model config (--config DIR) too")
        cfg = load_config(config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[dtype])
        model.to_empty(device=device)
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        if any(".lora_" in k for k in keys):
            raise SystemExit(f"error: {path} holds LoRA adapters: sample from the run's merged export "
                             "(DIR/hf) instead")
        missing = [k for k in state if k not in keys and k.removeprefix("model.") not in _tied(model)]
        if missing:
            raise SystemExit(f"error: {path} does not hold this model's weights (first missing: "
                             f"{missing[0].removeprefix('model.')}); is --config the model it trained?")
        state = {k: v for k, v in state.items() if k in keys}
        dcp.load(state, checkpoint_id=str(path))  # no process group: one process reads everything
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        reset_rotary_buffers(model, torch.device(device))
    elif (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
    else:
        raise SystemExit(f"error: {path} is neither an HF model directory (config.json) nor a DCP checkpoint (.metadata)")
    model.config.use_cache = True
    return model.eval()


def _tied(model) -> set:
    from runtime.model import tied_keys
    return set(tied_keys(model))


@torch.no_grad()
def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """The prompt's continuation (the new text only)."""
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    sampling = temperature > 0
    options = dict(do_sample=True, temperature=temperature, top_p=top_p) if sampling else dict(do_sample=False)
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, use_cache=True, **options)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def run(path, prompt: str, *, config=None, tokenizer=None, max_new_tokens: int = 64, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, dtype: str = "fp32", device: str = "cpu") -> str:
    """What `planc sample` does: load (see `load_model`) and continue `prompt`. The tokenizer is
    `tokenizer`, else the one in `path` (an HF export carries it)."""
    from runtime.data import load_tokenizer

    model = load_model(path, config=config, dtype=dtype, device=device)
    tok_dir = tokenizer or path
    if not (Path(tok_dir) / "tokenizer.json").is_file() and not (Path(tok_dir) / "tokenizer_config.json").is_file():
        raise SystemExit(f"error: no tokenizer in {tok_dir}: give one (--tokenizer DIR)")
    return generate(model, load_tokenizer(tok_dir), prompt, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, seed=seed)
