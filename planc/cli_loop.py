"""`planc import` (another framework's config -> a plan) and `planc sample` (text from a trained
model): thin commands over planc/importer/ and runtime/sample.py."""
from __future__ import annotations

import argparse
import sys

from runtime.vocab import DEVICES, MASK_TOKEN

from . import args as A
from .diagnostics import printable


def cmd_import(args) -> int:
    from .importer import ImportError_, import_veomni

    # the options may also come after CONFIG, among the overrides of the YAML (`--train.seed 7`, `--x=y`)
    later = argparse.ArgumentParser(prog="planc import", add_help=False)
    _import_options(later)
    known, overrides = later.parse_known_args(args.overrides)
    for k in ("output", "world", "name"):
        setattr(args, k, getattr(known, k) or getattr(args, k))
    overrides = [x for x in overrides if x != "--"]
    try:
        result = import_veomni(args.config, overrides, name=args.name, world=args.world)
    except ImportError_ as e:
        print(printable(f"error: {e}"), file=sys.stderr)
        return 1
    for note in result.notes:  # what did not carry over: notes, not errors
        print(printable(str(note)), file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(result.text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(result.text)
    return 0


def cmd_sample(args) -> int:
    if args.block is not None:  # a block-diffusion model: block-by-block unmasking, not left-to-right
        from runtime.diffusion.sample import run as diffusion_run

        text = diffusion_run(args.path, args.prompt, block=args.block, max_new_tokens=args.max_new_tokens,
                             mask_token=args.mask_token, temperature=args.temperature, seed=args.seed,
                             config=args.config, tokenizer=args.tokenizer, device=args.device)
        print(args.prompt + text)
        return 0
    from runtime.sample import run

    text = run(args.path, args.prompt, config=args.config, tokenizer=args.tokenizer,
               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
               device=args.device)
    print(args.prompt + text)
    return 0


def _unit(text: str) -> float:
    x = A.positive(text)
    if x > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return x


def _temperature(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else A.positive(text)


def _import_options(c) -> None:
    c.add_argument("-o", "--output", help="write the plan here (default: stdout)")
    c.add_argument("--world", type=A.count, help="the world size the plan declares")
    c.add_argument("--name", help="the plan's name (default: from the config's file name)")


def add_commands(sub) -> None:
    c = sub.add_parser("import", help="turn a VeOmni YAML config into a plan", description="Convert a VeOmni "
                       "training config into a .veo plan (docs/import.md); what does not carry over is "
                       "printed as notes. Overrides of the YAML follow CONFIG: --train.optimizer.lr 2e-4 ...")
    _import_options(c)
    c.add_argument("config", help="the YAML config")
    c.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key VALUE overrides of the YAML")
    c.set_defaults(func=cmd_import)

    c = sub.add_parser("sample", help="continue a prompt with a trained model", description="Load an HF "
                       "export (out/NAME/hf) or a DCP checkpoint (out/NAME/step_N, with --config) and continue "
                       "--prompt; greedy unless --temperature is given.")
    c.add_argument("path", help="an HF model directory or a DCP checkpoint directory")
    c.add_argument("--prompt", default="", help="the text to continue")
    c.add_argument("--config", help="the model's HF config (needed for a DCP checkpoint)")
    c.add_argument("--tokenizer", help="the tokenizer directory (default: the one in PATH)")
    c.add_argument("--max-new-tokens", type=A.count, default=64, help="tokens to generate (default %(default)s)")
    c.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy (default)")
    c.add_argument("--top-p", type=_unit, default=1.0, help="nucleus sampling mass (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    c.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default cpu)")
    c.add_argument("--block", type=A.count, help="a block-diffusion model: its plan's train.block (the model then "
                   "unmasks block by block, most confident tokens first)")
    c.add_argument("--mask-token", default=MASK_TOKEN, help="a block-diffusion model's mask token (default "
                   "%(default)s)")
    c.set_defaults(func=cmd_sample)
