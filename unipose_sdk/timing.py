"""One stage timer: wall-clock milliseconds per named stage, and how many times each stage ran.

The task classes own one `StageTimer` per call and time their own stages with it ("preprocess", "vision",
"detokenize"); they hand `timer.stage` down as the `on_stage` callback of `UniPose.generate` and
`generation.generate`, which wrap each of their steps in it ("llm"; "prefill" or "prefill_pose", "pose_step",
"decode"). The generation loop therefore holds no clock: without a callback its stages cost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

# What the loop calls around each stage: `with on_stage("decode"): ...`.
OnStage = Callable[[str], AbstractContextManager[object]]


def untimed(name: str) -> AbstractContextManager[object]:
    """The `on_stage` callback of a caller that does not time: does nothing."""
    return nullcontext()


class StageTimer:
    """Milliseconds (`ms`) and entries (`counts`) per stage name, from construction to `timing_ms()`.

    On CUDA every stage boundary synchronises the device: kernels run asynchronously, so without it a stage would
    end when its work was queued rather than done (and the next stage would be charged for it)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.ms: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._device = device if device is not None and device.type == "cuda" else None
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as one run of stage `name` (runs of one name add up). Usable as an `on_stage`."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            self.counts[name] = self.counts.get(name, 0) + 1

    def timing_ms(self) -> dict[str, float]:
        """Milliseconds per stage (rounded to the microsecond) and "total": the time since construction."""
        self._sync()
        out = {name: round(ms, 3) for name, ms in self.ms.items()}
        out["total"] = round((time.perf_counter() - self._start) * 1e3, 3)
        return out

    def _sync(self) -> None:
        if self._device is not None:
            torch.cuda.synchronize(self._device)
