"""What a benchmark run records and writes: machine, versions, command, and the tables.

`write_outputs` writes `<stem>.json` (everything, every run), `<stem>.md` (the tables) and `<stem>.png` (a chart)
into one directory; nothing written names a path of the machine (the command's paths are reduced to their names).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipose_sdk.fileio import OutputSet


def command_line(argv: Sequence[str]) -> str:
    """`unipose ARGS` with every absolute path reduced to its last component (results are committed and shared)."""
    return " ".join(["unipose", *(Path(a).name if os.path.isabs(a) else a for a in argv)])


def machine_info(device: torch.device) -> dict[str, Any]:
    import importlib.metadata

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {d: version(d) for d in ("unipose-sdk", "torch", "transformers", "onnxruntime", "triton",
                                              "numpy")},
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return info


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# UniPose SDK latency: {result['model']} on {result['device']} ({result['dtype']})",
        "",
        f"- Date {result['date']}, git {result['git_commit']}, command `{result['command']}`",
        f"- Machine: {m.get('gpu', {}).get('name', m['cpu'])}; CPU {m['cpu']} ({m['cpu_count']} cores, torch threads "
        f"{m['torch_threads']}); load average {m['load_average_1_5_15']}. {result['load_note']}",
        f"- Versions: {m['versions']}",
        f"- Weights: {result['weights']}. LLM weights {result['llm_weight_bytes'] / 2**20:.1f} MiB; measured copy "
        f"bandwidth {result['copy_bandwidth_gbs']:.1f} GB/s (read + write) -> decode floor "
        f"{result['decode_floor_ms']:.3f} ms per step (weight bytes / copy bandwidth).",
        f"- Runs: median and p90 of {result['settings']['runs']} runs after {result['settings']['warmup']} warm-up "
        f"runs (reported apart); max_new_tokens {result['settings']['max_new_tokens']}. ONNX Runtime: "
        f"{result['onnxruntime']}.",
        "- Backends: " + "; ".join(f"`{k}` = {v}" for k, v in result["backends"].items()),
        "- Stages (ms): preprocess = prompt building (+ pose tokenizer encode for edit / describe pose); vision = "
        "image loading, crops and both towers; prefill+pose = the one-pass forward of the fast path; decode = ms "
        "per decode step (all rows of the batch); detokenize = pose tokenizer decode.",
        "",
    ]
    for batch in result["settings"]["batches"]:
        lines += [f"## Batch {batch}", "",
                  "| task | backend | total median ms | p90 ms | x vs ref 1 | x vs ref 2 | preprocess | vision | "
                  "prefill | pose step | prefill+pose | decode ms/step (steps) | detok | tok/s | decode GB/s | "
                  "peak MiB | warm-up ms (compile) | same output |",
                  "|" + "---|" * 18]
        entries = [e for e in result["results"] if e["batch"] == batch]
        for task in result["settings"]["tasks"]:
            rows = [e for e in entries if e["task"] == task]
            refs = {e["backend"]: e["stats"].get("total", {}).get("median_ms") for e in rows}
            for e in rows:
                s = e["stats"]
                med = s.get("total", {}).get("median_ms")

                def stage(name: str) -> str:
                    return _fmt(s.get(name, {}).get("median_ms"))

                def ratio(ref: str) -> str:
                    r = refs.get(ref)
                    return f"{r / med:.2f}x" if r and med else "-"
                dec = s.get("decode_ms_per_step")
                decode = f"{dec['median_ms']:.3f} ({s['decode_steps']:.0f})" if dec else "-"
                memory = next(iter(e["memory"].values()), None)
                lines.append(
                    f"| {task} | {e['backend']} | {_fmt(med)} | {_fmt(s.get('total', {}).get('p90_ms'))} | "
                    f"{ratio('ref-hf-eager')} | {ratio('ref-sdk-eager')} | {stage('preprocess')} | {stage('vision')} | "
                    f"{stage('prefill')} | {stage('pose_step')} | {stage('prefill_pose')} | {decode} | "
                    f"{stage('detokenize')} | {_fmt(s.get('decode_tokens_per_s'), 0)} | "
                    f"{_fmt(s.get('decode_weight_gbs'))} | {_fmt(memory, 0)} | "
                    f"{_fmt(e['warmup']['total_ms'], 0)} ({_fmt(e['warmup']['compile_ms'], 0)}) | "
                    f"{'yes' if e['same_output_as_first_reference'] else 'NO'} |")
        lines.append("")
    lines += ["x vs ref = reference median / this backend's median (higher is faster). Pose tasks on the fast path "
              "stop after the pose block (pose only); the references decode the trailing text as the official code "
              "does. 'same output' compares pose codes (pose tasks) or text (description tasks) with reference 1.", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    batches = result["settings"]["batches"]
    tasks = result["settings"]["tasks"]
    backends = list(result["backends"])
    fig = Figure(figsize=(max(7.0, 1.9 * len(tasks)), 3.6 * len(batches)), constrained_layout=True)
    axes = fig.subplots(len(batches), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(backends))
    for ax, batch in zip(axes, batches):
        for j, backend in enumerate(backends):
            med, err = [], []
            for task in tasks:
                e = next((e for e in result["results"] if e["batch"] == batch and e["task"] == task
                          and e["backend"] == backend), None)
                total = e["stats"].get("total", {}) if e else {}
                med.append(total.get("median_ms", np.nan))
                err.append(max(0.0, total.get("p90_ms", np.nan) - total.get("median_ms", np.nan)))
            x = np.arange(len(tasks)) + (j - (len(backends) - 1) / 2) * width
            ax.bar(x, med, width, yerr=[np.zeros(len(err)), err], label=backend, capsize=2)
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_ylabel("end-to-end ms (median, p90 bar)")
        ax.set_yscale("log")
        ax.set_title(f"{result['model']} on {result['device']} ({result['dtype']}), batch {batch}")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def write_outputs(result: dict[str, Any], out_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """Write the JSON, markdown and chart of `result` into `out_dir` (created); returns their paths. The three
    files replace earlier ones of the same stem together or not at all (an interrupted run leaves the old set)."""
    device_type = "cuda" if result["device"].startswith("cuda") else "cpu"
    stem = stem or f"latency_{result['model'].removeprefix('unipose-')}_{device_type}"
    names = {"json": f"{stem}.json", "markdown": f"{stem}.md", "chart": f"{stem}.png"}
    result["outputs"] = dict(names)
    with OutputSet(out_dir, list(names.values()), overwrite=True) as out:
        out.path(names["json"]).write_text(json.dumps(result, indent=1), encoding="utf-8")
        out.path(names["markdown"]).write_text(markdown(result), encoding="utf-8")
        chart(result, out.path(names["chart"]))
    return {key: Path(out_dir) / name for key, name in names.items()}
