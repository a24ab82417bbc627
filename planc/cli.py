"""The `planc` command: check, explain, compile, fmt, verify (and the demo's data).

Exit status: 0 when the plan is valid (or the command did its job), 2 when the plan is invalid,
3 on an internal error (reported in one line, never as a traceback).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import args as A
from .diagnostics import printable, render, shorten


def _size(text: str) -> int:
    """Bytes of a --device-memory value (checked by planc.args.size when it was parsed)."""
    n = A.size_bytes(str(text))
    if n is None:
        raise ValueError(f"not a size: {text!r}")
    return n


def _print_diags(checked, stream=None) -> None:
    stream = stream or sys.stderr
    for d in checked.diagnostics:
        print(render(d, checked.source), file=stream)
        print(file=stream)


def cmd_check(args) -> int:
    from .frontend import check_file
    from .summary import summary_lines

    checked = check_file(args.plan, args.world, skip_files=args.skip_files)
    from .estimate.check import run as estimates  # per-rank memory, traffic, --dry-run (planc/estimate)

    rep = estimates(checked, dry_run=args.dry_run, device_memory=args.device_memory,
                    gpus_per_node=args.gpus_per_node)
    if args.json:
        out = {"ok": checked.ok, "diagnostics": [d.to_json() for d in checked.diagnostics]}
        if checked.ok:
            ctx = checked.ctx
            out["summary"] = {"plan": checked.plan.name, "world": ctx.world, "degrees": ctx.degrees,
                              "model_type": ctx.tree.model_type if ctx.tree else None,
                              "parameters": ctx.tree.n_params if ctx.tree else None}
        if rep is not None:
            from .explain import to_json

            out["estimate"] = to_json(checked, rep)
        print(json.dumps(out, indent=2))
        return 0 if checked.ok else 2
    _print_diags(checked)
    if not checked.ok:
        n = sum(d.severity == "error" for d in checked.diagnostics)
        print(f"{printable(args.plan)}: {n} error{'s' * (n != 1)}; the plan does not compose", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(checked, rep)))
    return 0


def cmd_explain(args) -> int:
    from .explain import cmd_explain as explain  # the body lives in planc/explain.py

    return explain(args)


def cmd_compile(args) -> int:
    from .emit import compile_plan

    return compile_plan(args.plan, args.output, args.world, skip_files=args.skip_files)


def cmd_fmt(args) -> int:
    from .fmt import fmt_file

    return fmt_file(args.plan, check=args.check)


def cmd_verify(args) -> int:
    from .verify import cmd_verify as verify  # the body lives in planc/verify.py

    return verify(args)


def cmd_demo_data(args) -> int:
    from .demo_assets import make_demo_assets

    paths = make_demo_assets(args.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="planc", description="Compile parallel training plans (.veo) into "
                                 "readable PyTorch training scripts.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="prove that a plan composes", description="Check a plan against its "
                       "rules and its real model (built on the meta device); print a summary or diagnostics.")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--world", type=A.count, help="the world size to check against (else the plan's own)")
    c.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    c.add_argument("--skip-files", action="store_true", help="do not read data and tokenizer files (a plan "
                   "checked away from the storage that holds them)")
    c.add_argument("--dry-run", action="store_true", help="build the plan on a fake process group of --world "
                   "ranks with the runtime's own functions and report every rank's shards")
    c.add_argument("--device-memory", type=A.size, metavar="SIZE", help="per-device memory budget, e.g. 80GiB: "
                   "error when a rank's estimate exceeds it")
    c.add_argument("--gpus-per-node", type=A.count, metavar="G", help="node size for placement warnings (else the "
                   "plan's mesh.gpus_per_node)")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("explain", help="show the mesh, per-rank memory and traffic", description="Lay the "
                       "plan's mesh out as rank groups and nodes, with per-rank memory and per-axis traffic.")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--world", type=A.count, help="the world size (else the plan's own)")
    c.add_argument("--gpus-per-node", type=A.count, metavar="G", help="node size (else the plan's mesh.gpus_per_node)")
    c.add_argument("--device-memory", type=A.size, metavar="SIZE", help="per-device memory budget, e.g. 80GiB")
    c.add_argument("--dry-run", action="store_true", help="also build it on a fake process group (as check)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--svg", metavar="FILE", help="also draw the mesh and the memory breakdown to FILE")
    c.set_defaults(func=cmd_explain)

    c = sub.add_parser("compile", help="write the training script", description="Check a plan, then write "
                       "its training script (default generated/<plan name>.py).")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("-o", "--output", help="where to write the script")
    c.add_argument("--world", type=A.count, help="the world size to check against")
    c.add_argument("--skip-files", action="store_true", help="do not read data and tokenizer files (a plan "
                   "compiled away from the storage that holds them)")
    c.set_defaults(func=cmd_compile)

    c = sub.add_parser("fmt", help="rewrite a plan in canonical layout", description="Rewrite a plan in "
                       "canonical layout, keeping its comments (idempotent).")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--check", action="store_true", help="only report whether the file is formatted (exit 1 if not)")
    c.set_defaults(func=cmd_fmt)

    from .verify import add_parser as add_verify

    add_verify(sub).set_defaults(func=cmd_verify)

    c = sub.add_parser("demo-data", help="make the demo's corpus and tokenizer", description="Write the "
                       "demo corpus (this Python's own stdlib sources, as jsonl) and train its tokenizer; "
                       "idempotent.")
    c.add_argument("out", nargs="?", default="data/demo", help="output directory (default data/demo)")
    c.set_defaults(func=cmd_demo_data)
    return ap


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):  # any text prints: a character the terminal cannot encode
        if hasattr(stream, "reconfigure"):   # (a lone surrogate from a file name) comes out escaped
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (2, after argparse printed it) or --help (0)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in planc, not in the plan: one line, never a traceback
        print(printable(f"planc: internal error: {type(e).__name__}: {shorten(str(e))} (please report this with the "
                        "plan)"), file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
