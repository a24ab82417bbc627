"""The next step's micro-batches made while the current step trains: a StepLoader read by a thread.

A vision-language step's batches cost real work (each image decoded, resized and cut into patches:
bench/vl_pipeline.py), which the loader would otherwise do between optimizer steps, on the training
thread. `Prefetch(loader)` runs the loader's iteration in one background thread, `depth` steps
ahead; Pillow, PyAV and numpy release the GIL while they decode and resize, so the work overlaps
the step (on a GPU, the whole step; on a CPU, wherever a core is free).

Nothing else changes: the same micro-batches in the same order, and `state_dict()`, `epoch` and
`step` are those of the last step handed out (the thread notes them as it makes each step), so a
checkpoint resumes exactly where training was, not where the thread had got to.
`load_state_dict` stops the thread and drops what it had made; so does `close()`, which also puts
the loader back where the last step handed out left it (iterating again continues from there). An
error in the thread (a bad record under `on_bad_record = fail`) is raised by the step that would
have received it. At exit the thread is stopped before the interpreter shuts down (atexit), so it is
never frozen in the middle of a decode.
"""
from __future__ import annotations

import atexit
import queue
import threading
import weakref

__all__ = ["Prefetch"]


class Prefetch:
    """A StepLoader's steps made `depth` ahead in a thread; otherwise the loader itself (every other
    attribute, e.g. `sampler`, `tally`, `state_is_global`, is the wrapped loader's)."""

    def __init__(self, loader, depth: int = 1):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.depth = loader, depth
        self._thread = self._queue = self._stop = None
        self._handed = None  # (state, epoch, step) after the last step handed out, while a thread runs

    def __getattr__(self, name):  # only called for what Prefetch itself does not define
        return getattr(self.__dict__["loader"], name)

    # -- the thread ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._handed = (self.loader.state_dict(), self.loader.epoch, self.loader.step)
        self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
        self._thread = threading.Thread(target=self._make, args=(self._queue, self._stop),
                                        name="planc-prefetch", daemon=True)
        self._thread.start()
        atexit.register(_halt_at_exit, weakref.ref(self))

    def _make(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self.loader:
                if stop.is_set():
                    return
                after = (self.loader.state_dict(), self.loader.epoch, self.loader.step)
                while not stop.is_set():
                    try:
                        out.put(("step", item, after), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            out.put(("error", e, None))

    def _halt(self, restore: bool = False) -> None:
        """Stop the thread, dropping the steps it made; `restore`: put the loader back to the state
        after the last step handed out (the thread had read further)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put, drop what was made
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        handed = self._handed
        self._thread = self._queue = self._stop = self._handed = None
        if restore:
            self.loader.load_state_dict(handed[0])

    # -- the StepLoader interface -------------------------------------------------------------
    def __iter__(self):
        while True:
            if self._thread is None:
                self._start()
            kind, item, after = self._queue.get()
            if kind == "error":
                self._halt()
                raise item
            self._handed = after
            yield item

    def state_dict(self) -> dict:
        return self.loader.state_dict() if self._handed is None else self._handed[0]

    def load_state_dict(self, sd: dict) -> None:
        self._halt()
        self.loader.load_state_dict(sd)

    @property
    def epoch(self) -> int:
        return self.loader.epoch if self._handed is None else self._handed[1]

    @property
    def step(self) -> int:
        return self.loader.step if self._handed is None else self._handed[2]

    def close(self) -> None:
        """Stop the thread; iterating again continues after the last step handed out."""
        self._halt(restore=True)


def _halt_at_exit(ref) -> None:
    prefetch = ref()
    if prefetch is not None:
        prefetch._halt()
