"""Shared fixtures: the demo corpus + tokenizer (from the stdlib, built once per session), tiny
model configs matching that tokenizer, and the overrides that point generated/demo.py at them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_LLAMA = {  # a few seconds per launch: hidden 32, 2 layers, 4 heads over 2 KV heads
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "vocab_size": 4096, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.02,
}
TINY_QWEN3 = {  # the other family, with tied embeddings (the lm_head is the embedding matrix)
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "vocab_size": 4096, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.02,
}


def write_config(directory: Path, config: dict) -> Path:
    """`directory/config.json` holding `config`; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> dict:
    """{"dir", "jsonl", "tokenizer"}: the stdlib corpus and its vocab-4096 tokenizer, made once."""
    from planc.demo_assets import make_demo_assets
    return make_demo_assets(tmp_path_factory.mktemp("demo_assets"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Directory with a tiny Llama config.json (vocab = the demo tokenizer's)."""
    return write_config(tmp_path_factory.mktemp("tiny_llama"), TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """Directory with a tiny Qwen3 config.json (tied embeddings)."""
    return write_config(tmp_path_factory.mktemp("tiny_qwen3"), TINY_QWEN3)


@pytest.fixture(scope="session")
def small_corpus(demo_assets) -> Path:
    """The first ~150 kB of records of the demo corpus: every rank of every launch tokenises its
    whole corpus at start-up, and short test runs need only a few thousand tokens."""
    src = Path(demo_assets["jsonl"])
    dst = src.with_name("stdlib_small.jsonl")
    if not dst.exists():
        lines, size = [], 0
        with open(src, encoding="utf-8") as f:
            for line in f:
                if size > 150_000:
                    break
                lines.append(line)
                size += len(line)
        dst.write_text("".join(lines), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def demo_overrides(demo_assets, small_corpus, tiny_llama) -> list[str]:
    """Overrides that make generated/demo.py a few-second run: tiny model, 64-token rows,
    global batch 8 in micro-batches of 2, a small slice of the corpus, the demo tokenizer."""
    return ["--model.config", str(tiny_llama),
            "--data.stdlib.path", str(small_corpus), "--data.tokenizer", demo_assets["tokenizer"],
            "--data.max_len", "64", "--train.global_batch", "8", "--train.micro_batch", "2"]


def run_python(script, args=(), *, log_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python script *args` from the repo root as one process (world 1, no torchrun);
    raise with its output on failure. Output is also kept in `log_dir/python.log`."""
    from planc.launch import pinned_env

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = pinned_env()  # as planc verify and tests/launch.py: one thread, deterministic algorithms
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    (log_dir / "python.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"python {script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def python_run():
    """`run_python` as a fixture: one-process runs of a script (see its docstring)."""
    return run_python
