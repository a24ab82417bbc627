"""The real module tree of a plan's model, built on the meta device (no weights read, no download)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import paths
from .diagnostics import elide
from .paths import PathError


class ModelLoadError(Exception):
    def __init__(self, message: str, help: str | None = None, rule: str = "model-config"):
        super().__init__(message)
        self.help = help
        self.rule = rule


@dataclass
class ModelTree:
    config: object  # transformers.PretrainedConfig
    path: Path
    modules: list[str]  # dotted names, parents before children ("" is the root)
    module_types: dict[str, str]  # name -> class name
    direct_params: dict[str, list[str]]  # module -> its own parameters' full names
    param_numel: dict[str, int]
    param_shape: dict[str, tuple]
    tied: list[tuple[str, ...]] = field(default_factory=list)  # parameters that share storage
    has_weights: bool = False
    model: object = None  # the meta-device module itself
    language: str = "model"  # the language model's module ("model.language_model" in a VL model)
    vision: str | None = None  # the vision tower's module ("model.visual"), None in a text model
    never_used: tuple = ()  # parameters the forward never reads, frozen at build (runtime.model.NEVER_USED)

    @property
    def model_type(self) -> str:
        return getattr(self.config, "model_type", "?")

    @property
    def text_config(self):
        """The language model's config (the config itself for a text model)."""
        return self.config.get_text_config()

    @property
    def kind(self) -> str:
        """text | vl: which data path, loop and export the model takes."""
        return "vl" if self.vision is not None else "text"

    @property
    def n_params(self) -> int:
        """Distinct parameters (a tied weight counts once)."""
        extra = sum(self.param_numel[q] for group in self.tied for q in group[1:])
        return sum(self.param_numel.values()) - extra

    def params_under(self, module: str) -> list[str]:
        prefix = module + "." if module else ""
        return [p for p in self.param_numel if p.startswith(prefix)]


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def config_dir(path: str | Path) -> Path:
    """The directory of a config file, or the directory itself (PathError when it cannot be probed)."""
    p = Path(path)
    return p.parent if paths.is_file(p) else p


def find_config(path: str | Path) -> Path:
    """The config.json a plan's `model.config` names, or ModelLoadError."""
    p = Path(path)
    try:
        if not paths.exists(p):
            hint = None
            if "/" in str(path) and not str(path).startswith((".", "/")):
                hint = ("model hubs are not reachable: download the model elsewhere and point `config` at the "
                        "local directory (config.json is enough for checks)")
            raise ModelLoadError(f"{path} does not exist", hint or "give a local HF config.json or a directory holding one")
        cfg = p / "config.json" if paths.is_dir(p) else p
        if not paths.is_file(cfg):
            raise ModelLoadError(f"{p} holds no config.json", "point `config` at an HF model directory or config file")
    except PathError as e:
        raise ModelLoadError(f"cannot use {elide(str(path))} as a model config: {e}",
                             "give a local HF config.json or a directory holding one") from None
    return cfg


def num_experts(config) -> int:
    """Routed experts per MoE layer of a transformers config (families name the key differently);
    0 for a dense model."""
    return next((int(v) for k in ("num_experts", "num_local_experts", "n_routed_experts")
                 if (v := getattr(config, k, None))), 0)


def load_config(path: str | Path, trust_remote_code: bool = False):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg_file = find_config(path)
    try:
        raw = json.loads(paths.read_text(cfg_file))
    except PathError as e:
        raise ModelLoadError(f"cannot read {cfg_file}: {e}", "fix the config file") from None
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError, or nesting too deep to read
        why = e if isinstance(e, ValueError) else "nested too deeply"
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {why}", "fix the config file") from None
    if isinstance(raw, dict) and raw.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(f"{cfg_file.parent} ships its own modeling code (auto_map in config.json); planc runs "
                             "it only when trusted", "read that code, then write `trust_remote_code = true` in the "
                             "model block (planc check and the script will both run it)", rule="remote-code")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(cfg_file.parent if cfg_file.name == "config.json" else cfg_file),
                                          trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many kinds for unknown model types
        raise ModelLoadError(f"transformers cannot read {cfg_file}: {_first_line(e)}",
                             "is `model_type` one transformers 5 knows?") from None


@lru_cache(maxsize=8)
def _tree_cached(path: str, attention: str, trust_remote_code: bool = False) -> ModelTree:
    import torch

    from runtime.model import auto_class, freeze_never_used

    config = load_config(path, trust_remote_code)
    cls = auto_class(config)
    try:
        # the module tree does not depend on the attention kernel, and flash_attention_2 need not be
        # installed where a plan is checked: build with sdpa
        with torch.device("meta"):
            model = cls.from_config(config, attn_implementation="sdpa", trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot build a model from {path}: {_first_line(e)}",
                             f"the config must describe a model {cls.__name__} knows (a causal LM, or a "
                             "vision-language model with a vision_config)") from None
    modules, types, direct = [], {}, {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name in types:
            continue
        modules.append(name)
        types[name] = type(mod).__name__
        direct[name] = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters(recurse=False)]
    numel, shape, by_id = {}, {}, {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        numel[pname] = p.numel()
        shape[pname] = tuple(p.shape)
        by_id.setdefault(id(p), []).append(pname)
    tied = [tuple(v) for v in by_id.values() if len(v) > 1]
    try:
        has_weights = paths.has_match(config_dir(path), "*.safetensors")
    except PathError:
        has_weights = False
    names = {id(m): n for n, m in model.named_modules()}
    language = names.get(id(model.get_decoder()), "model")
    visual = getattr(getattr(model, "model", None), "visual", None)
    vision = names.get(id(visual)) if visual is not None else None
    return ModelTree(config, Path(path), modules, types, direct, numel, shape, tied, has_weights, model,
                     language, vision, tuple(freeze_never_used(model)))


def load_tree(path: str | Path, attention: str = "sdpa", trust_remote_code: bool = False) -> ModelTree:
    return _tree_cached(str(path), attention, bool(trust_remote_code))


def match(tree: ModelTree, pattern: str) -> list[str]:
    """Module names matching a plan glob (the runtime's own matcher, so check and run agree)."""
    from runtime.parallel.globs import match_modules

    return match_modules(tree.modules, pattern)
