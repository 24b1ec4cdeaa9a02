"""Soak: the four tasks and result saving in a loop for a bounded time; does memory grow, does latency drift?

    python benchmarks/soak.py                    # 120 s on the embedded unipose-tiny, CPU
    python benchmarks/soak.py --seconds 600 --threads 2 --save-every 10

Each cycle runs generate, edit, describe (pose and image) and estimate once, round-robin over a few fixed inputs,
and every `--save-every` cycles saves a generate result (replacing the previous set) into a temporary directory
that is removed at the end. The first `--warmup-s` seconds are not measured (allocator and caches settle).

RSS (resident set size, from /proc/self/statm, or ru_maxrss where there is no /proc) is sampled after the warm-up
and every cycle; the growth is reported from the first sample after the warm-up to the last, together with the
median of the last tenth of the samples (a steady state hides a transient peak). Latencies are wall-clock per call
in milliseconds. The last line of stdout is one JSON document:
{"seconds", "cycles", "calls", "rss_mb": {"start", "end", "max", "growth_pct", "tail_median"},
 "latency_ms": {task: {"p50", "p90", "p99", "max", "n"}}, "latency_drift_pct": {task: last-quarter p50 vs first},
 "saves", "torch_threads", "python", "torch"}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc), else the peak so far (ru_maxrss, KiB on Linux/BSD)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="measured duration (after the warm-up)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="unmeasured warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--save-every", type=int, default=5, help="save a result set every N cycles (0: never)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="cap on text tokens of the text tasks")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup_s < 0 or args.save_every < 0:
        parser.error("--seconds must be > 0, --warmup-s and --save-every >= 0")

    import numpy as np
    import torch

    from unipose_sdk.body.examples import load_example_pose
    from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = {"max_new_tokens": args.max_new_tokens}
    generator, editor = Generator.from_pretrained(**options), Editor.from_pretrained(**options)
    describer, estimator = Describer.from_pretrained(**options), Estimator.from_pretrained(**options)
    texts = ["a person squatting with both arms raised", "a person kneeling on the left knee",
             "a person bending forward to touch the toes", "a person standing on the right leg"]
    poses = [load_example_pose(name) for name in ("squatting", "sitting", "walking_stride")]
    rng = np.random.default_rng(0)
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in ((120, 90, 3), (64, 64, 3), (200, 140, 3))]
    out_dir = Path(tempfile.mkdtemp(prefix="unipose-soak-"))

    last_generate: list = []

    def generate(i: int) -> None:
        last_generate[:] = [generator.generate(texts[i % len(texts)])]

    tasks: dict[str, Callable[[int], object]] = {
        "generate": generate,
        "edit": lambda i: editor.edit(poses[i % len(poses)], texts[i % len(texts)]),
        "describe_pose": lambda i: describer.describe(pose=poses[i % len(poses)]),
        "describe_image": lambda i: describer.describe(image=images[i % len(images)]),
        "estimate": lambda i: estimator.estimate(images[i % len(images)]),
    }
    latencies: dict[str, list[float]] = {name: [] for name in [*tasks, "save"]}
    samples: list[float] = []
    cycles = saves = 0
    try:
        warm_until = time.monotonic() + args.warmup_s
        cycle = 0
        while time.monotonic() < warm_until or cycle == 0:
            for run in tasks.values():
                run(cycle)
            if args.save_every:
                last_generate[0].save(out_dir, stem="soak", overwrite=True)
            cycle += 1
        samples.append(rss_mb())
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for name, run in tasks.items():
                start = time.perf_counter()
                run(cycles)
                latencies[name].append((time.perf_counter() - start) * 1e3)
            if args.save_every and cycles % args.save_every == 0:
                start = time.perf_counter()
                last_generate[0].save(out_dir, stem="soak", overwrite=True)
                latencies["save"].append((time.perf_counter() - start) * 1e3)
                saves += 1
            cycles += 1
            samples.append(rss_mb())
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    tail = samples[-max(1, len(samples) // 10):]
    report = {
        "seconds": args.seconds, "warmup_s": args.warmup_s, "cycles": cycles,
        "calls": sum(len(v) for k, v in latencies.items() if k != "save"), "saves": saves,
        "rss_mb": {"start": round(samples[0], 1), "end": round(samples[-1], 1), "max": round(max(samples), 1),
                   "tail_median": round(statistics.median(tail), 1),
                   "growth_pct": round(100 * (samples[-1] - samples[0]) / samples[0], 2)},
        "latency_ms": {name: {"p50": round(percentile(v, 50), 2), "p90": round(percentile(v, 90), 2),
                              "p99": round(percentile(v, 99), 2), "max": round(max(v), 2), "n": len(v)}
                       for name, v in latencies.items() if v},
        "latency_drift_pct": {name: round(100 * (statistics.median(v[-len(v) // 4:])
                                                 / statistics.median(v[:len(v) // 4]) - 1), 1)
                              for name, v in latencies.items() if len(v) >= 8},
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
