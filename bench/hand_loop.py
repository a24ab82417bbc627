"""The hand-written loop bench/train_overhead.py measures generated scripts against, and what it
reads of a generated script to do the same work.

The loop is plain torch, transformers and peft, nothing from `runtime` in its steps: the model from
`from_config` under the plan's seed, activation checkpointing of each layer, `fully_shard` per layer
and the root on two processes (a plain model on one), AdamW with the same two weight-decay groups,
the same warmup + cosine schedule, `clip_grad_norm_`, the loss summed and divided by the global
target count (one all-reduce), the step's loss all-reduced for its log line. Its batches (and its
validation batches) come from the runtime's loaders with the script's settings, precomputed before
the clock starts, so both runs see the same rows.

It does what the script does, read from the script without executing it (`script_features`; the
plan's module globs are resolved to names with runtime.parallel.globs, before the clock):
- LoRA (`lora.LoraSpec(..., targets=[...])` in the script, rank/alpha/dropout from its SETTINGS):
  peft's `inject_adapter_in_model` on the same nn.Linear modules, the base frozen; the adapters start from
  the values the runtime draws (runtime.lora.adapter_init, set before the clock), so the losses of
  the two runs can be compared.
- activation offloading (`apply_activation_offload(model, [...])`): a `saved_tensors_hooks` pair
  around each matched module's forward, outside checkpointing's hooks and off during its
  recomputation, copying every saved tensor of at least the runtime's `min_bytes` that is not a
  parameter to host memory, back when backward needs it.
- validation (`validation.every` in SETTINGS): every `every` steps and after the last, the same
  held-out batches (built by runtime.validation.build_val_loader before the clock) in eval mode
  under no_grad, their summed token loss over their target count.
"""
from __future__ import annotations

import ast
import inspect
import json
import math
import os
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def demo_settings(script=REPO / "generated" / "demo.py") -> dict:
    """The SETTINGS dict of a generated script (generated/demo.py by default), read as a literal
    (nothing is executed)."""
    tree = ast.parse(Path(script).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SETTINGS":
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{script} has no SETTINGS dict")


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)


def script_features(script) -> dict:
    """What a generated script adds to the plain loop: `lora` (its target globs, or None),
    `offload` (the offloaded module globs, or None), `validation` (whether it validates)."""
    text = Path(script).read_text()
    found = {"lora": None, "offload": None}
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name == "LoraSpec":
            found["lora"] = list(ast.literal_eval(next(k.value for k in node.keywords if k.arg == "targets")))
        elif name == "apply_activation_offload":
            found["offload"] = list(ast.literal_eval(node.args[1]))
    return {**found, "validation": "validation.every" in demo_settings(script)}


def process_counters() -> dict:
    """This process's CPU time (user + system), system time and minor page faults so far: page
    faults show the allocator handing memory back and forth with the kernel, whatever the load."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": time.process_time(), "sys": ru.ru_stime, "faults": ru.ru_minflt}


def cosine_factor(step, steps, warmup, min_lr):
    """Peak-lr multiplier after `step` completed steps: linear warmup, then cosine to min_lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def loader_options(s: dict, world: int) -> dict:
    """The keywords the script passes to build_loader (and build_val_loader), from its settings."""
    dynamic = {"tokens": s["data.tokens"]} if s["data.pack"] == "dynamic" else {}
    return dict(max_len=s["data.max_len"], pack=s["data.pack"], micro_batch=s["train.micro_batch"],
                grad_accum=s["train.global_batch"] // (s["train.micro_batch"] * world), dp_size=world,
                log=lambda m: None, **dynamic)


def precomputed_batches(s: dict, steps: int, rank: int, world: int):
    """This rank's micro-batches of the first `steps` steps, from the loader the script uses."""
    from runtime.data import Source, build_loader, load_tokenizer

    src = Source(name="stdlib", path=s["data.stdlib.path"], format=s["data.stdlib.format"],
                 text=s["data.stdlib.text"])
    warmup = {"warmup_steps": s["data.warmup_steps"]} if s["data.pack"] == "dynamic" else {}
    loader = build_loader([src], load_tokenizer(s["data.tokenizer"]), dp_rank=rank, seed=s["train.seed"],
                          shuffle=s["data.shuffle"], **loader_options(s, world), **warmup)
    it = iter(loader)
    return [next(it) for _ in range(steps)]


def validation_batches(s: dict, rank: int, world: int):
    """This rank's validation micro-batches (the script's one held-out source)."""
    from runtime.data import Source, load_tokenizer
    from runtime.validation import build_val_loader

    (name,) = {k.split(".")[1] for k in s if k.startswith("validation.") and k.count(".") == 2}
    src = Source(name=name, path=s[f"validation.{name}.path"], format=s[f"validation.{name}.format"],
                 text=s[f"validation.{name}.text"])
    loader = build_val_loader([src], load_tokenizer(s["data.tokenizer"]), batches=s["validation.batches"],
                              dp_rank=rank, **loader_options(s, world))
    return list(loader)


def offload_saved_tensors(module, min_bytes: int) -> None:
    """Keep what autograd saves in `module`'s forward in host memory: hooks outside checkpointing's
    (prepended), off during its recomputation in backward."""
    import torch
    from torch import nn

    def pack(t):
        if isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter) or t.numel() * t.element_size() < min_bytes:
            return t
        return t.device, t.to("cpu", copy=True)

    def unpack(packed):
        return packed[1].to(packed[0]) if isinstance(packed, tuple) else packed

    active = []

    def enter(mod, args):
        ctx = None
        if torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:  # not a recomputation
            ctx = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
            ctx.__enter__()
        active.append(ctx)

    def leave(mod, args, output):
        ctx = active.pop()
        if ctx is not None:
            ctx.__exit__(None, None, None)

    module.register_forward_pre_hook(enter, prepend=True)
    module.register_forward_hook(leave, always_call=True)


def hand_worker(script: Path, steps: int, result: str, keep_memory: bool = False) -> None:
    """The minimal loop (run as `python` or under torchrun); rank 0 writes per-step records.
    `keep_memory`: configure malloc as runtime.dist.init does on CPU (runtime.host_memory)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed._composable import checkpoint
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    from runtime.dist import finish
    from runtime.parallel.globs import expand  # a plan's globs as module names (set-up, not a step)

    if keep_memory:
        from runtime.host_memory import keep_freed_memory
        keep_freed_memory()
    s, plan = demo_settings(script), script_features(script)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    batches = precomputed_batches(s, steps, rank, world)
    val_batches = validation_batches(s, rank, world) if plan["validation"] else []

    config = AutoConfig.from_pretrained(s["model.config"])
    config.use_cache = False
    torch.manual_seed(s["train.seed"])
    model = AutoModelForCausalLM.from_config(config, attn_implementation=s["model.attention"])
    if plan["lora"]:
        from peft import LoraConfig, inject_adapter_in_model

        from runtime.lora import adapter_init  # the adapters' start values only (see the docstring)
        targets = [n for n in expand(model, plan["lora"]) if isinstance(model.get_submodule(n), torch.nn.Linear)]
        inject_adapter_in_model(LoraConfig(r=s["lora.rank"], lora_alpha=s["lora.alpha"],
                                           lora_dropout=s["lora.dropout"], target_modules=targets), model)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        model.load_state_dict(adapter_init(model, s["train.seed"]), strict=False)
    for layer in model.model.layers:
        checkpoint(layer)
    if plan["offload"]:
        from runtime.parallel.offload import apply_activation_offload
        min_bytes = inspect.signature(apply_activation_offload).parameters["min_bytes"].default
        for name in expand(model, plan["offload"]):  # (the demo's globs match no nested modules)
            offload_saved_tensors(model.get_submodule(name), min_bytes)
    if world > 1:
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": s["train.weight_decay"]},
                             {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
                            lr=s["train.lr"], betas=tuple(s["train.betas"]), eps=s["train.eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: cosine_factor(
        i, steps, s["train.warmup"], s["train.min_lr"]))

    def validate() -> float:
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for micro_batches in val_batches:
                for mb in micro_batches:
                    logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], use_cache=False).logits
                    sums[0] += F.cross_entropy(logits.view(-1, logits.size(-1)), mb["labels"].view(-1), reduction="sum")
                    sums[1] += (mb["labels"] != -100).sum()
        if world > 1:
            dist.all_reduce(sums)
        model.train()
        return float(sums[0] / sums[1])

    records = []
    model.train()
    start = time.perf_counter()
    for step, micro_batches in enumerate(batches, 1):
        tokens = torch.tensor([sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)])
        if world > 1:
            dist.all_reduce(tokens)
        n = int(tokens[0])
        loss_sum = torch.zeros(())
        for mb in micro_batches:
            logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], use_cache=False).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), mb["labels"].view(-1), reduction="sum")
            (loss * world / n).backward()  # fully_shard averages gradients over the ranks
            loss_sum += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(trainable, s["train.clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(loss_sum)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        records.append({"loss": loss_sum.item() / n, "grad_norm": norm.item(), "tokens": n,
                        "elapsed": time.perf_counter() - start, **process_counters()})
        if plan["validation"] and (step % s["validation.every"] == 0 or step == steps):
            records[-1]["val_loss"] = validate()
    if rank == 0:
        Path(result).write_text(json.dumps(records))
    finish()  # barrier, then destroy (runtime.dist.finish says why)
