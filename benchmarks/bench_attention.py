"""Mixed attention: the fused kernels against the PyTorch paths, on the CPU and (when present) on CUDA.

    python benchmarks/bench_attention.py                 # every device present
    python benchmarks/bench_attention.py --device cpu    # one device

CPU: float32, B=1, 8 heads, D=64, T in {256, 512, 1024}, a bidirectional block of 80 at the end of the sequence;
the C++ kernel (through torch.ops.unipose.mixed_attention) against SDPA with the dense mask (the model's reference
path), the torch reference of the op, and causal SDPA (a lower bound that ignores the block).
CUDA: bf16, B in {1, 8}, T in {768, 1024, 2048, 4096}, 32 heads, D=128, same mask: the Triton kernel against causal
SDPA (flash), SDPA with the dense mask, and FlexAttention (compiled once per shape before timing).

Method: the same inputs for every implementation; warm-up calls timed apart; medians and p90 of the timed calls
(device-synchronised on CUDA); each result is checked against SDPA with the dense mask before it is timed.
TFLOP/s counts only the allowed (b, h, q, k) entries: 4 * D flops each (QK^T and PV).
Writes benchmarks/results/attention_<device>.json (raw, with machine, versions, command, git commit) and
attention_<device>.md; the last line of stdout is the JSON of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import unipose_sdk
import unipose_sdk.kernels  # noqa: F401  (defines torch.ops.unipose.mixed_attention)
from unipose_sdk.kernels import kernel_status
from unipose_sdk.kernels.reference import mixed_attention_reference
from unipose_sdk.models.attention import sdpa_dense
from unipose_sdk.models.attention_mask import MixedMask, dense_mask

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 80


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, cuda: bool) -> dict:
    def once() -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start_s = time.perf_counter()
        fn()
        return (time.perf_counter() - start_s) * 1e3

    warm = [once() for _ in range(warmup)]
    timed, cpu_time = [], []
    for _ in range(repeats):
        cpu_start = time.process_time()
        timed.append(once())
        cpu_time.append((time.process_time() - cpu_start) * 1e3)
    stats = {"median_ms": statistics.median(timed), "p90_ms": percentile(timed, 0.9), "min_ms": min(timed),
             "warmup_ms": warm, "repeats": repeats}
    if not cuda:  # CPU time summed over this process's threads: robust to other jobs on a shared machine
        stats["median_cpu_ms"] = statistics.median(cpu_time)
    return stats


def end_block_mask(batch: int, seq: int, device: str) -> MixedMask:
    return MixedMask.from_lists([seq - BLOCK] * batch, [seq] * batch, device=device)


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def versions() -> dict:
    found = {"torch": torch.__version__, "unipose_sdk": unipose_sdk.__version__}
    for name in ("numpy", "triton"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    return found


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def bench_cpu(args: argparse.Namespace) -> list[dict]:
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)  # the C++ kernel takes torch's thread count too
        rows += [{**row, "threads": threads} for row in bench_cpu_threads(args)]
    return rows


def bench_cpu_threads(args: argparse.Namespace) -> list[dict]:
    rows = []
    heads, head_dim, scale = 8, 64, 64 ** -0.5
    for seq in (256, 512, 1024):
        gen = torch.Generator().manual_seed(seq)
        q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen) for _ in range(3))
        mask = end_block_mask(1, seq, "cpu")
        fields = mask.fields()
        allowed = int(dense_mask(mask, seq, seq).sum()) * heads
        impls = {
            "fused_cpp": lambda: torch.ops.unipose.mixed_attention(q, k, v, *fields, scale),
            "sdpa_dense_mask": lambda: sdpa_dense(q, k, v, mask, scale),
            "torch_reference": lambda: mixed_attention_reference(q, k, v, *fields, scale),
            "sdpa_causal (ignores the block)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                      scale=scale),
        }
        expected = sdpa_dense(q, k, v, mask, scale)
        for name, fn in impls.items():
            if "causal" not in name:
                torch.testing.assert_close(fn(), expected, atol=1e-4, rtol=1e-4)
            stats = time_calls(fn, args.warmup, args.repeats, cuda=False)
            rows.append({"device": "cpu", "impl": name, "dtype": "float32", "B": 1, "H": heads, "D": head_dim,
                         "T": seq, "block": BLOCK, "allowed_entries": allowed,
                         "gflops": 4 * head_dim * allowed / stats["median_ms"] / 1e6, **stats})
    return rows


def bench_cuda(args: argparse.Namespace) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from unipose_sdk.models.attention_mask import mask_mod

    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    heads, head_dim, dtype = 32, 128, torch.bfloat16
    scale = head_dim ** -0.5
    for batch in (1, 8):
        for seq in (768, 1024, 2048, 4096):
            gen = torch.Generator(device="cuda").manual_seed(seq * 10 + batch)
            q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen, device="cuda", dtype=dtype)
                       for _ in range(3))
            mask = end_block_mask(batch, seq, "cuda")
            fields = mask.fields()
            bool_mask = dense_mask(mask, seq, seq)  # built once, outside the timed region
            allowed = int(bool_mask.sum()) * heads
            block_mask = create_block_mask(mask_mod(mask), batch, None, seq, seq, device="cuda")

            def causal_flash():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

            impls = {
                "fused_triton": lambda: torch.ops.unipose.mixed_attention(q, k, v, *fields, scale),
                "sdpa_causal_flash (ignores the block)": causal_flash,
                "sdpa_dense_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask,
                                                                          scale=scale),
                "flex_attention_compiled": lambda: flex(q, k, v, block_mask=block_mask, scale=scale),
            }
            expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bool_mask,
                                                      scale=scale)
            for name, fn in impls.items():
                compile_start = time.perf_counter()
                out = fn()  # first call: Triton autotune / torch.compile happen here, reported apart
                torch.cuda.synchronize()
                first_call_s = time.perf_counter() - compile_start
                error = None if "causal" in name else (out.float() - expected).abs().max().item()
                stats = time_calls(fn, args.warmup, args.repeats, cuda=True)
                rows.append({"device": "cuda", "impl": name, "dtype": "bfloat16", "B": batch, "H": heads,
                             "D": head_dim, "T": seq, "block": BLOCK, "allowed_entries": allowed,
                             "first_call_s": first_call_s, "max_abs_error_vs_fp32": error,
                             "tflops": 4 * head_dim * allowed / stats["median_ms"] / 1e9, **stats})
    return rows


def markdown(device: str, rows: list[dict], meta: dict) -> str:
    def key(r: dict) -> tuple:
        return r["B"], r["T"], r.get("threads")

    baseline = {key(r): r["median_ms"] for r in rows if r["impl"] == "sdpa_dense_mask"}
    cpu_baseline = {key(r): r.get("median_cpu_ms") for r in rows if r["impl"] == "sdpa_dense_mask"}
    rate = "gflops" if device == "cpu" else "tflops"
    cpu = device == "cpu"
    lines = [
        f"# Mixed attention on {device}: {meta['machine'].get('gpu') or meta['machine'].get('cpu', '?')}",
        "",
        f"torch {meta['versions']['torch']}, commit {meta['git_commit']}. {meta['note']}",
        "",
        f"| threads | B | T | implementation | median ms | p90 ms | {rate[:-1].upper()}/s (allowed entries) "
        "| speed-up vs dense-mask SDPA |" + (" median CPU ms (all threads) | CPU-time speed-up |" if cpu else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if cpu else ""),
    ]
    for r in rows:
        speedup = baseline[key(r)] / r["median_ms"]
        line = (f"| {r.get('threads', '-')} | {r['B']} | {r['T']} | {r['impl']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
                f"{r[rate]:.1f} | {speedup:.2f}x |")
        if cpu:
            line += f" {r['median_cpu_ms']:.2f} | {cpu_baseline[key(r)] / r['median_cpu_ms']:.2f}x |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1, max(1, torch.get_num_threads())], help="CPU thread counts, e.g. 1,2")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results", metavar="DIR",
                        help="results directory (default: benchmarks/results of this checkout)")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            sys.exit("--device cuda: no CUDA device here")
        devices.remove("cuda")

    summary = {}
    for device in devices:
        load_before = os.getloadavg()
        rows = bench_cpu(args) if device == "cpu" else bench_cuda(args)
        load_after = os.getloadavg()
        note = "Random inputs; block of 80 bidirectional positions at the end of each row."
        if device == "cpu":
            note += (f" The CPU was shared with other jobs during the run (1-min load average {load_before[0]:.1f}"
                     f" before, {load_after[0]:.1f} after, on {os.cpu_count()} cores): absolute times are noisy,"
                     " the ratios measured in the same process are the result.")
        command = ["python", *(Path(a).name if Path(a).is_absolute() else a for a in sys.argv)]  # no machine paths
        meta = {"device": device, "machine": machine_info(device), "versions": versions(),
                "kernels": kernel_status(), "command": command, "git_commit": git_commit(),
                "load_average_before": load_before, "load_average_after": load_after, "note": note,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record = {**meta, "results": rows}
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / f"attention_{device}.json").write_text(json.dumps(record, indent=1) + "\n")
        (args.output / f"attention_{device}.md").write_text(markdown(device, rows, meta))
        print(markdown(device, rows, meta))
        summary[device] = [{k: r[k] for k in ("impl", "threads", "B", "T", "median_ms", "p90_ms", "median_cpu_ms") if k in r}
                           for r in rows]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
