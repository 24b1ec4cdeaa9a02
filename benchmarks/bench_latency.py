#!/usr/bin/env python
"""End-to-end latency per task and backend against the two PyTorch references (same as `unipose bench`).

    python benchmarks/bench_latency.py --quick                      # smoke run, tiny model on the CPU, seconds
    python benchmarks/bench_latency.py --threads 1 -o benchmarks/results   # the CPU table (a few minutes)
    python benchmarks/bench_latency.py --device cuda --model 7b --batch 1 8   # GPU only: random bf16 7B

The implementation lives in `unipose_sdk/cli/bench.py` so the installed `unipose bench` command runs the same
code. Writes latency_<model>_<device>.{json,md,png} under -o; the last stdout line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from unipose_sdk.cli.bench import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
