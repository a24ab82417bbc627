"""The settings of one imported config: what was read, and a note for each that did not carry over."""
from __future__ import annotations

from dataclasses import dataclass

from .yamlsrc import Entry

__all__ = ["Note", "Settings"]

# Settings with no planc counterpart whose VeOmni meaning planc already has (or that only tune
# VeOmni's own machinery): reported as notes, with why nothing is lost.
_SAME = {
    "train.init_device": "planc always builds the model on the meta device and materialises shards",
    "train.enable_full_determinism": "planc's runs are seeded; CPU/gloo layouts are checked against one process",
    "train.empty_cache_steps": "no periodic cache emptying in planc scripts",
    "train.gc_steps": "no scheduled garbage collection in planc scripts",
    "train.accelerator.fsdp_config.forward_prefetch": "FSDP2's default prefetching is used",
    "train.enable_forward_prefetch": "FSDP2's default prefetching is used",
    "train.checkpoint.manager": "planc checkpoints are DCP", "train.ckpt_manager": "planc checkpoints are DCP",
    "train.gradient_checkpointing.enable_reentrant": "planc uses non-reentrant checkpointing",
    "train.enable_reentrant": "planc uses non-reentrant checkpointing",
    "train.rmpad": "planc packs without padding inside rows (position_ids restart per document)",
    "train.rmpad_with_pos_ids": "planc packs without padding inside rows (position_ids restart per document)",
    "data.dataloader_type": "planc's loader is its own (stateful, exact resume)",
    "train.checkpoint.load_path": "resume with the script's --resume auto|PATH",
    "train.load_checkpoint_path": "resume with the script's --resume auto|PATH",
}


@dataclass
class Note:
    where: str    # file:line:col of the setting, or "<command line> (argument N)"
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}"


class Settings:
    """The entries, what was read, and the notes."""

    def __init__(self, entries: dict[str, Entry], old: bool):
        self.entries, self.old, self.used, self.notes = entries, old, set(), []

    def get(self, *keys, default=None):
        """(value, entry) of the first key present (all `keys` are marked read), else (default, None)."""
        found = None
        for k in keys:
            if k in self.entries:
                self.used.add(k)
                if found is None:
                    found = self.entries[k]
                else:  # the same setting twice (both key generations): say which one counts
                    self.note(self.entries[k], f"ignored: {found.key} ({found.where}) sets the same thing")
        return (found.value, found) if found else (default, None)

    def note(self, entry: Entry | None, message: str, key: str | None = None) -> None:
        self.notes.append(Note(entry.where if entry else "(default)", entry.key if entry else key, message))

    def leftovers(self) -> None:
        """A note for every entry nothing read."""
        for key, e in self.entries.items():
            if key in self.used:
                continue
            reason = _SAME.get(key)
            if reason is None and key in ("train.eval_steps", "train.eval_epochs"):
                reason = "not carried over: without data.eval_path there is no validation block"
            self.note(e, reason or "not carried over: planc has no such setting")
