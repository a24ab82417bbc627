"""Source formats (read through HF datasets or line by line), format inference, bad records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from planc.demo_assets import make_demo_assets
from runtime.data import BadRecordError, Source, build_loader, infer_format, load_tokenizer, read_records
from runtime.vocab import SOURCE_FORMATS

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n", "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(make_demo_assets(REPO / "data" / "demo")["tokenizer"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import datasets

    d = tmp_path_factory.mktemp("formats")
    ds = datasets.Dataset.from_dict({"text": TEXTS, "n": [0, 1, 2]})
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(TEXTS)))
    (d / "a.json").write_text(json.dumps([{"text": t, "n": i} for i, t in enumerate(TEXTS)]))
    ds.to_parquet(str(d / "a.parquet"))
    ds.to_csv(str(d / "a.csv"), index=False)
    ds.save_to_disk(str(d / "disk"))
    (d / "txt").mkdir()
    for i, t in enumerate(TEXTS):
        (d / "txt" / f"{i}.txt").write_text(t)
    arrow = next((d / "disk").glob("*.arrow"))
    return {"jsonl": d / "a.jsonl", "json": d / "a.json", "parquet": d / "a.parquet", "csv": d / "a.csv",
            "hf_disk": d / "disk", "text": d / "txt", "arrow": arrow}


@pytest.mark.parametrize("fmt", SOURCE_FORMATS)
def test_every_format_reads_the_same_texts(files, fmt):
    path = files[fmt]
    assert infer_format(path) == fmt
    recs = list(read_records(Source(name=fmt, path=str(path))))
    assert [r.value["text"] for r in recs] == TEXTS
    assert [r.index for r in recs] == [0, 1, 2]
    assert all(r.error is None for r in recs)
    # rank split: every world-th record, by index
    assert [r.value["text"] for r in read_records(Source(name=fmt, path=str(path)), rank=1, world=2)] == [TEXTS[1]]


def test_format_errors(tmp_path):
    (tmp_path / "x.unknown").write_text("hi")
    with pytest.raises(ValueError, match="set `format`"):
        infer_format(tmp_path / "x.unknown")
    with pytest.raises(ValueError, match="kind must be"):
        Source(name="a", path="x.jsonl", kind="video")
    with pytest.raises(ValueError, match="weight"):
        Source(name="a", path="x.jsonl", weight=0)
    with pytest.raises(FileNotFoundError):
        list(read_records(Source(name="a", path=str(tmp_path / "missing.jsonl"))))


def bad_jsonl(path: Path) -> Path:
    lines = [
        json.dumps({"text": TEXTS[0]}),
        "{not json",                       # line 2: malformed
        json.dumps({"txt": "wrong field"}),  # line 3: missing field
        "",                                # blank line: layout, not a record
        json.dumps({"text": 5}),           # line 5: wrong type
        json.dumps({"text": "   "}),       # line 6: empty text
        json.dumps(["a list"]),            # line 7: not an object
        json.dumps({"text": TEXTS[1]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_are_skipped_counted_and_located(tmp_path, tok):
    path = bad_jsonl(tmp_path / "bad.jsonl")
    logs = []
    loader = build_loader([Source(name="web", path=str(path))], tok, max_len=64, micro_batch=1,
                          log=logs.append)
    assert loader.bad_records.tally() == {"web": {
        "unreadable record": 1, "missing field 'text'": 1, "field 'text' is not a str": 1,
        "empty text": 1, "not an object": 1}}
    reported = "\n".join(logs)
    for line in (2, 3, 5, 6, 7):
        assert f"{path}:{line}" in reported
    assert "2 documents" in reported  # the two good records survive
    next(iter(loader))


def test_bad_records_fail_policy(tmp_path, tok):
    path = bad_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(BadRecordError, match=f"{path}:2.*malformed JSON"):
        build_loader([Source(name="web", path=str(path))], tok, max_len=64, on_bad_record="fail",
                     log=lambda m: None)


def test_loader_over_parquet_and_text_folder(files, tok):
    for fmt in ("parquet", "text"):
        loader = build_loader([Source(name=fmt, path=str(files[fmt]))], tok, max_len=32, pack="none",
                              micro_batch=3, log=lambda m: None)
        (mb,) = next(iter(loader))
        assert mb["input_ids"].shape == (3, 32)
        assert (mb["input_ids"] == tok.eos_token_id).sum() == 3  # every document ends with EOS


def test_json_object_file_is_refused_and_json_lines_in_a_json_file_read(tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({"data": [{"text": "a"}]}, indent=2))
    with pytest.raises(ValueError, match="one JSON object"):
        list(read_records(Source(name="o", path=str(tmp_path / "obj.json"))))
    (tmp_path / "lines.json").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert [r.value["text"] for r in read_records(Source(name="l", path=str(tmp_path / "lines.json")))] == TEXTS


def test_checks_report_unusable_sources_and_estimate_the_mixture(files, tok, tmp_path):
    from runtime.data import check_sources, estimate_mixture, format_estimate

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": t}]}) + "\n" for t in TEXTS))
    good = [Source(name="code", path=str(files["parquet"]), weight=3), Source(name="chat", path=str(chat), kind="sft")]
    assert check_sources(good, tok, chat_template="chatml") == []
    errors = check_sources([
        Source(name="a", path=str(files["jsonl"]), text="body"),
        Source(name="b", path=str(tmp_path / "nope.jsonl")),
        Source(name="c", path=str(files["jsonl"]), format="parquet"),
        Source(name="d", path=str(files["jsonl"]), kind="sft"),
        Source(name="e", path=str(chat), kind="sft"),
    ], tok)  # the demo tokenizer has no chat template of its own
    assert len(errors) == 5
    assert "source 'a'" in errors[0] and "'body'" in errors[0] and "['n', 'text']" in errors[0]
    assert "source 'b'" in errors[1] and "does not exist" in errors[1]
    assert "source 'c'" in errors[2] and "cannot read" in errors[2]
    assert "source 'd'" in errors[3] and "'messages'" in errors[3]
    assert "chat_template = chatml" in errors[4]
    est = estimate_mixture(good, tok, max_len=64, pack="dynamic", global_batch=4, tokens=256, chat_template="chatml")
    assert est["capacity_tokens_per_step"] == 1024
    assert [round(p["share"], 2) for p in est["sources"]] == [0.75, 0.25]
    assert sum(p["tokens_per_step"] for p in est["sources"]) == pytest.approx(1024)
    assert 0 < est["target_tokens_per_step"] < 1024
    assert "share  75.0%" in format_estimate(est)


def test_rank_shares_of_json_lines_partition_the_records(tmp_path):
    """Each rank parses only its own lines, yet the shares are exactly the records of one reader,
    by index, with the same places and the same errors (bad and blank lines included)."""
    lines = [json.dumps({"text": t}) for t in TEXTS] + ["{broken", "", json.dumps({"text": "last"})]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    src = Source(name="m", path=str(path))
    whole = [(r.index, r.where, r.value, r.error) for r in read_records(src)]
    for world in (2, 3):
        shares = [[(r.index, r.where, r.value, r.error) for r in read_records(src, rank=k, world=world)]
                  for k in range(world)]
        assert sorted(x for share in shares for x in share) == sorted(whole, key=lambda x: x[0])
        assert all(x[0] % world == k for k, share in enumerate(shares) for x in share)
