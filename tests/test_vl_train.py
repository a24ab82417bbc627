"""A vision-language training script in the generated scripts' shape (tests/mp/vl_train.py), end to
end on packed images, videos and text-only samples: FSDP2 on 2 processes, resumed from its step-3
checkpoint, on one process and with Ulysses SP=2 (the same global batches), and its HF export."""
import pytest
import torch

from conftest import run_python
from launch import REPO, torchrun
from runtime.metrics import read_metrics

import vlfix

SCRIPT = REPO / "tests/mp/vl_train.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("vl_train")
    data = vlfix.make_data(work / "data")
    common = ["--data.chat.path", data["chat"], "--data.tokenizer", data["tokenizer"]]
    out = {k: work / k for k in ("fsdp", "resumed", "one", "sp")}
    torchrun(SCRIPT, 2, common + ["--checkpoint.dir", out["fsdp"]], log_dir=work / "logs_fsdp")
    torchrun(SCRIPT, 2, common + ["--checkpoint.dir", out["resumed"], "--resume", out["fsdp"] / "step_3"],
             log_dir=work / "logs_resumed")
    run_python(SCRIPT, common + ["--checkpoint.dir", out["one"], "--mesh.dp_shard", "1"], log_dir=work / "logs_one")
    torchrun(SCRIPT, 2, common + ["--checkpoint.dir", out["sp"], "--mesh.dp_shard", "1", "--mesh.sp", "2"],
             log_dir=work / "logs_sp")
    return {k: read_metrics(v / "metrics.jsonl") for k, v in out.items()} | {"dirs": out, "data": data}


def series(records, key):
    return [r[key] for r in records]


@pytest.mark.multiproc
@pytest.mark.slow
def test_resume_continues_exactly(runs):
    full, resumed = runs["fsdp"], runs["resumed"]
    assert series(full, "step") == [1, 2, 3, 4, 5, 6]
    assert series(resumed, "step")[-3:] == [4, 5, 6]
    for key in ("loss", "grad_norm", "tokens"):
        assert series(resumed, key)[-3:] == series(full, key)[3:], key


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one", "sp"])
def test_layouts_match_fsdp(runs, layout):
    """One process and SP=2 see the same global batches and train the same model (fp32; AdamW
    amplifies last-bit differences of near-zero gradients over the steps, hence 1e-5)."""
    ref, got = runs["fsdp"], runs[layout]
    assert series(got, "tokens") == series(ref, "tokens")
    for key in ("loss", "grad_norm"):
        worst = max(abs(a - b) / abs(b) for a, b in zip(series(got, key), series(ref, key)))
        assert worst < 1e-5, (layout, key, worst)


@pytest.mark.multiproc
@pytest.mark.slow
def test_export_loads_with_its_processor(runs):
    from transformers import AutoModelForImageTextToText

    from runtime.data.multimodal import load_hf_processor

    hf = runs["dirs"]["fsdp"] / "hf"
    model = AutoModelForImageTextToText.from_pretrained(hf)
    proc = load_hf_processor(hf, model.config)
    assert proc.image_processor.size["longest_edge"] == 96 * 96
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = proc.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()
