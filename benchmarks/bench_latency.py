#!/usr/bin/env python
"""End-to-end latency per task and backend against the two PyTorch references: `unipose bench`, from a checkout.

    python benchmarks/bench_latency.py --quick -o bench-results               # smoke run, unipose-tiny on the CPU
    python benchmarks/bench_latency.py --threads 2 --onnx-dir out/tiny-onnx -o benchmarks/results --overwrite
    python benchmarks/bench_latency.py --device cuda --model unipose-7b --batch-size 1 8 -o benchmarks/results

The benchmark is the library `unipose_sdk.bench`; this script and the installed command run the same code.
"""

from __future__ import annotations

import sys

from unipose_sdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
