"""`planc explain` and the estimate parts of `planc check`: rank groups in the runtime's order,
node-boundary warnings, the tables, --json for tools and the SVG picture."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from planc.cli import main

REPO = Path(__file__).resolve().parents[1]
LLAMA = str(REPO / "plans" / "llama3-70b.veo")


def test_explain_json(capsys):
    assert main(["explain", LLAMA, "--json", "--device-memory", "80GiB"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world"] == 256 and out["nodes"] == 32
    axes = out["axes"]
    assert axes["tp"]["groups"][0] == list(range(8)) and axes["tp"]["spans_nodes"] == 0  # tp inside a node
    assert axes["fsdp"]["groups"][0] == list(range(0, 128, 8))  # dp_shard ranks are tp apart
    assert axes["dp_replicate"]["groups"][0] == [0, 128]
    assert out["memory"][0]["ranks"] == list(range(256))
    assert out["memory"][0]["total"] < 80 * 2**30
    kinds = {(t["axis"], t["op"]) for t in out["traffic"]}
    assert {("fsdp", "all_gather"), ("fsdp", "reduce_scatter"), ("dp_replicate", "all_reduce"),
            ("tp", "all_reduce")} <= kinds
    assert out["per_axis"]["tp"]["bytes"] == sum(t["total"] for t in out["traffic"] if t["axis"] == "tp")


def test_explain_text_warns_when_tp_spans_nodes(capsys):
    assert main(["explain", LLAMA, "--gpus-per-node", "4"]) == 0  # a warning, not an error
    cap = capsys.readouterr()
    assert "warning[node-span]" in cap.err and "32 of 32 tp groups span nodes" in cap.err
    assert "rank grid" in cap.out and "memory per rank" in cap.out and "traffic per step" in cap.out
    assert "  r0 d0 s0        |   0   1   2   3   4   5   6   7   node 0" in cap.out


def test_explain_svg(tmp_path, capsys):
    svg = tmp_path / "moe.svg"
    assert main(["explain", str(REPO / "plans" / "qwen3-moe.veo"), "--svg", str(svg), "--device-memory", "80GiB"]) == 0
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert sum(t.startswith("rank ") for t in titles) == 64  # one cell per rank
    assert any(t.startswith("optim: ") for t in titles) and any(t.startswith("logits: ") for t in titles)
    assert "ep 8" in "".join(root.itertext())


def test_check_json_carries_the_estimate(capsys):
    plan = str(REPO / "plans" / "long-context.veo")
    assert main(["check", plan, "--skip-files", "--json", "--device-memory", "80GiB"]) == 0
    out = json.loads(capsys.readouterr().out)
    est = out["estimate"]
    assert est["degrees"]["sp"] == 8 and est["axes"]["sp"]["groups"][0] == list(range(8))
    assert {t["axis"] for t in est["traffic"]} == {"fsdp", "sp"}


def test_check_reports_a_budget_overrun(capsys):
    plan = str(REPO / "plans" / "long-context.veo")
    assert main(["check", plan, "--skip-files", "--json", "--device-memory", "24GiB"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"]
    d = next(d for d in out["diagnostics"] if d["rule"] == "memory-budget")
    # 128K-token rows: the logits weigh most, and max_len is the line to change
    text = Path(plan).read_text().splitlines()
    assert d["severity"] == "error" and text[d["line"] - 1].strip().startswith("max_len")
    assert "fused_ce" in d["help"]
