"""How long `planc check --dry-run` takes as the world grows: plans/llama3-70b.veo with more HSDP
replicas (tp 8 x dp_shard 16 per replica), global batch grown to keep whole micro-batches.

    python bench/dryrun_scale.py [REPLICAS ...]      (default 2 8 32: 256, 1024 and 4096 ranks)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(replicas) -> None:
    from planc.estimate import report
    from planc.frontend import check_file

    text = (REPO / "plans" / "llama3-70b.veo").read_text().replace('"plans/models/', f'"{REPO}/plans/models/')
    print(f"{'world':>6} {'check s':>8} {'dry run s':>10} {'estimates s':>12}")
    for r in replicas:
        plan = text.replace("dp_replicate = 2", f"dp_replicate = {r}").replace(
            "global_batch = 512", f"global_batch = {max(512, 32 * r)}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "llama3-70b.veo"
            path.write_text(plan)
            t0 = time.perf_counter()
            checked = check_file(str(path), skip_files=True)
            assert checked.ok, [d.message for d in checked.diagnostics]
            t1 = time.perf_counter()
            rep = report(checked, dry_run=True)
            t2 = time.perf_counter()
        print(f"{checked.ctx.world:>6} {t1 - t0:>8.1f} {rep.dry.seconds:>10.1f} {t2 - t1 - rep.dry.seconds:>12.1f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [2, 8, 32])
