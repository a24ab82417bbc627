"""The vision-language data loader: the text loader's planning, resume and batch guarantees, with
whole multimodal samples, budgets of vision patches and audio frames, and the collation of collate.py.

    proc = VLProcessor(tok, config, settings_for(config, max_pixels=...))
    loader = build_vl_loader(sources, proc, max_len=1024, pack="dynamic", tokens=4096, patches=8192,
                             grad_accum=4, dp_rank=r, dp_size=n, seed=0)
    for micro_batches in loader:            # as runtime.data.build_loader: one list per step
        for mb in micro_batches:            # collate.py: input_ids, labels, position_ids (4, B, L),
            ...                             # pixel_values, image_grid_thw[, pixel_values_videos, ...]

Every source is a map-style `sft` source of conversation records (records.py); each rank reads and
plans every record, so steps, resume and the global batch behave exactly as the text loader's
global mode (runtime.data.loader): the same rows at any dp, exact resume mid-epoch. Each step's
media are decoded and processed when the step is made, in a thread `prefetch` steps ahead of
training (runtime.data.prefetch; 0: on the training thread, between steps).
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..bad_records import BadRecords
from ..kinds import pad_id
from ..loader import StepLoader, check_batching, rank0_logger, loader_from_orders
from ..mixture import MapOrder
from ..prefetch import Prefetch
from ..sources import Source, read_records
from .collate import Collator
from .docs import MEDIA_COSTS, VLDocMaker, build_vl_store
from .positions import is_omni, rope_index


class VLMapOrder(MapOrder):
    """MapOrder over a VLDocStore: documents are VLDocs, and each has its MEDIA_COSTS (the batcher's budgets)."""

    def __init__(self, store, seed: int, source_index: int, shuffle: bool = True):
        super().__init__(store, seed, source_index, shuffle)
        self._costs = store.costs()

    def doc(self, d: int):
        return self.store.doc(d)

    def costs(self, d: int) -> tuple[int, ...]:
        return tuple(int(c) for c in self._costs[d])


def build_vl_loader(sources: Sequence[Source], processor, max_len: int, pack: str = "greedy",
                    micro_batch: int = 1, grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1,
                    seed: int = 0, shuffle: bool = True, tokens: int | None = None, patches: int | None = None,
                    audio_frames: int | None = None,
                    warmup_steps: int = 0, on_bad_record: str = "skip", system_prompt: str | None = None,
                    truncation: str = "right", pad_to_multiple_of: int = 1, lookahead: float = 4.0,
                    prefetch: int = 1, log: Callable[[str], None] | None = None) -> StepLoader | Prefetch:
    """A StepLoader over vision-language `sources` (see the module docstring).

    tokens / patches / audio_frames: per-bin budgets (tokens: pack = dynamic; patches, audio_frames:
    any packing, None = no limit on vision patches / audio feature frames); a sample over a budget
    alone is a bad record; pad_to_multiple_of: row length multiple (sequence-parallel degree);
    prefetch: steps made ahead in a thread (0: none)."""
    if not sources:
        raise ValueError("build_vl_loader needs at least one source")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
    for s in sources:
        if s.kind != "sft" or s.streaming:
            raise ValueError(f"source {s.name!r}: vision-language data must be a map-style sft source "
                             f"(kind = sft, not streaming)")
    if patches is not None and patches < processor.settings.merge_size ** 2:
        raise ValueError(f"the patch budget ({patches}) must hold at least one merged patch group")
    if audio_frames is not None and audio_frames < 1:
        raise ValueError(f"the audio-frame budget must be at least 1, got {audio_frames}")
    check_batching(pack, max_len, micro_batch, tokens, warmup_steps)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    log = log or rank0_logger(dp_rank)
    bad = BadRecords(on_bad_record, log=log)
    orders, kinds = [], set()
    for i, s in enumerate(sources):
        maker = VLDocMaker(s, processor, max_len, bad, system_prompt, truncation, patches, audio_frames)
        store = build_vl_store(read_records(s), maker)
        if len(store) == 0:
            raise ValueError(f"source {s.name!r} ({s.path}) has no usable records; {bad.summary()}")
        kinds |= store.kinds()
        log(f"source {s.name!r}: {len(store)} samples, {int(store.lengths().sum())} tokens, "
            + ", ".join(f"{int(n)} {what}" for n, what in zip(store.costs().sum(0), MEDIA_COSTS.values()))
            + f", {store.targets()} targets "
            f"({bad.total(s.name)} bad records skipped)")
        orders.append(VLMapOrder(store, seed, i, shuffle))
    # Images always, videos when the data has any: every micro-batch runs each of them once.
    # Omni thinkers: audio always too.
    needs = ("image", "video") if "video" in kinds else ("image",)
    if is_omni(processor.config):
        needs += ("audio",)
    collate = Collator(processor, rope_index(processor.config, getattr(processor, "use_audio_in_video", False)),
                       needs, pad_to_multiple_of)
    loader = loader_from_orders(orders, [s.weight for s in sources], pack=pack, max_len=max_len,
                                micro_batch=micro_batch, grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size,
                                tokens=tokens, warmup_steps=warmup_steps, pad=pad_id(processor.tok),
                                pad_to_multiple_of=pad_to_multiple_of, lookahead=lookahead, global_mode=True,
                                bad=bad, log=log, names=names, collate=collate,
                                budgets=(patches, audio_frames))  # in MEDIA_COSTS order
    return Prefetch(loader, prefetch) if prefetch else loader
