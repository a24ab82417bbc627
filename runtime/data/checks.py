"""Checks before launch: can each source be read, do its first records have the fields the plan
names, and what will a step of the mixture hold. Used by `planc check`; cheap (a few records)."""
from __future__ import annotations

import itertools
import os
from typing import Sequence

from .bad_records import BadRecords
from .sources import Source, infer_format, read_records


def _where(source: Source) -> str:
    return f"source {source.name!r} ({source.path})"


def check_sources(sources: Sequence[Source], tok=None, chat_template: str = "tokenizer",
                  first: int = 5) -> list[str]:
    """Problems found in the first `first` records of each source; an empty list when all is well."""
    errors = []
    for s in sources:
        if not os.path.exists(s.path) and not any(ch in s.path for ch in "*?["):
            errors.append(f"{_where(s)}: path does not exist")
            continue
        try:
            infer_format(s.path) if s.format is None else None
            head = list(itertools.islice(read_records(s), first))
        except Exception as e:  # unreadable: say what the reader said
            errors.append(f"{_where(s)}: cannot read as {s.format or 'its inferred format'}: {type(e).__name__}: {e}")
            continue
        if not head:
            errors.append(f"{_where(s)}: no records")
            continue
        field = s.text if s.kind == "pretrain" else s.messages
        present = sorted({k for r in head if isinstance(r.value, dict) for k in r.value})
        broken = [r for r in head if r.error is not None]
        if broken:
            errors.append(f"{_where(s)}: unreadable record at {broken[0].where}: {broken[0].error}")
        if not any(isinstance(r.value, dict) and field in r.value for r in head):
            errors.append(f"{_where(s)}: field {field!r} ({s.kind}) not found in the first {len(head)} records;"
                          f" fields present: {present}")
        elif s.kind == "pretrain" and not any(isinstance(r.value.get(field), str) for r in head
                                               if isinstance(r.value, dict)):
            errors.append(f"{_where(s)}: field {field!r} is not text in the first {len(head)} records")
        elif s.kind == "sft":
            from .chat import ConversationError, check_messages

            problems = []
            for r in head:
                try:
                    check_messages(r.value.get(field) if isinstance(r.value, dict) else None)
                except ConversationError as e:
                    problems.append(f"{r.where}: {e.reason}")
            if len(problems) == len(head):
                errors.append(f"{_where(s)}: no usable conversation in the first {len(head)} records "
                              f"(first: {problems[0]}); `{field}` must be a list of {{role, content}} messages")
    if tok is not None and any(s.kind == "sft" for s in sources):
        from .chat import template_for

        try:
            template_for(tok, chat_template)
        except ValueError as e:
            errors.append(str(e))
    return errors


def estimate_mixture(sources: Sequence[Source], tok, max_len: int, pack: str, global_batch: int,
                     micro_batch: int = 1, tokens: int | None = None, sample: int = 64,
                     chat_template: str = "tokenizer", system_prompt: str | None = None,
                     truncation: str = "right") -> dict:
    """Expected tokens (and target tokens) per optimizer step, overall and per source, from the
    first `sample` records of each source. Step capacity: global_batch rows of max_len for
    none/greedy; global_batch micro-batches of `tokens` for dynamic (see loader.py)."""
    from .kinds import DocMaker

    capacity = global_batch * (tokens if pack == "dynamic" else max_len)
    total_w = float(sum(s.weight for s in sources))
    per_source = []
    for s in sources:
        maker = DocMaker(s, tok, max_len, BadRecords("skip"), chat_template, system_prompt, truncation)
        made = maker.make(list(itertools.islice(read_records(s), sample)))
        docs = [d for _, ds in made for d in ds]
        n_tok = sum(len(ids) for ids, _ in docs)
        n_tgt = sum(int((lab != -100).sum()) for _, lab in docs)
        share = s.weight / total_w
        per_source.append({
            "name": s.name, "kind": s.kind, "share": share,
            "mean_tokens_per_record": n_tok / max(len(made), 1),
            "target_share": n_tgt / max(n_tok, 1),
            "tokens_per_step": share * capacity,
            "target_tokens_per_step": share * capacity * n_tgt / max(n_tok, 1),
            "records_per_step": share * capacity / max(n_tok / max(len(made), 1), 1e-9),
        })
    return {"capacity_tokens_per_step": capacity,
            "target_tokens_per_step": sum(p["target_tokens_per_step"] for p in per_source),
            "sources": per_source}


def format_estimate(est: dict) -> str:
    """The mixture table printed by `planc check`."""
    lines = [f"data: <= {est['capacity_tokens_per_step']:,} tokens per step, "
             f"~{est['target_tokens_per_step']:,.0f} target tokens"]
    for p in est["sources"]:
        lines.append(f"  {p['name']:<16} {p['kind']:<8} share {p['share']:6.1%}  "
                     f"~{p['tokens_per_step']:,.0f} tok/step  ~{p['records_per_step']:,.1f} records/step  "
                     f"{p['mean_tokens_per_record']:,.0f} tok/record")
    return "\n".join(lines)
