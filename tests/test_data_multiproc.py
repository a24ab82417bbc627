"""The loader under torchrun (2 gloo ranks), one launch for all checks: the same global batch as one
process, equal micro-batch counts with dynamic batching (a collective per micro-batch would hang
otherwise), identical state on every rank, streaming tallies summed over ranks, and nothing printed
by rank 1. This file is also the script torchrun runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rows(step):
    return [r.tolist() for mb in step for r in mb["input_ids"]]


def main(demo_dir: str, data_dir: str, out: str):
    import torch
    import torch.distributed as dist

    from runtime.data import Source, build_loader, load_tokenizer
    from runtime.dist import finish

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = load_tokenizer(f"{demo_dir}/tokenizer")
    code = Source(name="code", path=f"{data_dir}/code.jsonl")
    chat = Source(name="chat", path=f"{data_dir}/chat.jsonl", kind="sft", streaming=True)
    result = {}

    def gathered(obj):
        objs = [None] * world
        dist.all_gather_object(objs, obj)
        return objs

    for pack, mb, kw in [("greedy", 2, {}), ("dynamic", 1, {"tokens": 512, "warmup_steps": 2})]:
        ld = build_loader([code], tok, max_len=128, pack=pack, micro_batch=mb, grad_accum=2,
                          dp_rank=rank, dp_size=world, seed=3, **kw)
        it = iter(ld)
        mine = []
        for _ in range(4):
            step = next(it)
            for m in step:  # one collective per micro-batch, like a backward pass under FSDP
                t = torch.tensor([float((m["labels"] != -100).sum())])
                dist.all_reduce(t)
            mine.append(rows(step))
        states = gathered(ld.state_dict())
        per_rank = gathered(mine)
        if rank == 0:
            ref = build_loader([code], tok, max_len=128, pack=pack, micro_batch=mb, grad_accum=2 * world,
                               seed=3, log=lambda m: None, **kw)
            rit = iter(ref)
            expect = [rows(next(rit)) for _ in range(4)]
            union = [[row for r in range(world) for row in per_rank[r][s]] for s in range(4)]
            result[pack] = {"same_global_batch": union == expect,
                            "same_state": all(s == states[0] for s in states)}

    ld = build_loader([code, chat], tok, max_len=128, pack="dynamic", tokens=512, grad_accum=2,
                      dp_rank=rank, dp_size=world, chat_template="chatml", shuffle_buffer=64)
    it = iter(ld)
    counts = []
    for _ in range(5):
        step = next(it)
        counts.append(len(step))
        for m in step:
            dist.all_reduce(torch.tensor([1.0]))
    tally = ld.tally()  # a collective in local mode
    counts = gathered(counts)
    if rank == 0:
        result["streaming"] = {"equal_counts": all(c == counts[0] for c in counts), "tally": tally}
        Path(out).write_text(json.dumps(result))
    finish()  # barrier, then destroy (runtime.dist.finish says why)


@pytest.mark.multiproc
def test_loader_under_torchrun(tmp_path):
    from launch import torchrun
    from planc.demo_assets import make_demo_assets

    demo = make_demo_assets(REPO / "data" / "demo")
    for name, src, every in [("code.jsonl", demo["jsonl"], 6), ("chat.jsonl", demo["chat"], 5)]:
        with open(src) as f:  # slices of the real corpora keep the launch short
            (tmp_path / name).write_text("".join(line for i, line in enumerate(f) if i % every == 0))
    out = tmp_path / "result.json"
    torchrun(Path(__file__), 2, [demo["dir"], tmp_path, out], log_dir=tmp_path / "logs")
    result = json.loads(out.read_text())
    assert result["greedy"] == {"same_global_batch": True, "same_state": True}
    assert result["dynamic"] == {"same_global_batch": True, "same_state": True}
    assert result["streaming"]["equal_counts"] and result["streaming"]["tally"] == {}
    rank1 = [p for p in (tmp_path / "logs").rglob("stdout.log") if p.parent.name == "1"]
    rank0 = [p for p in (tmp_path / "logs").rglob("stdout.log") if p.parent.name == "0"]
    assert rank1 and rank0 and "[data]" in rank0[0].read_text()
    assert rank1[0].read_text() == ""  # non-zero ranks print nothing


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1], sys.argv[2], sys.argv[3])
