"""The chat template of vision-language conversations, and rendering with the assistant spans.

`QWEN_VL_TEMPLATE` lays a conversation out as the Qwen2-VL / Qwen2.5-VL / Qwen3-VL families do:
ChatML turns, and each image or video as ``<|vision_start|><|image_pad|><|vision_end|>`` (or
``<|video_pad|>``) where it stands in the message, before the processor expands the pad token into
one token per merged vision patch. No default system prompt is added (Qwen2-VL's own template adds
"You are a helpful assistant."; set the data's `system_prompt` for that). The assistant part sits
in a ``{% generation %}`` block, so transformers reports its character ranges: the labels cover the
reply and its ``<|im_end|>``, never the prompt.

`render(messages, template, tok)` returns the text and those ranges; templates without generation
blocks (a tokenizer's own) get their ranges by incremental rendering, as `runtime.data.chat` does.
"""
from __future__ import annotations

import re

from ...vocab import VL_CHAT_TEMPLATES

def media_chat_template(parts: dict[str, str]) -> str:
    """ChatML whose message content may hold media parts: `parts` maps a part's type (`image`,
    `video`, `audio`) to the text it becomes (the model's start, placeholder and end tokens); the
    assistant's turns are marked `{% generation %}` (labels on assistant tokens only)."""
    branches = "".join(f"{{%- elif part['type'] == '{kind}' -%}}{{{{ '{text}' }}}}" for kind, text in parts.items())
    return (
        "{%- macro parts(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        + branches
        + "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' -%}"
        "{% generation %}{{ parts(message['content']) + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{%- else -%}{{ parts(message['content']) + '<|im_end|>\\n' }}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


QWEN_VL_TEMPLATE = media_chat_template({"image": "<|vision_start|><|image_pad|><|vision_end|>",
                                        "video": "<|vision_start|><|video_pad|><|vision_end|>"})
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_for(tok, chat_template: str = "qwen_vl") -> str:
    """The Jinja text for a `chat_template` setting: the built-in one, or the tokenizer's own."""
    if chat_template == "qwen_vl":
        return QWEN_VL_TEMPLATE
    if chat_template != "tokenizer":
        raise ValueError(f"chat_template must be one of {VL_CHAT_TEMPLATES}, got {chat_template!r}")
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no chat template; "
                         "use chat_template = qwen_vl (built in)")
    return template


def _render(messages, template: str, tok, add_generation_prompt=False, track=False):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, spans = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=track, **tok.special_tokens_map)
    return rendered[0], (spans[0] if track else None)


def render(messages: list[dict], template: str, tok) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character ranges of its assistant turns.

    Raises ValueError when the template refuses the conversation or hides the assistant turns."""
    if _GENERATION.search(template):
        text, spans = _render(messages, template, tok, track=True)
        return text, [tuple(s) for s in spans]
    text, _ = _render(messages, template, tok)
    spans = []
    for i, m in enumerate(messages):  # the text up to turn i-1 plus the prompt, then turn i
        if m["role"] != "assistant":
            continue
        before = _render(messages[:i], template, tok, add_generation_prompt=True)[0] if i else ""
        upto = _render(messages[:i + 1], template, tok)[0]
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ValueError("the chat template does not render incrementally and marks no "
                             "{% generation %} block: assistant turns cannot be found")
        spans.append((len(before), len(upto)))
    return text, spans
