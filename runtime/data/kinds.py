"""Record kinds -> documents: token ids and already-shifted labels.

A document is a pair of int32 arrays of equal length: `ids`, and `labels` where `labels[t]` is the
target of input `t` (-100 where there is none; always -100 at the last position, so no label ever
points past the document). Documents never exceed `max_len`.

`pretrain`: text -> ids (+ EOS). A longer text is split into chunks of at most `max_len` that
overlap by one token, so every next-token target of the text is kept, exactly once.
`sft`: see `chat.py`; labels only on assistant tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..vocab import IGNORE
from .labels import shifted_labels


def load_tokenizer(path: str):
    """An HF tokenizer from a local directory (tokenizer.json); it must define an EOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {path}: no eos_token; pretraining text needs one to end documents")
    return tok


def pad_id(tok) -> int:
    """Padding id: the tokenizer's pad token, else EOS (padding is never a target either way)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def tokenize_texts(tok, texts: Sequence[str], batch: int = 512) -> list[list[int]]:
    """Token ids of each text plus EOS, in batches through the fast tokenizer.

    Special-token strings inside raw text (say a literal "</s>" in a source file) are split as plain
    text, so data cannot inject control tokens."""
    eos = tok.eos_token_id
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        enc = tok(list(texts[i:i + batch]), add_special_tokens=True, split_special_tokens=True,
                  return_attention_mask=False)["input_ids"]
        for ids in enc:
            if not ids or ids[-1] != eos:
                ids = list(ids) + [eos]
            out.append(ids)
    return out


def split_document(ids: Sequence[int], max_len: int) -> list[np.ndarray]:
    """Chunks of at most max_len tokens, consecutive chunks sharing one token (the last input of
    one is the first of the next), so no target is lost at a split."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    ids = np.asarray(ids, dtype=np.int32)
    if len(ids) <= max_len:
        return [ids]
    step = max_len - 1
    return [ids[s:s + max_len] for s in range(0, len(ids) - 1, step)]


class DocStore:
    """Documents of one source, addressable by a dense id; `record[i]` is the index of the source
    record document i came from."""

    def __init__(self):
        self.ids: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.record: list[int] = []

    def add(self, ids: np.ndarray, labels: np.ndarray, record: int) -> None:
        self.ids.append(np.asarray(ids, dtype=np.int32))
        self.labels.append(np.asarray(labels, dtype=np.int32))
        self.record.append(record)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def targets(self) -> int:
        return int(sum(int((lab != IGNORE).sum()) for lab in self.labels))


def pretrain_documents(ids: Sequence[int], max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) chunks of one tokenised text."""
    return [(c, shifted_labels(c)) for c in split_document(ids, max_len)]


def _field(rec, name: str, kind: type, source, bad) -> object | None:
    """rec.value[name] if present and of `kind`; otherwise records why and returns None."""
    if rec.error is not None:
        bad.add(source.name, rec.where, "unreadable record", rec.error)
        return None
    if not isinstance(rec.value, dict):
        bad.add(source.name, rec.where, "not an object", type(rec.value).__name__)
        return None
    if name not in rec.value or rec.value[name] is None:
        bad.add(source.name, rec.where, f"missing field {name!r}")
        return None
    value = rec.value[name]
    if not isinstance(value, kind):
        bad.add(source.name, rec.where, f"field {name!r} is not a {kind.__name__}", type(value).__name__)
        return None
    return value


class DocMaker:
    """Records of one source -> documents, by the source's kind; bad records go to `bad`.

    `make(records)` returns, per usable record, (record, [(ids, labels), ...])."""

    def __init__(self, source, tok, max_len: int, bad, chat_template: str = "tokenizer",
                 system_prompt: str | None = None, truncation: str = "right"):
        self.source, self.tok, self.max_len, self.bad = source, tok, max_len, bad
        self.chat = None
        if source.kind == "sft":
            from .chat import ChatEncoder

            self.chat = ChatEncoder(tok, chat_template, system_prompt, max_len, truncation)
            self.system_prompt = system_prompt

    def make(self, records) -> list:
        return self._sft(records) if self.chat is not None else self._pretrain(records)

    def _pretrain(self, records):
        kept, texts = [], []
        for rec in records:
            text = _field(rec, self.source.text, str, self.source, self.bad)
            if text is None:
                continue
            if not text.strip():
                self.bad.add(self.source.name, rec.where, "empty text")
                continue
            kept.append(rec)
            texts.append(text)
        return [(rec, pretrain_documents(ids, self.max_len))
                for rec, ids in zip(kept, tokenize_texts(self.tok, texts))]

    def _sft(self, records):
        from .chat import ConversationError, check_messages

        kept, convs = [], []
        for rec in records:
            value = _field(rec, self.source.messages, object, self.source, self.bad)
            if value is None:
                continue
            try:
                convs.append(check_messages(value, self.system_prompt))
                kept.append(rec)
            except ConversationError as e:
                self.bad.add(self.source.name, rec.where, e.reason, e.detail)
        out = []
        for rec, doc in zip(kept, self.chat.encode(convs)):
            if isinstance(doc, ConversationError):
                self.bad.add(self.source.name, rec.where, doc.reason, doc.detail)
            else:
                out.append((rec, [doc]))
        return out


def build_store(records, maker: DocMaker, batch: int = 512) -> DocStore:
    """Read, check and tokenise a whole source into a DocStore (map-style)."""
    store = DocStore()
    block = []
    for rec in records:
        block.append(rec)
        if len(block) == batch:
            _add(store, maker.make(block))
            block = []
    _add(store, maker.make(block))
    return store


def _add(store: DocStore, made) -> None:
    for rec, docs in made:
        for ids, labels in docs:
            store.add(ids, labels, rec.index)
