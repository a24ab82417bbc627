"""The `planc` command: check, explain, compile, fmt, verify (and the demo's data).

This module parses the arguments and does the printing of every command; the modules it calls
return data (a Checked plan, a Report, text, the path written).

Exit status: 0 when the plan is valid (or the command did its job), 2 when the plan is invalid,
3 on an internal error (reported in one line, never as a traceback).
"""
from __future__ import annotations

import argparse
import json
import sys

from .diagnostics import render


def size_arg(text: str) -> int:
    """--device-memory: a size as plans write it (80GiB), in bytes."""
    from .parse import size_bytes

    try:
        return size_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def print_diagnostics(diagnostics, source, stream=None) -> None:
    stream = stream or sys.stderr
    for d in diagnostics:
        print(render(d, source), file=stream)
        print(file=stream)


def cmd_check(args) -> int:
    from .frontend import check_plan
    from .summary import summary_lines

    checked = check_plan(args.plan, args.world, skip_files=args.skip_files, device_memory=args.device_memory,
                         gpus_per_node=args.gpus_per_node, dry_run=args.dry_run)
    rep = checked.report  # per-rank memory, traffic, --dry-run (planc/estimate)
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
    print_diagnostics(checked.diagnostics, checked.source)
    if not checked.ok:
        n = sum(d.severity == "error" for d in checked.diagnostics)
        print(f"{args.plan}: {n} error{'s' * (n != 1)}; the plan does not compose", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(checked, rep)))
    return 0


def cmd_explain(args) -> int:
    from .explain import explain
    from .frontend import check_file

    checked = check_file(args.plan, args.world, skip_files=True)
    if not checked.ok:
        print_diagnostics(checked.diagnostics, checked.source)
        print(f"{args.plan}: the plan does not compose; `planc check` says why", file=sys.stderr)
        return 2
    out, rep = explain(checked, gpus_per_node=args.gpus_per_node, device_memory=args.device_memory,
                       as_json=args.json, dry_run=args.dry_run)
    if args.svg:
        from .draw import svg

        with open(args.svg, "w", encoding="utf-8") as f:
            f.write(svg(checked, rep))
    if not args.json:
        print_diagnostics(rep.diagnostics, checked.source)
    print(out)
    if args.svg:
        print(f"wrote {args.svg}", file=sys.stderr)
    return 2 if any(d.severity == "error" for d in rep.diagnostics) else 0


def cmd_compile(args) -> int:
    from .emit import write_script
    from .frontend import check_plan

    checked = check_plan(args.plan, args.world, skip_files=args.skip_files, device_memory=args.device_memory,
                         gpus_per_node=args.gpus_per_node)
    print_diagnostics(checked.diagnostics, checked.source)
    if not checked.ok:
        print(f"{args.plan}: the plan does not compose; nothing written", file=sys.stderr)
        return 2
    out, changed = write_script(checked, args.output)
    print(f"wrote {out}" if changed else f"{out} is up to date")
    return 0


def cmd_fmt(args) -> int:
    from .diagnostics import PlanError
    from .fmt import format_file
    from .parse import source_for_diagnostics

    try:
        old, new = format_file(args.plan)
    except PlanError as e:
        source = source_for_diagnostics(args.plan)
        for d in e.diagnostics:
            print(render(d, source), file=sys.stderr)
        return 2
    if new == old:
        return 0
    if args.check:
        print(f"{args.plan}: not formatted (run `planc fmt {args.plan}`)", file=sys.stderr)
        return 1
    with open(args.plan, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"formatted {args.plan}")
    return 0


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
    c.add_argument("--world", type=int, help="the world size to check against (else the plan's own)")
    c.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    c.add_argument("--skip-files", action="store_true", help="do not read data and tokenizer files (a plan "
                   "checked away from the storage that holds them)")
    c.add_argument("--dry-run", action="store_true", help="build the plan on a fake process group of --world "
                   "ranks with the runtime's own functions and report every rank's shards")
    c.add_argument("--device-memory", metavar="SIZE", type=size_arg, help="per-device memory budget, e.g. 80GiB: "
                   "error when a rank's estimate exceeds it")
    c.add_argument("--gpus-per-node", type=int, metavar="G", help="node size for placement warnings (else the "
                   "plan's mesh.gpus_per_node)")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("explain", help="show the mesh, per-rank memory and traffic", description="Lay the "
                       "plan's mesh out as rank groups and nodes, with per-rank memory and per-axis traffic.")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--world", type=int, help="the world size (else the plan's own)")
    c.add_argument("--gpus-per-node", type=int, metavar="G", help="node size (else the plan's mesh.gpus_per_node)")
    c.add_argument("--device-memory", metavar="SIZE", type=size_arg, help="per-device memory budget, e.g. 80GiB")
    c.add_argument("--dry-run", action="store_true", help="also build it on a fake process group (as check)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--svg", metavar="FILE", help="also draw the mesh and the memory breakdown to FILE")
    c.set_defaults(func=cmd_explain)

    c = sub.add_parser("compile", help="write the training script", description="Check a plan as `planc check` "
                       "does (the same rules and estimates; not --dry-run), then write its training script "
                       "(default generated/<plan name>.py).")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("-o", "--output", help="where to write the script")
    c.add_argument("--world", type=int, help="the world size to check against")
    c.add_argument("--skip-files", action="store_true", help="do not read data and tokenizer files (a plan "
                   "compiled away from the storage that holds them)")
    c.add_argument("--device-memory", metavar="SIZE", type=size_arg, help="per-device memory budget, e.g. 80GiB: "
                   "refuse to compile when a rank's estimate exceeds it")
    c.add_argument("--gpus-per-node", type=int, metavar="G", help="node size for placement warnings (else the "
                   "plan's mesh.gpus_per_node)")
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
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in planc, not in the plan: one line, never a traceback
        print(f"planc: internal error: {type(e).__name__}: {e} (please report this with the plan)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
