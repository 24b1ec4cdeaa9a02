"""Turn two of a conversation costs what its own exchange holds, not what the history holds.

Two-turn conversations on the embedded unipose-tiny (text-to-pose both times) through `Assistant`, with the first
turn's text (the history) and the second turn's text (its own length) varied one at a time. For turn two it
records the prompt's length, how much of it the kept KV cache held (`reused_tokens`), how much was computed
(`computed_tokens`: the previous answer in its official form plus the new turn), the time of that computation
(the "prefill" stage) and of the turn's model work ("llm": prefill, pose step, decode steps); and, as the reference
without a kept cache, the same prompt run from scratch (`UniPose.generate`: one prefill of the whole prompt, then
the same decoding; its tokens are checked equal to the turn's).

    python benchmarks/chat_turns.py --out benchmarks/results/chat_turns_tiny_cpu.json

Timings are medians and 90th percentiles over --repeats runs after --warmup runs (not counted) per point, as wall
time (`*_ms`) and, for the prefills, as the compute thread's CPU time (`*_cpu_ms`, steadier on shared cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import unipose_sdk.tasks.assistant as assistant_module
from unipose_sdk import Assistant, __version__
from unipose_sdk.text.prompts import PromptRow
from unipose_sdk.timing import StageTimer


class CPUStageTimer(StageTimer):
    """StageTimer that also keeps each stage's thread CPU time (`cpu_ms`): on cores shared with other processes the
    wall time of a few-millisecond stage swings by 2x or more, the CPU time of one compute thread much less."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__(device)
        self.cpu_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.thread_time()
        try:
            with super().stage(name):
                yield
        finally:
            self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (time.thread_time() - start) * 1e3


TIMERS: list[CPUStageTimer] = []


def recorded_timer(device: torch.device | None = None) -> CPUStageTimer:
    TIMERS.append(CPUStageTimer(device))
    return TIMERS[-1]


WORDS = ("a person standing with the left knee bent and both arms raised above the head while the torso leans "
         "slightly forward and the right foot points outward").split()


def caption(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def turn(words: int) -> str:
    return f"Generate pose of the description: {caption(words)}."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(assistant: Assistant, first_words: int, second_words: int, warmup: int, repeats: int) -> dict:
    session = assistant.session
    prefill, llm, scratch_prefill, scratch_llm = [], [], [], []
    cpu_prefill, cpu_scratch_prefill = [], []
    reply = None
    for i in range(warmup + repeats):
        assistant.reset()
        assistant.ask(turn(first_words))
        TIMERS.clear()
        reply = assistant.ask(turn(second_words))
        turn_timer = TIMERS[-1]
        config = assistant.options.generation_config(session.config.vocab, turn=1)
        timer = CPUStageTimer()
        with session.lock, torch.inference_mode():
            fresh = session.generate([PromptRow(reply.prompt_ids, [], "")], None, config, on_stage=timer.stage)[0]
        assert fresh.token_ids == reply.generated_ids, "the kept cache and a fresh prefill disagree"
        if i >= warmup:
            prefill.append(reply.timing_ms["prefill"])
            llm.append(reply.timing_ms["llm"])
            scratch_prefill.append(timer.ms["prefill"])
            scratch_llm.append(timer.ms["llm"])
            cpu_prefill.append(turn_timer.cpu_ms["prefill"])
            cpu_scratch_prefill.append(timer.cpu_ms["prefill"])
    assert reply is not None

    def summary(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "p90": round(percentile(values, 0.9), 3)}

    return {"first_turn_words": first_words, "second_turn_words": second_words,
            "prompt_tokens": reply.prompt_tokens, "reused_tokens": reply.reused_tokens,
            "computed_tokens": reply.computed_tokens, "turn_two_prefill_ms": summary(prefill),
            "turn_two_llm_ms": summary(llm), "from_scratch_prefill_ms": summary(scratch_prefill),
            "from_scratch_llm_ms": summary(scratch_llm), "turn_two_prefill_cpu_ms": summary(cpu_prefill),
            "from_scratch_prefill_cpu_ms": summary(cpu_scratch_prefill)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The Assistant times its turns with the StageTimer its module names: this run's timer adds the CPU time.
    assistant_module.StageTimer = recorded_timer  # type: ignore[assignment,misc]
    assistant = Assistant.from_pretrained(device="cpu", max_new_tokens=4, max_poses=1)
    base = 8
    rows = []
    for first in (8, 48, 96, 144, 192):  # the history grows, turn two stays
        rows.append({"varied": "history", **measure(assistant, first, base, args.warmup, args.repeats)})
    for second in (24, 48, 72, 96):  # turn two grows, the history stays
        rows.append({"varied": "turn_two", **measure(assistant, base, second, args.warmup, args.repeats)})
    result = {
        "command": "python benchmarks/chat_turns.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": args.threads},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "unipose_sdk": __version__},
        "model": "unipose-tiny (embedded), torch backend, float32, CPU",
        "warmup_runs": args.warmup, "repeats": args.repeats, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['varied']:9s} turn1 {row['first_turn_words']:3d} words turn2 {row['second_turn_words']:3d} "
              f"words: prompt {row['prompt_tokens']:3d} reused {row['reused_tokens']:3d} computed "
              f"{row['computed_tokens']:3d}  prefill {row['turn_two_prefill_ms']['median']:7.2f} ms (llm "
              f"{row['turn_two_llm_ms']['median']:7.2f})  from scratch {row['from_scratch_prefill_ms']['median']:7.2f}"
              f" ms (llm {row['from_scratch_llm_ms']['median']:7.2f}); prefill CPU "
              f"{row['turn_two_prefill_cpu_ms']['median']:6.2f} vs {row['from_scratch_prefill_cpu_ms']['median']:6.2f}")


if __name__ == "__main__":
    main()
