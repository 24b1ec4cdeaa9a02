"""The optimisation loop every training stage shares (AdamW, warmup + cosine, clipping, a step and a time
budget) and the budget constants the stages plan their steps with. The LLM stages (`pipeline`) and the vision
pretraining (`vision`) both use it; it imports neither."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

log = logging.getLogger("unipose_sdk.training")

# Share of the budget per stage; stage 2 splits its share between vision pretraining and the image tasks.
STAGE_SHARE = {1: 0.42, 2: 0.36, 3: 0.22}
# The fastest seconds per step seen per device type (batch 16 LLM steps; batch 32 through both towers): the step
# count of a stage is its time share over this, so a stage ends by steps (deterministic) only on a machine at
# least this fast, otherwise by its time share. Measured on a quiet 2-core Xeon: vision steps 0.25-0.33 s (the
# 0.8 s first assumed left 2/3 of the vision time share unused); LLM steps 0.3-0.4 s, over 1 s when the cores
# are shared. So on such a CPU every stage ends by time (all did in the 111-minute run) and a CPU run is not
# step-deterministic; each stage's training.json records the steps it took and what ended it.
SECONDS_PER_LLM_STEP = {"cpu": 0.3, "cuda": 0.03}
SECONDS_PER_VISION_STEP = {"cpu": 0.25, "cuda": 0.03}


def cosine_lr(progress: float, peak: float, warmup: float = 0.04, floor: float = 0.1) -> float:
    """Learning rate at `progress` in [0, 1] of a stage: linear warmup, then cosine down to floor * peak."""
    if progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    fraction = (progress - warmup) / (1 - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))


def run_steps(name: str, params: list[torch.nn.Parameter], steps: int, lr: float, seconds: float,
              step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]], log_every: int = 25,
              ) -> dict[str, Any]:
    """The optimisation loop all stages share: AdamW, warmup + cosine, gradient clipping.

    A stage ends after `steps` steps or `seconds` of wall time, whichever comes first; the schedule follows
    whichever is further along (progress = max(step / steps, elapsed / seconds)), so a run on a busy machine
    still finishes its cosine decay inside its time, and a fast machine is deterministic in steps.
    step_fn(step) returns (loss, stats). Returns a summary with the mean stats of each log window."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = time.perf_counter()
    window: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    done, progress = 0, 0.0
    for step in range(steps):
        progress = max(step / steps, (time.perf_counter() - start) / seconds)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(progress, lr)
        loss, stats = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        window.append(stats)
        done = step + 1
        if done % log_every == 0 or done == steps:
            mean = {k: float(np.nanmean([w[k] for w in window])) for k in window[0]}
            history.append({"step": done, **mean})
            log.info("%s step %d/%d %s %.0f s", name, done, steps,
                     " ".join(f"{k} {v:.4f}" for k, v in mean.items()), time.perf_counter() - start)
            window = []
    ended_by = "steps" if done == steps else "time"
    return {"steps": done, "planned_steps": steps, "ended_by": ended_by, "seconds": time.perf_counter() - start,
            "history": history}
