"""SFT: chat templates through transformers, labels exactly on assistant tokens, truncation, bad
conversations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from planc.demo_assets import make_demo_assets
from runtime.data import Source, build_loader, load_tokenizer
from runtime.data.chat import CHATML, ChatEncoder, check_messages

REPO = Path(__file__).resolve().parents[1]
TOK = load_tokenizer(make_demo_assets(REPO / "data" / "demo")["tokenizer"])
# Real words for contents: identifiers and words from a stdlib module's own source.
WORDS = sorted(set(Path(json.__file__).read_text().split()))[:400]

# A template without {% generation %} that renders incrementally (Zephyr-like).
INCREMENTAL = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# A template that does not render incrementally: the last reply is tagged differently.
NON_INCREMENTAL = (
    "{% for m in messages %}{% if loop.last %}{{ '[final ' + m['role'] + ']\\n' }}{% else %}"
    "{{ '[' + m['role'] + ']\\n' }}{% endif %}{{ m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
)


def with_template(template):
    tok = load_tokenizer(make_demo_assets(REPO / "data" / "demo")["tokenizer"])
    tok.chat_template = template
    return tok


TOKS = {"incremental": with_template(INCREMENTAL), "non-incremental": with_template(NON_INCREMENTAL)}
content = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)


@st.composite
def conversations(draw):
    turns = draw(st.integers(1, 3))
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(content)})
    for _ in range(turns):
        msgs += [{"role": "user", "content": draw(content)}, {"role": "assistant", "content": draw(content)}]
    return msgs


SFT = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def targets(labels):
    return [int(t) for t in labels if t != -100]


@SFT
@given(conv=conversations())
def test_generation_template_labels_match_transformers_assistant_mask(conv):
    enc = ChatEncoder(TOK, "chatml", max_len=4096)
    ((ids, labels),) = enc.encode([check_messages(conv)])
    hf = TOK.apply_chat_template(conv, chat_template=CHATML, return_assistant_tokens_mask=True, return_dict=True)
    assert ids.tolist() == hf["input_ids"]
    mask = np.asarray(hf["assistant_masks"], dtype=bool)
    assert ((labels[:-1] != -100) == mask[1:]).all()  # label t is set iff token t+1 is the assistant's
    assert labels[-1] == -100 and not mask[0]


@SFT
@given(conv=conversations(), template=st.sampled_from(["incremental", "non-incremental"]))
def test_templates_without_generation_marks_label_replies_and_end_of_turn(conv, template):
    tok = TOKS[template]
    enc = ChatEncoder(tok, "tokenizer", max_len=4096)
    msgs = check_messages(conv)
    text, _ = enc.spans(msgs)
    assert (enc._incremental_spans(msgs, text) is None) == (template == "non-incremental")  # path taken
    ((ids, labels),) = enc.encode([msgs])
    assert ids.tolist() == tok.apply_chat_template(conv, tokenize=True, return_dict=False)
    # The targets, decoded, are exactly the replies with their end-of-turn marker (the incremental
    # render also keeps the newline the template writes after the turn). Both templates put a
    # newline before a reply, so no token straddles the prompt/reply boundary here; a token that
    # does (" Hello" after "assistant:") is labelled, as transformers' assistant mask does.
    tail = "</s>\n" if template == "incremental" else "</s>"
    expected = "".join(m["content"] + tail for m in conv if m["role"] == "assistant")
    assert tok.decode(targets(labels)) == expected


def test_system_prompt_and_truncation():
    conv = [{"role": "user", "content": " ".join(WORDS[:60])}, {"role": "assistant", "content": " ".join(WORDS[60:80])}]
    with_sys = check_messages(conv, system_prompt="You answer briefly.")
    assert with_sys[0] == {"role": "system", "content": "You answer briefly."}
    assert check_messages([{"role": "system", "content": "own"}] + conv, "ignored")[0]["content"] == "own"
    full_ids, full_labels = ChatEncoder(TOK, "chatml", max_len=4096).encode([conv])[0]
    n = len(full_ids)
    right_ids, right_labels = ChatEncoder(TOK, "chatml", max_len=n - 3, truncation="right").encode([conv])[0]
    assert right_ids.tolist() == full_ids[:n - 3].tolist()
    left_ids, left_labels = ChatEncoder(TOK, "chatml", max_len=n - 3, truncation="left").encode([conv])[0]
    assert left_ids.tolist() == full_ids[3:].tolist() and left_labels.tolist() == full_labels[3:].tolist()
    (dropped,) = ChatEncoder(TOK, "chatml", max_len=n - 3, truncation="drop").encode([conv])
    assert dropped.reason == "longer than max_len"
    (cut,) = ChatEncoder(TOK, "chatml", max_len=20, truncation="right").encode([conv])  # reply cut away
    assert cut.reason == "no assistant tokens within max_len"


def test_sft_source_in_the_loader_with_bad_conversations(tmp_path):
    good = [{"messages": [{"role": "user", "content": f"word {w}?"}, {"role": "assistant", "content": f"It is {w}."}]}
            for w in WORDS[:20]]
    bad = [
        {"messages": [{"role": "user", "content": "no reply"}]},             # no assistant turn
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # malformed message
        {"messages": "not a conversation"},                                   # not a list
        {"messages": []},                                                     # empty
        {"text": "no messages field"},                                        # missing field
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    logs = []
    loader = build_loader([Source(name="chat", path=str(path), kind="sft")], TOK, max_len=64, pack="greedy",
                          micro_batch=2, grad_accum=1, chat_template="chatml", log=logs.append)
    assert loader.bad_records.tally() == {"chat": {
        "no assistant turn": 1, "malformed message": 1, "messages is not a list": 1, "empty conversation": 1,
        "missing field 'messages'": 1}}
    assert f"{path}:21" in "\n".join(logs) and f"{path}:25" in "\n".join(logs)
    expected = sum(len(targets(ChatEncoder(TOK, "chatml", max_len=64).encode([check_messages(r["messages"])])[0][1]))
                   for r in good)
    got, it = 0, iter(loader)
    while loader.epoch == 0:
        got += sum(int((mb["labels"] != -100).sum()) for mb in next(it))
    assert got == expected
    with pytest.raises(ValueError, match="no chat template"):
        build_loader([Source(name="chat", path=str(path), kind="sft")], TOK, max_len=64, log=logs.append)
