"""Demo data for CPU plans and tests: real text from the running Python's own standard library.

`make_demo_assets(out_dir)` writes `stdlib.jsonl` (one record per stdlib `.py` file), trains a
small byte-level BPE tokenizer on it, saved as an HF tokenizer directory, and writes
`stdlib_chat.jsonl` (conversations made from stdlib docstrings, for SFT). Nothing is downloaded and
nothing is committed: the text ships with Python itself. Run as `python -m planc.demo_assets [DIR]`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (concurrent first runs would race)
    fcntl = None

VOCAB_SIZE = 4096
# Ids must match plans/models/tiny-llama/config.json (pad 0, bos 1, eos 2). The two ChatML markers
# come next so that the built-in chat template tokenises to single tokens on the demo tokenizer.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
MAX_FILE_BYTES = 64 * 1024       # skip the few huge generated modules (pydecimal, unicode tables)
MAX_TOTAL_BYTES = 4 * 1024 * 1024  # a few MB: enough text for a real length distribution
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The stdlib `.py` files used, in a fixed order (by path)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(".py") and 0 < path.stat().st_size <= MAX_FILE_BYTES:
                found.append(path)
    # Pick by a hash of the relative path, not alphabetically, so the cap does not keep only the
    # first packages (encodings/, lib2to3/...); the choice is still the same on every run.
    ranked = sorted(found, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).digest())
    chosen, total = [], 0
    for path in ranked:
        size = path.stat().st_size
        if total + size > MAX_TOTAL_BYTES:
            continue
        chosen.append(path)
        total += size
    return sorted(chosen, key=lambda p: p.relative_to(root).as_posix())


def _jsonl_valid(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
        return isinstance(first.get("text"), str) and path.with_suffix(".done").exists()
    except (OSError, ValueError, AttributeError):
        return False


def _tokenizer_valid(tok_dir: Path) -> bool:
    try:
        cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
        vocab = json.loads((tok_dir / "tokenizer.json").read_text())["added_tokens"]
    except (OSError, ValueError, KeyError):
        return False
    ids = {t["content"]: t["id"] for t in vocab}
    return cfg.get("eos_token") == "</s>" and all(ids.get(t) == i for i, t in enumerate(SPECIAL_TOKENS))


def write_stdlib_jsonl(path: Path) -> int:
    """Write one {"text", "path"} record per chosen stdlib file; returns the record count."""
    root = Path(sysconfig.get_paths()["stdlib"])
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent test runs must not share a temp file
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for file in stdlib_files(root):
            text = file.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                f.write(json.dumps({"text": text, "path": file.relative_to(root).as_posix()}) + "\n")
                n += 1
    os.replace(tmp, path)  # never leave a half-written file that a later run would trust
    path.with_suffix(".done").write_text(f"{n}\n")
    return n


def stdlib_conversations(limit: int | None = None) -> list[dict]:
    """Chat records from stdlib docstrings: a user asks what a function does, the assistant answers
    with its docstring; a second turn asks for the signature. Real text, real length spread."""
    import ast

    root = Path(sysconfig.get_paths()["stdlib"])
    records = []
    for file in stdlib_files(root):
        module = file.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        try:
            tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            messages = [{"role": "user", "content": f"What does `{module}.{node.name}` do?"},
                        {"role": "assistant", "content": doc}]
            if len(records) % 3 == 0:  # every third conversation has a second turn
                messages += [{"role": "user", "content": "What is its signature?"},
                             {"role": "assistant", "content": f"def {node.name}({ast.unparse(node.args)})"}]
            records.append({"messages": messages, "path": f"{module}.{node.name}"})
            if limit is not None and len(records) >= limit:
                return records
    return records


def write_stdlib_chat(path: Path, limit: int = 4000) -> int:
    """Write stdlib_conversations() as JSON Lines; returns the record count."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    records = stdlib_conversations(limit)
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    return len(records)


def train_tokenizer(jsonl: Path, out: Path) -> None:
    """Train a byte-level BPE (vocab 4096) on the jsonl texts and save it as an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        with open(jsonl, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
    )
    tok.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:], model_max_length=1_000_000,
    )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fast.save_pretrained(str(tmp))
    if out.exists():  # another process finished first, or a stale invalid dir: replace it
        shutil.rmtree(out, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:  # lost a race to an identical tokenizer written by another process
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def make_demo_assets(out_dir: str | Path = "data/demo") -> dict[str, str]:
    """Create (or reuse when present and valid) the demo corpus and tokenizer; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, tok_dir = out / "stdlib.jsonl", out / "tokenizer"
    chat = out / "stdlib_chat.jsonl"
    with _locked(out / ".lock"):  # two processes making the same assets: one writes, one waits
        rebuilt = not _jsonl_valid(jsonl)
        if rebuilt:
            write_stdlib_jsonl(jsonl)
        if rebuilt or not _tokenizer_valid(tok_dir):
            train_tokenizer(jsonl, tok_dir)
        if rebuilt or not chat.exists():
            write_stdlib_chat(chat)
    return {"dir": str(out), "jsonl": str(jsonl), "tokenizer": str(tok_dir), "chat": str(chat)}


if __name__ == "__main__":
    paths = make_demo_assets(sys.argv[1] if len(sys.argv) > 1 else "data/demo")
    print(json.dumps(paths, indent=2))
