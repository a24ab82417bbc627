"""Vision-language records -> documents: ids, labels, the media they carry and their mrope positions.

A `VLDoc` unpacks as the (ids, labels) pair every text document is, so the planner, sampler and
loader treat it like one; it also carries `media` [(kind, path, plan)] and `pos`, the (3, L) mrope
positions of the sample computed alone (see positions.py). `VLDocStore.costs()` counts each
document's MEDIA_COSTS: vision patches (before merging) and audio feature frames (of its clips and
of its videos' audio tracks, as the audio tower takes them), which the batcher budgets beside tokens.

Bad records are counted per source and reason with their ``file:line`` (BadRecords), never
raised: unreadable records, malformed conversations, missing or undecodable media, more
placeholders than media, videos over `video_max_seconds`, vision tokens alone over `max_len`,
documents over the patch or the audio-frame budget, and documents longer than `max_len` that
cannot be cut after their last vision token (truncation `right`; `left` and `drop` drop them).
"""
from __future__ import annotations

import numpy as np

from ...vocab import TRUNCATIONS
from ..kinds import IGNORE, DocStore
from .media import MediaError
from .positions import rope_index
from .records import RecordError, base_dir, conversation


# What a document costs beside its tokens, in the order of a cost vector: name -> what is counted
MEDIA_COSTS = {"patches": "vision patches", "audio_frames": "audio frames"}


class VLDoc(tuple):
    """(ids, labels) with `.media` [(kind, path, plan)] and `.pos` (3, L) int64 (float32 where the model's
    positions are floats: Qwen3-Omni videos)."""

    def __new__(cls, ids, labels, media, pos):
        doc = super().__new__(cls, (ids, labels))
        doc.media, doc.pos = media, pos
        return doc


class VLDocStore(DocStore):
    def __init__(self):
        super().__init__()
        self.media: list[list] = []
        self.pos: list[np.ndarray] = []
        self.n_costs: list[tuple[int, ...]] = []  # per document, in MEDIA_COSTS order

    def add_vl(self, ids, labels, media, pos, costs: tuple[int, ...], record: int) -> None:
        self.add(ids, labels, record)
        self.media.append(media)
        pos = np.asarray(pos)  # float positions (Qwen3-Omni videos) stay float32, as the model makes them
        self.pos.append(pos.astype(np.float32 if np.issubdtype(pos.dtype, np.floating) else np.int32))
        self.n_costs.append(tuple(costs))

    def doc(self, d: int) -> VLDoc:
        pos = self.pos[d]
        return VLDoc(self.ids[d], self.labels[d], self.media[d],
                     pos if np.issubdtype(pos.dtype, np.floating) else pos.astype(np.int64))

    def costs(self) -> np.ndarray:
        """(documents, len(MEDIA_COSTS)) int64."""
        return np.asarray(self.n_costs, dtype=np.int64).reshape(-1, len(MEDIA_COSTS))

    def patches(self) -> np.ndarray:
        return self.costs()[:, list(MEDIA_COSTS).index("patches")]

    def kinds(self) -> set[str]:
        """The media kinds present in any document."""
        return {kind for media in self.media for kind, _, _ in media}


class VLDocMaker:
    """Records of one source -> VLDocs; bad records go to `bad`."""

    def __init__(self, source, processor, max_len: int, bad, system_prompt: str | None = None,
                 truncation: str = "right", patches: int | None = None, audio_frames: int | None = None):
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        self.source, self.proc, self.max_len, self.bad = source, processor, max_len, bad
        self.system_prompt, self.truncation = system_prompt, truncation
        self.budgets = (patches, audio_frames)  # in MEDIA_COSTS order
        self.rope = rope_index(processor.config, getattr(processor, 'use_audio_in_video', False))
        self._plans: dict[tuple[str, str], object] = {}  # one probe per file and kind

    def _plan(self, kind: str, path: str):
        key = (kind, path)
        if key not in self._plans:
            try:
                self._plans[key] = self.proc.plan(kind, path)
            except MediaError as e:
                self._plans[key] = e
        plan = self._plans[key]
        if isinstance(plan, MediaError):
            raise plan
        return plan

    def make(self, rec) -> tuple[VLDoc, tuple[int, ...]] | None:
        """(document, its MEDIA_COSTS) of one record, or None (counted as bad)."""
        try:
            return self._make(rec)
        except (RecordError, MediaError) as e:
            self.bad.add(self.source.name, rec.where, e.reason, e.detail)
            return None

    def _make(self, rec) -> tuple[VLDoc, tuple[int, ...]]:
        if rec.error is not None:
            raise RecordError("unreadable record", rec.error)
        if not isinstance(rec.value, dict):
            raise RecordError("not an object", type(rec.value).__name__)
        messages, media = conversation(rec.value, self.source.messages, base_dir(rec.where), self.system_prompt)
        planned = [(kind, path, self._plan(kind, path)) for kind, path in media]
        grids = [self.proc.grid(kind, plan) for kind, _, plan in planned]
        patches = int(sum(np.prod(g) for g in grids))
        vision = patches // self.proc.merge
        audio = self.proc.audio_frames(planned)
        if vision > self.max_len:
            raise RecordError("vision tokens exceed max_len", f"{vision} > {self.max_len}")
        heard = sum(self.proc.audio_tokens(f) for f in audio)
        if heard + vision > self.max_len:
            raise RecordError("audio tokens exceed max_len", f"{heard} audio + {vision} vision > {self.max_len}")
        costs = (patches, sum(audio))
        for what, cost, budget in zip(MEDIA_COSTS.values(), costs, self.budgets):
            if budget is not None and cost > budget:
                raise RecordError(f"too many {what}", f"{cost} > the budget of {budget}")
        ids, labels = self.proc.encode(messages, planned)
        if len(ids) > self.max_len:
            ids, labels = self._truncate(ids, labels)
        if not (labels != IGNORE).any():
            raise RecordError("no assistant tokens within max_len" if len(ids) == self.max_len
                              else "no assistant tokens")
        images = [g for (kind, _, _), g in zip(planned, grids) if kind == "image"]
        videos = [(g, plan.second_per_grid) for kind, _, plan in planned if kind == "video"
                  for g in [plan.grid]]
        pos = self.rope(ids, images, [g for g, _ in videos], [s for _, s in videos], audio)
        return VLDoc(ids, labels, planned, pos), costs

    def _truncate(self, ids, labels):
        vision = np.flatnonzero(np.isin(ids, self.proc.media_ids))
        if self.truncation != "right" or (len(vision) and vision[-1] >= self.max_len):
            raise RecordError("longer than max_len", f"{len(ids)} > {self.max_len} tokens"
                              + (" (cutting would split a vision input)" if self.truncation == "right" else ""))
        ids, labels = ids[:self.max_len], labels[:self.max_len].copy()
        labels[-1] = IGNORE  # its target was cut off
        return ids, labels


def build_vl_store(records, maker: VLDocMaker) -> VLDocStore:
    """Read, check, plan and tokenise a whole source into a VLDocStore (map-style)."""
    store = VLDocStore()
    for rec in records:
        made = maker.make(rec)
        if made is not None:
            doc, costs = made
            store.add_vl(doc[0], doc[1], doc.media, doc.pos, costs, rec.index)
    return store
