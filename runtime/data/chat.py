"""SFT conversations -> (ids, labels) with labels only on assistant tokens.

The conversation is rendered with a chat template through transformers (the tokenizer's own, or
the built-in ChatML one), and the assistant spans are found as character ranges of the rendered
text, by the first method that applies:

1. the template marks them with `{% generation %}` (transformers reports the ranges);
2. the template renders incrementally: the text up to and including assistant turn i starts with
   the text up to turn i-1 plus the generation prompt; the span is the difference;
3. otherwise each assistant message's content is searched for, in order, in the rendered text
   (with the special token right after it, which is the template's end-of-turn marker).

The text is then tokenised once with offsets; a token is an assistant token when its characters
overlap a span. So the labels cover what the model must produce: the reply and its end-of-turn
marker, never the prompt, the role headers or the other turns.
"""
from __future__ import annotations

import json
import re

import numpy as np

from ..vocab import CHAT_TEMPLATES, TRUNCATIONS
from .labels import shifted_labels

# ChatML, with the assistant part in a {% generation %} block so transformers can report it.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ConversationError(ValueError):
    """A record that is not a usable conversation; the message is the bad-record reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def template_for(tok, chat_template: str = "tokenizer") -> str:
    """The Jinja template text for a plan's `chat_template` setting."""
    if chat_template == "chatml":
        return CHATML
    if chat_template != "tokenizer":
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATES}, got {chat_template!r}")
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not template:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no chat template; "
                         "set `chat_template = chatml` in the data block to use the built-in one")
    return template


def check_messages(value, system_prompt: str | None = None) -> list[dict]:
    """The conversation as a list of {role, content} dicts, or ConversationError."""
    if isinstance(value, str):  # CSV and some exports store the list as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise ConversationError("messages is not a list", "a string that is not JSON") from None
    if not isinstance(value, (list, tuple)):
        raise ConversationError("messages is not a list", type(value).__name__)
    if not value:
        raise ConversationError("empty conversation")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConversationError("malformed message", f"message {i} needs string 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("no assistant turn")
    if not any(m["content"].strip() for m in messages if m["role"] == "assistant"):
        raise ConversationError("empty assistant turns")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class ChatEncoder:
    """Render and tokenise conversations; `encode` gives (ids, labels) per conversation."""

    def __init__(self, tok, chat_template: str = "tokenizer", system_prompt: str | None = None,
                 max_len: int = 2048, truncation: str = "right"):
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        self.tok, self.system_prompt, self.max_len, self.truncation = tok, system_prompt, max_len, truncation
        self.template = template_for(tok, chat_template)
        self.marked = bool(_GENERATION.search(self.template))

    def _render(self, messages, add_generation_prompt=False, track=False):
        from transformers.utils.chat_template_utils import render_jinja_template

        kwargs = {**self.tok.special_tokens_map}
        rendered, spans = render_jinja_template(
            conversations=[messages], chat_template=self.template, add_generation_prompt=add_generation_prompt,
            return_assistant_tokens_mask=track, **kwargs)
        return rendered[0], (spans[0] if track else None)

    def spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character ranges of the assistant turns."""
        try:
            if self.marked:
                text, spans = self._render(messages, track=True)
                return text, [tuple(s) for s in spans]
            text, _ = self._render(messages)
            incremental = self._incremental_spans(messages, text)
            return text, incremental if incremental is not None else self._searched_spans(messages, text)
        except ConversationError:
            raise
        except Exception as e:  # the template rejected the conversation (role order, ...)
            raise ConversationError("chat template error", f"{type(e).__name__}: {e}") from None

    def _incremental_spans(self, messages, text):
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, _ = self._render(messages[:i], add_generation_prompt=True) if i else ("", None)
            upto, _ = self._render(messages[:i + 1])
            if not (upto.startswith(before) and text.startswith(upto)):
                return None
            spans.append((len(before), len(upto)))
        return spans

    def _searched_spans(self, messages, text):
        spans, at = [], 0
        # the end-of-turn marker right after a reply is part of what the model must produce
        markers = sorted({t for t in self.tok.all_special_tokens if t}, key=len, reverse=True)
        for m in messages:
            start = text.find(m["content"], at)
            if start < 0:
                raise ConversationError("chat template error", "message content not found in the rendered text")
            end = start + len(m["content"])
            if m["role"] == "assistant":
                end += next((len(t) for t in markers if text.startswith(t, end)), 0)
                spans.append((start, end))
            at = end
        return spans

    def encode(self, conversations: list[list[dict]]) -> list[tuple[np.ndarray, np.ndarray] | ConversationError]:
        """(ids, labels) per conversation (already checked by `check_messages`), or the error."""
        rendered = []
        for messages in conversations:
            try:
                rendered.append(self.spans(messages))
            except ConversationError as e:
                rendered.append(e)
        texts = [r[0] for r in rendered if not isinstance(r, ConversationError)]
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True,
                       return_attention_mask=False) if texts else {"input_ids": [], "offset_mapping": []}
        out, k = [], 0
        for r in rendered:
            if isinstance(r, ConversationError):
                out.append(r)
                continue
            ids, offsets = enc["input_ids"][k], enc["offset_mapping"][k]
            k += 1
            out.append(self._finish(np.asarray(ids, dtype=np.int32), offsets, r[1]))
        return out

    def _finish(self, ids, offsets, spans):
        mask = np.zeros(len(ids), dtype=bool)
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        a, b = off[:, 0], off[:, 1]
        for s, e in spans:  # a token belongs to a span when their characters overlap
            mask |= (a < e) & (b > s) & (b > a)
        if len(ids) > self.max_len:
            if self.truncation == "drop":
                return ConversationError("longer than max_len", f"{len(ids)} > {self.max_len} tokens")
            keep = slice(0, self.max_len) if self.truncation == "right" else slice(len(ids) - self.max_len, None)
            ids, mask = ids[keep], mask[keep]
        labels = shifted_labels(ids, mask)
        if not (labels != -100).any():
            return ConversationError("no assistant tokens within max_len" if len(mask) == self.max_len
                                     else "no assistant tokens")
        return ids, labels
