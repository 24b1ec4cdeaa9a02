"""Quantized graphs at the 7B shapes on the CPU: float vs int8 vs int4, same process, same inputs, interleaved.

    python benchmarks/quant_7b_cpu.py --threads 2 --work quant-7b-work -o benchmarks/results

A slice of UniPose-7B (the 7B widths: hidden 4096, MLP 14336, 32 / 8 heads of 128, vocabulary 34132; CLIP-L and
ViT-H widths) with a few layers (default: 2 decoder layers, 2 layers per vision tower) and RANDOM weights
(N(0, 0.02)): latency does not depend on the weights' values, and the weights far exceed the CPU caches as they
do at 32 layers, so the per-token cost of a matrix product is what a full model pays per layer. Random weights
make task metrics meaningless, so accuracy here is each graph's output error against the float graph (relative
L2 error, and for the decoder the share of logit positions whose arg-max token is unchanged).

The slice is exported once (float32, validated against torch), then quantized with `quantize_export` at int8,
int4 and mixed. Timed per precision, through ONNX Runtime sessions as the onnxruntime backend opens them (idle
threads sleep, `--threads` intra-op threads):
- prefill_pose: the SDK's one pass over a 40-token prompt + BEGIN + 80 pose queries (121 tokens, logits at 80);
- pose_block: the 81-token pose step after a 41-token prefix (logits at 80);
- decode: one token against a 200-slot cache (logits at 1), the per-token cost of trailing text;
- vision: both towers at batch 1 (577 + 192 tokens).
Each timed round runs every precision once, in turn, so background load hits all of them alike; warm-up rounds
are reported apart. Writes <name>.json (every run, machine, versions, command) and <name>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCENARIOS = {  # name: (graph, tokens, keys, logits)
    "prefill_pose": ("decoder", 121, 121, 80),
    "pose_block": ("decoder", 81, 122, 80),
    "decode": ("decoder", 1, 200, 1),
    "vision": ("vision", None, None, None),
}
PRECISIONS = ("float", "int8", "int4")


def build_slice(layers: int, vision_layers: int) -> torch.nn.Module:
    from unipose_sdk.models.config import get_preset
    from unipose_sdk.models.unipose import UniPoseModel

    base = get_preset("unipose-7b")
    config = dataclasses.replace(
        base, llm=dataclasses.replace(base.llm, num_hidden_layers=layers),
        clip=dataclasses.replace(base.clip, num_hidden_layers=vision_layers),
        pose_vit=dataclasses.replace(base.pose_vit, depth=vision_layers))
    torch.manual_seed(0)
    model = UniPoseModel.from_config(config, device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def feeds_for(spec, config, scenario: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    from unipose_sdk.export.onnx import example_inputs

    _, tokens, keys, logits = SCENARIOS[scenario]
    sizes = {} if tokens is None else {"tokens": tokens, "keys": keys, "logits": logits}
    inputs = example_inputs(spec, config, torch.float32, batch=1, seed=3, **sizes)
    return {n: t.numpy() for n, t in zip(spec.input_names, inputs)}


def session(path: Path, threads: int):  # noqa: ANN201
    """An ONNX Runtime session with the onnxruntime backend's own options."""
    import onnxruntime as ort

    from unipose_sdk.runtime.onnxruntime import OrtOptions, _session_options

    return ort.InferenceSession(str(path), sess_options=_session_options(ort, OrtOptions(num_threads=threads)),
                                providers=["CPUExecutionProvider"])


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "p90_ms": float(np.percentile(values, 90)),
            "min_ms": min(values), "runs": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--work", default="quant-7b-work", help="where the exports are written (reused if present)")
    parser.add_argument("--name", default="quant_7b_cpu")
    parser.add_argument("-o", "--output", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from unipose_sdk.export.artifacts import read_directory
    from unipose_sdk.export.onnx import export_onnx, quantize_export

    from unipose_sdk.bench.report import git_commit, machine_info

    work = Path(args.work)
    dirs = {p: work / f"slice-{p}" for p in ("float", "int8", "int4", "mixed")}
    reports = {}
    if not dirs["float"].exists():
        started = time.perf_counter()
        model = build_slice(args.layers, args.vision_layers)
        report = export_onnx(model, dirs["float"], precision="fp32", progress=False, optimize=False)
        reports["float"] = {"seconds": time.perf_counter() - started, "table": report.table()}
        del model
    for precision in ("int8", "int4", "mixed"):
        if not dirs[precision].exists():
            started = time.perf_counter()
            report = quantize_export(dirs["float"], dirs[precision], precision)
            reports[precision] = {
                "seconds": time.perf_counter() - started, "table": report.table(),
                "graphs": {g.name: {"weights": g.weights, "relative_error": g.quant_relative_error,
                                    "token_agreement": g.token_agreement, "size_mb": g.size_mb}
                           for g in report.graphs}}
    exported = {p: read_directory(d) for p, d in dirs.items()}
    config = exported["float"].config
    sizes_mb = {p: {name: sum(f.stat().st_size for f in d.glob(f"{name}.onnx*")) / 2**20
                    for name in ("embed", "decoder", "vision")} for p, d in dirs.items()}

    sessions = {p: {g: session(dirs[p] / f"{g}.onnx", args.threads) for g in ("decoder", "vision")}
                for p in PRECISIONS}
    feeds = {s: feeds_for(exported["float"].graphs[graph].spec, config, s) for s, (graph, *_) in SCENARIOS.items()}

    # Output error of each timed scenario against float (the same feeds).
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    reference = {s: sessions["float"][SCENARIOS[s][0]].run(None, feeds[s]) for s in SCENARIOS}
    for precision in PRECISIONS[1:]:
        accuracy[precision] = {}
        for scenario, (graph, *_) in SCENARIOS.items():
            got = sessions[precision][graph].run(None, feeds[scenario])
            want = reference[scenario][0]
            entry = {"relative_error": float(np.linalg.norm(got[0] - want) / np.linalg.norm(want))}
            if graph == "decoder":
                entry["token_agreement"] = float((got[0].argmax(-1) == want.argmax(-1)).mean())
                entry["kv_relative_error"] = float(np.linalg.norm(got[1] - reference[scenario][1])
                                                   / np.linalg.norm(reference[scenario][1]))
            accuracy[precision][scenario] = entry

    times: dict[str, dict[str, list[float]]] = {p: {s: [] for s in SCENARIOS} for p in PRECISIONS}
    warm: dict[str, dict[str, list[float]]] = {p: {s: [] for s in SCENARIOS} for p in PRECISIONS}
    load_before = list(__import__("os").getloadavg())
    for round_index in range(args.warmup + args.runs):
        target = warm if round_index < args.warmup else times
        for precision in PRECISIONS:
            for scenario, (graph, *_) in SCENARIOS.items():
                started = time.perf_counter()
                sessions[precision][graph].run(None, feeds[scenario])
                target[precision][scenario].append((time.perf_counter() - started) * 1e3)
        print(f"round {round_index + 1}/{args.warmup + args.runs}: "
              + ", ".join(f"{p} decode {times[p]['decode'][-1] if times[p]['decode'] else warm[p]['decode'][-1]:.0f}"
                          " ms" for p in PRECISIONS), file=sys.stderr)
    stats = {p: {s: summary(times[p][s]) for s in SCENARIOS} for p in PRECISIONS}
    speedup = {p: {s: stats["float"][s]["median_ms"] / stats[p][s]["median_ms"] for s in SCENARIOS}
               for p in PRECISIONS}
    result = {
        "schema": "unipose-quant-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quant_7b_cpu.py " + " ".join(Path(a).name if Path(a).is_absolute() else a
                                                       for a in (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "load_average_before": load_before,
        "load_average_after": list(__import__("os").getloadavg()),
        "model": f"unipose-7b shapes, {args.layers} decoder layers, {args.vision_layers} layers per vision tower, "
                 "RANDOM weights N(0, 0.02) (latency does not depend on values; task metrics would be meaningless)",
        "scenarios": {s: {"graph": g, "tokens": t, "cache_slots": k, "logit_positions": n}
                      for s, (g, t, k, n) in SCENARIOS.items()},
        "settings": {"threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                     "block_size": 128, "accuracy_level": 4},
        "plans": {p: {g: q.scheme for g, q in exported[p].quantization.items()} for p in dirs},
        "file_mb": sizes_mb,
        "stats": stats,
        "speedup_vs_float": speedup,
        "accuracy_vs_float": accuracy,
        "warmup_ms": warm,
        "runs_ms": times,
        "export_reports": reports,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{args.name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"# Quantized graphs at the 7B shapes, CPU ({result['machine']['cpu']}, "
             f"{result['settings']['threads']} threads)", "", result["model"] + ".", "",
             "| scenario | " + " | ".join(f"{p} ms (p90)" for p in PRECISIONS) + " | int8 speedup | int4 speedup |",
             "|---|" + "---|" * (len(PRECISIONS) + 2)]
    for scenario in result["scenarios"]:
        cells = [f"{result['stats'][p][scenario]['median_ms']:.1f} ({result['stats'][p][scenario]['p90_ms']:.1f})"
                 for p in PRECISIONS]
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {result['speedup_vs_float']['int8'][scenario]:.2f}x"
                     f" | {result['speedup_vs_float']['int4'][scenario]:.2f}x |")
    lines += ["", "Output error against the float graph on the timed inputs (relative L2; decoder: arg-max token "
              "agreement of the logits). With random weights the logits are nearly flat over 34132 ids, so the "
              "arg-max agreement is a stress figure, not a task metric (the embedded model's task agreement and "
              "metrics are in quant_tiny_accuracy.md):", "",
              "| scenario | int8 error | int8 tokens | int4 error | int4 tokens |",
              "|---|---|---|---|---|"]
    for scenario in result["scenarios"]:
        row = []
        for p in ("int8", "int4"):
            acc = result["accuracy_vs_float"][p][scenario]
            row += [f"{acc['relative_error']:.3f}",
                    f"{acc['token_agreement']:.1%}" if "token_agreement" in acc else "-"]
        lines.append(f"| {scenario} | " + " | ".join(row) + " |")
    lines += ["", "File sizes (MB): " + "; ".join(
        f"{p}: " + ", ".join(f"{g} {mb:.0f}" for g, mb in sizes.items()) for p, sizes in result["file_mb"].items()),
        "", f"Median of {result['settings']['runs']} interleaved rounds after {result['settings']['warmup']} warm-up "
        f"rounds; 1-minute load average before / after: {result['load_average_before'][0]:.2f} / "
        f"{result['load_average_after'][0]:.2f} on {result['machine']['cpu_count']} cores shared with other jobs, "
        "so single timings scatter widely (compare p90 and median); every precision ran in every round, so the "
        f"ratios share the same load. Command: `{result['command']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
