"""The 7B-shape slice exported at int4 and served by the ONNX Runtime backend through the four task classes.

    python benchmarks/quant_7b_serve.py --work quant-7b-serve -o benchmarks/results

The slice of benchmarks/quant_7b_cpu.py (the 7B widths, 2 decoder layers, 2 layers per vision tower, RANDOM
weights) with a small BPE text tokenizer padded to the 7B vocabulary layout (as `unipose bench --model
unipose-7b` builds it) is exported in float32 (validated against torch), quantized to int4, and both directories
are loaded with `backend="onnxruntime"`: Generator, Editor, Estimator and Describer each answer once (warm-up) and
then `--runs` times. Recorded per task and precision: the median wall time, the answer's pose-code count, and the
share of pose codes equal to the float export's (random weights: the answers themselves mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_7b_cpu import build_slice  # noqa: E402


def run_tasks(directory: Path, runs: int) -> dict:
    from unipose_sdk.body.examples import load_example_image, load_example_pose
    from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

    options = {"backend": "onnxruntime", "device": "cpu", "max_new_tokens": 4}
    pose, image = load_example_pose("squatting"), load_example_image()
    calls = {
        "generate": (Generator, lambda t: t.generate("a person squatting with both arms raised")),
        "edit": (Editor, lambda t: t.edit(pose, "raise your left arm")),
        "estimate": (Estimator, lambda t: t.estimate(image)),
        "describe_pose": (Describer, lambda t: t.describe(pose=pose)),
    }
    out = {}
    for name, (cls, call) in calls.items():
        task = cls.from_pretrained(directory, **options)
        result = call(task)  # warm-up
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            result = call(task)
            times.append((time.perf_counter() - started) * 1e3)
        codes = getattr(result, "pose_codes", None)
        out[name] = {"median_ms": statistics.median(times), "runs_ms": times,
                     "pose_codes": list(codes) if codes is not None else None, "text": result.text[:80],
                     "backend": result.run.backend, "described_as": task.session.runtime.describe()}
        task.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="quant-7b-serve")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="quant_7b_serve_cpu")
    parser.add_argument("-o", "--output", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from unipose_sdk.export.onnx import export_onnx, quantize_export

    from unipose_sdk.bench.report import git_commit, machine_info
    from unipose_sdk.text.prompts import TASK_TEMPLATES
    from unipose_sdk.text.tokenizer import build_tiny_tokenizer

    work = Path(args.work)
    float_dir, int4_dir = work / "slice-float", work / "slice-int4"
    tables = {}
    if not float_dir.exists():
        model = build_slice(2, 2)
        corpus = [t for pair in TASK_TEMPLATES.values() for t in pair] * 4 + ["a person squatting with arms raised"] * 4
        tokenizer = build_tiny_tokenizer(corpus, model.config.vocab.text_vocab_size, model.config.vocab)
        tables["float"] = export_onnx(model, float_dir, precision="fp32", progress=False, optimize=False,
                                      tokenizer=tokenizer).table()
        del model
    if not int4_dir.exists():
        tables["int4"] = quantize_export(float_dir, int4_dir, "int4").table()
    results = {p: run_tasks(d, args.runs) for p, d in (("float", float_dir), ("int4", int4_dir))}
    for task, entry in results["int4"].items():
        want = results["float"][task]["pose_codes"]
        if want is not None and entry["pose_codes"] is not None:
            entry["code_agreement_with_float"] = float(np.mean(np.asarray(entry["pose_codes"]) == np.asarray(want)))
        entry["speedup_vs_float"] = results["float"][task]["median_ms"] / entry["median_ms"]
    result = {
        "schema": "unipose-quant-serve/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quant_7b_serve.py " + " ".join(
            Path(a).name if Path(a).is_absolute() else a for a in (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "model": "unipose-7b shapes, 2 decoder layers, 2 layers per vision tower, RANDOM weights; a small BPE "
                 "tokenizer padded to the 7B layout",
        "export_tables": tables,
        "results": results,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for task in results["int4"]:
        f, q = results["float"][task], results["int4"][task]
        print(f"{task:14s} float {f['median_ms']:8.0f} ms  int4 {q['median_ms']:8.0f} ms  "
              f"({q['speedup_vs_float']:.2f}x)  codes {len(q['pose_codes'] or [])}  {q['described_as']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
