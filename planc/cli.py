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

from . import args as A
from .diagnostics import printable, render, shorten
from .paths import reason


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
        print(f"{printable(args.plan)}: {n} error{'s' * (n != 1)}; the plan does not compose", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(checked, rep)))
    return 0


def cmd_explain(args) -> int:
    from .estimate import TooLarge
    from .explain import explain
    from .frontend import check_file

    checked = check_file(args.plan, args.world, skip_files=True)
    if not checked.ok:
        print_diagnostics(checked.diagnostics, checked.source)
        print(f"{printable(args.plan)}: the plan does not compose; `planc check` says why", file=sys.stderr)
        return 2
    try:
        out, rep = explain(checked, gpus_per_node=args.gpus_per_node, device_memory=args.device_memory,
                           as_json=args.json, dry_run=args.dry_run)
    except TooLarge as e:
        print(f"planc explain: {printable(args.plan)}: {e}", file=sys.stderr)
        return 2
    if args.svg:
        from .draw import svg

        try:
            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(svg(checked, rep))
        except (OSError, ValueError) as e:
            print(f"planc explain: cannot write {printable(args.svg)}: {reason(e, args.svg)}", file=sys.stderr)
            return 2
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
        print(f"{printable(args.plan)}: the plan does not compose; nothing written", file=sys.stderr)
        return 2
    if args.output is not None:
        try:
            args.output.encode("utf-8")  # the script names its own path: a name that is not text cannot be
        except UnicodeError:            # written into it
            print(f"planc compile: -o {printable(args.output)}: the name is not UTF-8 text", file=sys.stderr)
            return 2
    try:
        out, changed = write_script(checked, args.output)
    except (OSError, ValueError) as e:  # -o names a directory, an unwritable place, a bad name
        print(f"planc compile: cannot write {printable(args.output)}: {reason(e, args.output)}", file=sys.stderr)
        return 2
    print(f"wrote {printable(out)}" if changed else f"{printable(out)} is up to date")
    return 0


def cmd_fmt(args) -> int:
    from .diagnostics import PlanError
    from .fmt import format_file

    try:
        old, new = format_file(args.plan)
    except PlanError as e:
        for d in e.diagnostics:
            print(render(d, e.source), file=sys.stderr)
        return 2
    if new == old:  # as written: a byte-order mark or CR line ends are rewritten too
        return 0
    shown = printable(args.plan)
    if args.check:
        print(f"{shown}: not formatted (run `planc fmt {shown}`)", file=sys.stderr)
        return 1
    try:
        with open(args.plan, "w", encoding="utf-8") as f:
            f.write(new)
    except OSError as e:
        print(f"planc fmt: cannot write {shown}: {reason(e, args.plan)}", file=sys.stderr)
        return 2
    print(f"formatted {shown}")
    return 0


def cmd_verify(args) -> int:
    from .verify import PlanInvalid, VerifyOptions, verify  # the body lives in planc/verify/

    opts = VerifyOptions(
        plan=args.plan, max_procs=args.max_procs, layouts=tuple(args.layout or ()), steps=args.steps,
        dtype=args.dtype, tolerance=args.tolerance, plan_tolerance=args.plan_tolerance, data=args.data,
        demo_data=args.demo_data, baseline=args.baseline, keep=args.keep, json=args.json, timeout=args.timeout)
    try:
        return verify(opts)
    except PlanInvalid as e:
        print(f"planc verify: {e}", file=sys.stderr)
        return 2


def _add_verify(sub) -> None:
    import textwrap

    from .verify import DTYPE_MODES, VerifyOptions

    d = VerifyOptions(plan="")  # the defaults

    about = (
        "Shrink the plan's model, run its layout (or the largest sub-layout that fits --max-procs) on gloo "
        "processes and one plain process on the same global batches, and compare per-step losses and gradient "
        "norms; with `export = hf`, also load each layout's export on one process.",
        "Every run is made twice (--dtype both): in fp64, the verdict (--tolerance), where a layout's other "
        "summation order agrees with one process to ~1e-15, so a difference is a layout error; and in the "
        "plan's dtype (fp32 on CPU), reported beside it (--plan-tolerance), where a last-bit difference can "
        "grow (Adam on a gradient entry that is mostly rounding, an MoE router near-tie): the report says so "
        "when fp32 is off but fp64 agrees. Threads and torch's deterministic algorithms are pinned in every run.",
        "Exit 0 when the verdict is within its tolerance in every layout, 1 otherwise (or when a run fails), "
        "2 for an invalid plan or option.")
    c = sub.add_parser("verify", help="prove a plan's numerics on this CPU against one process",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="\n\n".join(textwrap.fill(p, 100) for p in about))
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--max-procs", type=A.count, default=d.max_procs, metavar="N",
                   help="most processes a layout may use on this machine (default %(default)s)")
    c.add_argument("--layout", action="append", metavar="DIM=N,...",
                   help="run this layout instead (e.g. dp_shard=1,tp=2); repeat for several, which share "
                        "the reference runs")
    c.add_argument("--steps", type=A.count, default=d.steps, help="optimizer steps (default %(default)s)")
    c.add_argument("--dtype", choices=tuple(DTYPE_MODES), default=d.dtype,
                   help="both (default): fp64 runs decide, the plan's dtype (fp32 on CPU) is reported beside "
                        "them; fp64: the fp64 runs only; plan: the plan's dtype only, judged against "
                        "--plan-tolerance")
    c.add_argument("--tolerance", type=A.positive, default=d.tolerance,
                   help="worst relative difference allowed in fp64, per step, in loss and gradient norm "
                        "(default %(default)g)")
    c.add_argument("--plan-tolerance", type=A.positive, default=d.plan_tolerance,
                   help="the same for the plan's dtype (default %(default)g)")
    c.add_argument("--data", choices=("auto", "plan", "demo"), default=d.data,
                   help="auto: the plan's own data when it is on this machine, else the demo corpus")
    c.add_argument("--demo-data", default=d.demo_data, metavar="DIR",
                   help="where the demo corpus and tokenizer are (default data/demo; made in the temp dir "
                        "if missing)")
    c.add_argument("--baseline", action="store_true",
                   help="also run FSDP2 alone on each layout's process count, for tokens/s relative to it")
    c.add_argument("--keep", metavar="DIR", help="write everything to DIR (empty or new) and keep it")
    c.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    c.add_argument("--timeout", type=A.positive, default=d.timeout, help="seconds allowed per run (default %(default)g)")
    c.set_defaults(func=cmd_verify)


def cmd_demo_data(args) -> int:
    if args.vl:  # real photographs (scikit-image's samples) and a video panned over one of them
        from .demo_vl_assets import make_vl_demo_assets

        paths = make_vl_demo_assets(args.out or "data/vl_demo")
    elif args.omni:  # real recordings (CPython's test/audiodata, or espeak-ng speech)
        from .demo_omni_assets import make_omni_demo_assets

        paths = make_omni_demo_assets(args.out or "data/omni_demo")
    elif args.diffusion:  # the demo's assets plus tokenizer-mask/ (the tokenizer with <|mask|>)
        from .demo_diffusion import make_diffusion_demo

        paths = make_diffusion_demo(args.out or "data/demo")
    else:
        from .demo_assets import make_demo_assets

        paths = make_demo_assets(args.out or "data/demo")
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

    c = sub.add_parser("compile", help="write the training script", description="Check a plan as `planc check` "
                       "does (the same rules and estimates; not --dry-run), then write its training script "
                       "(default generated/<plan name>.py).")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("-o", "--output", help="where to write the script")
    c.add_argument("--world", type=A.count, help="the world size to check against")
    c.add_argument("--skip-files", action="store_true", help="do not read data and tokenizer files (a plan "
                   "compiled away from the storage that holds them)")
    c.add_argument("--device-memory", metavar="SIZE", type=A.size, help="per-device memory budget, e.g. 80GiB: "
                   "refuse to compile when a rank's estimate exceeds it")
    c.add_argument("--gpus-per-node", type=A.count, metavar="G", help="node size for placement warnings (else the "
                   "plan's mesh.gpus_per_node)")
    c.set_defaults(func=cmd_compile)

    c = sub.add_parser("fmt", help="rewrite a plan in canonical layout", description="Rewrite a plan in "
                       "canonical layout, keeping its comments (idempotent).")
    c.add_argument("plan", help="the .veo plan")
    c.add_argument("--check", action="store_true", help="only report whether the file is formatted (exit 1 if not)")
    c.set_defaults(func=cmd_fmt)

    _add_verify(sub)
    from .cli_loop import add_commands  # import, sample

    add_commands(sub)

    c = sub.add_parser("demo-data", help="make the demo's corpus and tokenizer", description="Write the "
                       "demo corpus (this Python's own stdlib sources, as jsonl) and train its tokenizer; "
                       "idempotent.")
    c.add_argument("out", nargs="?", help="output directory (default data/demo, or data/vl_demo with --vl)")
    c.add_argument("--omni", action="store_true", help="the Omni demo's conversations about real recordings "
                   "(CPython's test/audiodata, else espeak-ng speech) and their tokenizer")
    c.add_argument("--vl", action="store_true", help="the vision-language demo's conversations about real "
                   "photographs (needs the vl-demo extra: scikit-image), a video, and their tokenizer")
    c.add_argument("--diffusion", action="store_true", help="also the block-diffusion demo's tokenizer with a "
                   "mask token (DIR/tokenizer-mask)")
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
