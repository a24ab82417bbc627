"""A window of training steps traced with torch.profiler, one trace file per rank.

    prof = profiling.Profiler(f"{out}/profile", rank=info.rank, first=cfg.profile.first,
                              steps=cfg.profile.steps, start=start, enabled=cfg.profile.enabled)
    for step in range(start + 1, cfg.train.steps + 1):
        ...                                # the whole step
        prof.step()                        # once, at the end of every step
    prof.close()

Steps `first .. first + steps - 1` (the loop's own step numbers) are recorded, after `warmup`
steps traced but discarded (the profiler's own start-up cost lands there). Each rank then writes
``trace_rank{r}.json`` (Chrome trace format: open it in https://ui.perfetto.dev or
chrome://tracing; TensorBoard's profile plugin reads it too). Step markers in the trace are named
``ProfilerStep#N`` with N the training step. CPU activity always; CUDA kernels too when CUDA is
available. Disabled (the default), every call is a no-op. A resumed run whose start is past the
window records nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile

__all__ = ["Profiler"]


class Profiler:
    def __init__(self, out_dir, *, rank: int = 0, first: int = 2, steps: int = 3, warmup: int = 1,
                 start: int = 0, enabled: bool = False, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False):
        if enabled and (first < 1 or steps < 1 or warmup < 0):
            raise ValueError(f"profile window needs first >= 1, steps >= 1, warmup >= 0; got {first}, {steps}, {warmup}")
        self.path = Path(out_dir) / f"trace_rank{rank}.json"
        self.first, self.last, self.warmup = first, first + steps - 1, warmup
        self._prof = None
        if not enabled or start >= self.last:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._prof = profile(activities=activities, schedule=self._action, on_trace_ready=self._write,
                             record_shapes=record_shapes, profile_memory=profile_memory, with_stack=with_stack)
        self._prof.step_num = start + 1  # the step about to run: markers carry training step numbers
        self._prof.start()

    @property
    def enabled(self) -> bool:
        return self._prof is not None

    def _action(self, step: int) -> ProfilerAction:
        if step < self.first - self.warmup or step > self.last:
            return ProfilerAction.NONE
        if step < self.first:
            return ProfilerAction.WARMUP
        return ProfilerAction.RECORD_AND_SAVE if step == self.last else ProfilerAction.RECORD

    def _write(self, prof) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.path))

    def step(self) -> None:
        """Mark the end of a training step."""
        if self._prof is None:
            return
        self._prof.step()
        if self._prof.step_num > self.last:  # the window is written: stop tracing for good
            self.close()

    def close(self) -> None:
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()
