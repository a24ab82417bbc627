"""What `planc verify` prints and writes (--json): the set-up, then per layout and dtype the
step-by-step losses and gradient norms against one process, the worst relative differences
against the dtype's tolerance and what they mean, the HF export check, and the verdict."""
from __future__ import annotations

import json
from pathlib import Path

from .. import launch
from .runs import Batch

LAST_BIT = ("a last-bit effect of fp32 rounding (different summation orders, amplified by e.g. Adam "
            "on a gradient entry that is mostly rounding, or an MoE router near-tie), not a layout error")


def print_header(plan_path: str, plan, description: str, lines: dict[str, list[str]], work: Path, kept: bool):
    print(f"planc verify {plan_path}: plan {plan.name!r}, {description}")
    for kind, texts in lines.items():
        for text in texts:
            print(f"  {kind:<9} {text}")
    print(f"  {'pinned':<9} {launch.pinned_text()} (threads, torch's deterministic algorithms) in every run")
    print(f"  {'files':<9} {work}" + ("" if kept else " (removed at the end; --keep DIR keeps them)"))


def table(run: dict, ref: dict, nproc: int) -> str:
    head = (f"  {'step':>4}  {f'loss ({nproc} procs)':>18}  {'loss (1 proc)':>18}  {'rel diff':>8}"
            f"  {f'grad norm ({nproc} procs)':>23}  {'grad norm (1 proc)':>18}  {'rel diff':>8}")
    lines = [head]
    for i, (a, b, c, d) in enumerate(zip(run["losses"], ref["losses"], run["grad_norms"], ref["grad_norms"])):
        lines.append(f"  {i + 1:>4}  {a:>18.12g}  {b:>18.12g}  {run['loss_rel'][i]:>8.1e}"
                     f"  {c:>23.12g}  {d:>18.12g}  {run['grad_norm_rel'][i]:>8.1e}")
    return "\n".join(lines)


def print_results(b: Batch, tolerances: dict[str, float], verdict: str) -> None:
    print(f"\nreference: one process, no parallel steps ({b.paths['reference']})")
    for entry in b.results:
        print(f"\n{entry['label']} vs one process:")
        for dtype in b.dtypes:
            run, ref = entry["runs"].get(dtype, {}), b.refs.get(dtype, {})
            if "loss_rel" not in run:
                continue
            role = "the verdict" if dtype == verdict else "reported"
            print(f"  {dtype} ({role}):")
            print(table(run, ref, entry["world"]))
            print(f"  worst relative difference in {dtype}: loss {run['worst_loss_rel']:.1e}, grad norm "
                  f"{run['worst_grad_norm_rel']:.1e} (tolerance {tolerances[dtype]:g}): "
                  f"{_meaning(entry, dtype, verdict)}" + _speed(run, ref, entry["world"], dtype == b.speed_dtype))
            ex = run.get("export")
            if ex:
                print(f"  HF export ({dtype}): loads with from_pretrained on one process; its {ex['tensors']} tensors "
                      f"{'equal' if not ex['problems'] else 'DIFFER from'} the layout's {ex['checkpoint']} "
                      f"checkpoint" + "".join(f"\n    {p}" for p in ex["problems"]))


def _meaning(entry: dict, dtype: str, verdict: str) -> str:
    run = entry["runs"][dtype]
    if dtype == verdict:
        return "OK" if run["within"] else "FAILED"
    if run["within"]:
        return "within it"
    if run["last_bit"]:
        v = entry["runs"][verdict]
        return f"above it, but {verdict} agrees to {max(v['worst_loss_rel'], v['worst_grad_norm_rel']):.1e}: {LAST_BIT}"
    return "above it"


def _speed(run: dict, ref: dict, world: int, shown: bool) -> str:
    """tokens/s (median over steps 2..N, rank 0's wall clock; noisy on a shared CPU)."""
    if not shown or not run.get("tokens_per_s"):
        return ""
    out = f"; {run['tokens_per_s']:,.0f} tokens/s"
    if ref.get("tokens_per_s"):
        out += f" ({run['tokens_per_s'] / ref['tokens_per_s']:.2f}x one process"
        if run.get("baseline_tokens_per_s"):
            out += f", {run['tokens_per_s'] / run['baseline_tokens_per_s']:.2f}x FSDP2 alone on {world}"
        out += ")"
    return out


def print_verdict(plan, b: Batch, ok: bool, tolerances: dict[str, float], verdict: str) -> None:
    what = "trains like one process in every layout run" if ok else "; ".join(b.problems)
    also = [d for d in b.dtypes if d != verdict]
    beside = f"; {', '.join(also)} figures reported beside it" if also else ""
    print(f"\n{'OK' if ok else 'FAILED'}: {plan.name}: {what} ({verdict} verdict, tolerance "
          f"{tolerances[verdict]:g}, {b.steps} steps{beside})")


def write_json(path: str | None, plan, b: Batch, ok: bool, tolerances: dict[str, float], verdict: str) -> None:
    if not path:
        return
    out = {"plan": plan.name, "ok": ok, "verdict_dtype": verdict, "dtypes": b.dtypes, "tolerances": tolerances,
           "steps": b.steps, "pinned": dict(launch.PINNED), "problems": b.problems, "reference": b.refs,
           "layouts": b.results}
    Path(path).write_text(json.dumps(out, indent=1, default=str))
