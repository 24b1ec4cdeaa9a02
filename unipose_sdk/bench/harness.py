"""The benchmark loop: every task through the public task classes, on every backend, same weights and inputs.

Backends (one process, one table):
- `ref-hf-eager`, `ref-sdk-eager`: the two PyTorch references (references.py), step by step, trailing text decoded;
- `sdk-fast`: what `Generator.from_pretrained(model, backend="torch")` runs (compile off): the fast path, pose
  tasks stopping after the pose block;
- `sdk-fast-compiled`: the same with `compile=True` (default on CUDA; on the CPU only when asked: compiling takes
  minutes there);
- `onnxruntime`: an export directory through ONNX Runtime, when one is given (the tiny model is exported into a
  new path first, so one command reproduces every row); with `precisions`, one more row per weight precision,
  `onnxruntime-int8` / `-int4` / `-mixed`, each a quantized copy of that float export (`<dir>-<precision>` beside
  it, written first when missing), and "same output" also says whether its answers equal the float export's.

Per cell: warm-up runs reported apart (with the compile time they include), then timed runs: median and p90 per
stage, peak memory while they run, decode bandwidth against the measured copy-bandwidth floor, and whether the
answers equal reference 1's (pose codes for pose tasks, text for the description tasks).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipose_sdk.bench.choices import BACKENDS, CHATPOSE_TASKS, RANDOM_MODELS, TASKS
from unipose_sdk.bench.references import LoadedParts, load_parts, reference_sessions
from unipose_sdk.bench.report import command_line, git_commit, machine_info
from unipose_sdk.options import BaseOptions, Device, PoseTaskOptions, resolve_device
from unipose_sdk.session import UniPose
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

STAGES = ("preprocess", "vision", "prefill", "pose_step", "prefill_pose", "decode", "detokenize", "pose_head", "llm",
          "total")
COUNTS = ("batch_size", "decode_steps", "pose_steps")  # result fields beside timing_ms (which holds ms only)


@dataclass
class Backend:
    name: str
    label: str
    session: UniPose
    step_by_step: bool  # the references: one_pass=False and pose_only=False (the official decoding)
    _tasks: dict[type, Any] = field(default_factory=dict)

    def warmup_ms(self) -> float:
        """Compile time the decoder has spent so far (the compiled fast path records it; 0 elsewhere)."""
        return float(getattr(self.session.runtime.llm, "warmup_ms", 0.0))

    def task(self, task_class: type, max_new_tokens: int) -> Any:
        """The task class over this backend's session, built once."""
        key = (task_class, max_new_tokens)
        if key not in self._tasks:
            options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
            if issubclass(task_class.options_class, PoseTaskOptions):
                options.update(pose_only=not self.step_by_step, one_pass=not self.step_by_step)
            self._tasks[key] = task_class.from_session(self.session, task_class.options_class(**options))
        return self._tasks[key]


def _fast_session(model: str, parts: LoadedParts | None, device: torch.device, dtype: torch.dtype,
                  compile: bool) -> UniPose:
    """The product's own session: loaded as `from_pretrained` loads it; the random 7B (no directory) is wrapped
    in the torch runtime the same way."""
    if model not in RANDOM_MODELS:
        return UniPose.load(BaseOptions(model=model, backend="torch", device=device.type, dtype=dtype,
                                        compile=compile))
    from unipose_sdk.runtime.torch import TorchRuntime

    parts = load_parts(model, device, dtype)  # a copy of its own: the runtime may rewrite its modules
    runtime = TorchRuntime(parts.model, parts.config, device, dtype, compile=compile)
    return UniPose(runtime, parts.tokenizer, f"{model} (random weights)", True)


def make_backends(model: str, device: torch.device, dtype: torch.dtype, parts: LoadedParts, *,
                  compile_cpu: bool = False, onnx_session: UniPose | None = None,
                  only: Sequence[str] | None = None,
                  quantized_sessions: dict[str, UniPose] | None = None) -> list[Backend]:
    wanted = set(only or BACKENDS)
    backends = [Backend(name, label, session, step_by_step=True)
                for name, label, session in reference_sessions(parts) if name in wanted]
    if "sdk-fast" in wanted:
        backends.append(Backend("sdk-fast", "SDK fast path (the default): static cache, prompt + pose block in one "
                                "pass, pose only; fast vision (matrix-product resize, packed towers)",
                                _fast_session(model, parts, device, dtype, compile=False), step_by_step=False))
    if "sdk-fast-compiled" in wanted and (device.type == "cuda" or compile_cpu):
        session = _fast_session(model, parts, device, dtype, compile=True)
        mode = getattr(session.runtime.llm, "mode", "default")
        backends.append(Backend("sdk-fast-compiled", f"SDK fast path + torch.compile (mode={mode})", session,
                                step_by_step=False))
    if "onnxruntime" in wanted and onnx_session is not None:
        backends.append(Backend("onnxruntime", "SDK fast path on ONNX Runtime (exported graphs; matrix-product "
                                "resize, then the vision graph)", onnx_session, step_by_step=False))
    if "onnxruntime" in wanted:
        for precision, session in (quantized_sessions or {}).items():
            backends.append(Backend(f"onnxruntime-{precision}", f"SDK fast path on ONNX Runtime, {precision} weights "
                                    "(`unipose export --precision`)", session, step_by_step=False))
    return backends


def quantized_directory(onnx_dir: str, precision: str) -> Path:
    """Where the `precision` copy of a float export lives: beside it, `<dir>-<precision>`."""
    path = Path(onnx_dir)
    return path.with_name(f"{path.name}-{precision}")


def load_quantized_sessions(onnx_dir: str | None, device: torch.device, precisions: Sequence[str],
                            ) -> tuple[dict[str, UniPose], list[str]]:
    """A session per quantized precision of the float export `onnx_dir` (quantized into a new directory beside it
    when missing), and a note per precision."""
    from unipose_sdk.formats import weight_precision

    sessions, notes = {}, []
    for precision in (weight_precision(p) for p in precisions):
        if precision == "float":
            continue
        if not onnx_dir:
            notes.append(f"{precision}: not run: pass --onnx-dir")
            continue
        target = quantized_directory(onnx_dir, precision)
        try:
            note = f"{precision}: loaded {target.name}"
            if not target.exists():
                from unipose_sdk.export.onnx import quantize_export

                started = time.perf_counter()
                quantize_export(onnx_dir, target, precision)
                note = f"{precision}: quantized {Path(onnx_dir).name} into {target.name} in " \
                       f"{time.perf_counter() - started:.0f} s"
            sessions[precision] = UniPose.load(BaseOptions(model=str(target), backend="onnxruntime",
                                                           device=device.type))
            notes.append(note)
        except Exception as exc:  # optional rows: say why one is missing instead of failing the benchmark
            notes.append(f"{precision}: not run: {type(exc).__name__}: {exc}")
    return sessions, notes


def load_onnx_session(onnx_dir: str | None, device: torch.device, model: str = "unipose-tiny",
                      ) -> tuple[UniPose | None, str]:
    """The onnxruntime backend's session, or None and why. For the tiny model a missing directory is exported
    first (the embedded unipose-tiny, fp32, validated), so one command reproduces the ONNX Runtime rows."""
    if not onnx_dir:
        return None, "not run: pass --onnx-dir <directory written by `unipose export`>"
    name = Path(onnx_dir).name
    try:
        from unipose_sdk.export.artifacts import is_export_directory

        note = f"loaded {name}"
        if model == "unipose-tiny" and not Path(onnx_dir).exists():
            from unipose_sdk.export.onnx import export_onnx

            started = time.perf_counter()
            export_onnx(None, onnx_dir, precision="fp32", progress=False)
            note = f"exported the embedded unipose-tiny (fp32) to {name} in {time.perf_counter() - started:.0f} s"
        elif not is_export_directory(onnx_dir):
            return None, (f"not run: {name} is not a directory written by `unipose export` (pass a new path "
                          "with --model unipose-tiny to export into it)")
        session = UniPose.load(BaseOptions(model=onnx_dir, backend="onnxruntime", device=device.type))
        return session, (f"{note}; {torch.get_num_threads()} intra-op threads per session (torch's count), "
                         "idle threads sleep")
    except Exception as exc:  # the backend is optional: say why it is missing instead of failing the benchmark
        return None, f"not run: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------------------------
# Tasks


def task_inputs(batch: int) -> dict[str, Any]:
    from unipose_sdk.body.examples import load_example_pose

    rng = np.random.default_rng(0)
    return {
        "image": [(rng.random((256, 192, 3)) * 255).astype(np.uint8) for _ in range(batch)],
        "text": ["a person squatting with both arms raised above the head"] * batch,
        "pose": [load_example_pose("sitting")] * batch,
        "instruction": ["raise your left arm above your head"] * batch,
    }


def run_task(task: str, backend: Backend, inputs: dict[str, Any], max_new_tokens: int) -> list[Any]:
    """One batch of `task` through the public task class on `backend`'s session -> its results."""
    if task == "estimate":
        return backend.task(Estimator, max_new_tokens).estimate(inputs["image"])
    if task == "generate":
        return backend.task(Generator, max_new_tokens).generate(inputs["text"])
    if task == "edit":
        return backend.task(Editor, max_new_tokens).edit(inputs["pose"], inputs["instruction"])
    if task == "describe_pose":
        return backend.task(Describer, max_new_tokens).describe(pose=inputs["pose"])
    if task == "describe_image":
        return backend.task(Describer, max_new_tokens).describe(image=inputs["image"])
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def answer_signature(results: list[Any]) -> list[Any]:
    """What must be equal across backends: pose codes for pose tasks (ChatPose's, which have none: the regressed
    rotation matrices to 3 decimals), the text for the description tasks."""
    def one(result: Any) -> Any:
        codes = getattr(result, "pose_codes", None)
        if codes is None:
            return result.text
        return list(codes) if codes else [round(v, 3) for v in result.pose.rotmat.flatten().tolist()]

    return [one(r) for r in results]


def run_timing(result: Any) -> dict[str, float]:
    """ms per stage of one batch (`timing_ms`), with the batch's counts from the result's own fields."""
    timing = {k: float(v) for k, v in result.timing_ms.items()}
    timing.update({name: float(getattr(result, name)) for name in COUNTS})
    return timing


# ---------------------------------------------------------------------------------------------------------------
# Measurement


class PeakRSS:
    """Samples the process RSS every few ms in a thread (CPU peak memory while a backend runs)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak = self.rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        with PeakRSS() as sampler:
            yield out
        out["peak_process_rss_mib"] = sampler.peak / 2**20


def copy_bandwidth_gbs(device: torch.device, mib: int) -> float:
    """Device copy bandwidth: bytes read + written per second, median of 7 copies of a `mib` MiB buffer."""
    n = mib * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    del src, dst
    return 2 * n * 4 / statistics.median(times[1:]) / 1e9


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(runs: list[dict[str, float]], batch: int, weight_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in STAGES:
        values = [r[stage] for r in runs if stage in r]
        if values:
            out[stage] = {"median_ms": statistics.median(values), "p90_ms": percentile(values, 90)}
    steps = [r.get("decode_steps", 0.0) for r in runs]
    if runs and all(s > 0 for s in steps):
        per_token = [r["decode"] / r["decode_steps"] for r in runs]
        median_token = statistics.median(per_token)
        out["decode_ms_per_step"] = {"median_ms": median_token, "p90_ms": percentile(per_token, 90)}
        out["decode_steps"] = statistics.median(steps)
        out["decode_tokens_per_s"] = batch * 1e3 / median_token
        out["decode_weight_gbs"] = weight_bytes / (median_token * 1e-3) / 1e9  # every step reads every weight once
    else:
        out["decode_steps"] = 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


def bench(model: str = "unipose-tiny", device_name: str = "cpu", batches: Sequence[int] = (1,),
          tasks: Sequence[str] = TASKS, runs: int = 10, warmup: int = 2, max_new_tokens: int = 32,
          compile_cpu: bool = False, onnx_dir: str | None = None, only: Sequence[str] | None = None,
          dtype: str | None = None, argv: Sequence[str] = (), precisions: Sequence[str] = ("float",),
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Run the benchmark; returns the result document that report.write_outputs writes (JSON-serialisable).
    argv: the command's arguments, recorded (paths reduced to their names) so the run can be repeated."""
    device = resolve_device(Device(device_name))
    torch_dtype = BaseOptions(dtype=dtype).torch_dtype(device)
    started = time.perf_counter()
    parts = load_parts(model, device, torch_dtype)
    if parts.config.family == "chatpose":  # it reads no poses: edit and pose description do not apply
        skipped = [t for t in tasks if t not in CHATPOSE_TASKS]
        tasks = [t for t in tasks if t in CHATPOSE_TASKS]
        if skipped:
            log(f"[bench] {Path(model).name} is a ChatPose model: {', '.join(skipped)} not run (it reads no poses)")
    onnx_session, onnx_note = load_onnx_session(onnx_dir, device, model) if (
        not only or "onnxruntime" in only) else (None, "not run: not among --backends")
    quantized, quantized_notes = load_quantized_sessions(onnx_dir, device, precisions) if (
        not only or "onnxruntime" in only) else ({}, [])
    if onnx_session is None and "float" not in precisions:
        onnx_note = "float rows not asked for (--precision)"
    backends = make_backends(model, device, torch_dtype, parts, compile_cpu=compile_cpu,
                             onnx_session=onnx_session if "float" in precisions else None, only=only,
                             quantized_sessions=quantized)
    weight_bytes = sum(p.numel() * p.element_size() for p in parts.model.llm.parameters())
    bandwidth = copy_bandwidth_gbs(device, 1024 if device.type == "cuda" else 256)
    result: dict[str, Any] = {
        "schema": "unipose-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "git_commit": git_commit(),
        "machine": machine_info(device),
        "load_note": "",
        "model": Path(model).name, "weights": parts.note, "device": str(device),
        "dtype": str(torch_dtype).replace("torch.", ""),
        "llm_weight_bytes": weight_bytes,
        "copy_bandwidth_gbs": bandwidth,
        "decode_floor_ms": weight_bytes / (bandwidth * 1e9) * 1e3,
        "settings": {"runs": runs, "warmup": warmup, "max_new_tokens": max_new_tokens, "batches": list(batches),
                     "tasks": list(tasks)},
        "backends": {b.name: b.label for b in backends},
        "onnxruntime": onnx_note if not quantized_notes else f"{onnx_note}; " + "; ".join(quantized_notes),
        "precisions": list(precisions),
        "results": [],
    }
    for batch in batches:
        inputs = task_inputs(batch)
        for task in tasks:
            reference_signature = float_signature = None
            for backend in backends:
                entry, signature = _cell(task, backend, inputs, batch, runs, warmup, max_new_tokens, weight_bytes,
                                         device)
                reference_signature = signature if reference_signature is None else reference_signature
                entry["same_output_as_first_reference"] = signature == reference_signature
                if backend.name == "onnxruntime":
                    float_signature = signature
                elif backend.name.startswith("onnxruntime-"):
                    entry["same_output_as_float_export"] = (None if float_signature is None
                                                            else signature == float_signature)
                result["results"].append(entry)
                total = entry["stats"].get("total", {}).get("median_ms", float("nan"))
                log(f"[bench] {result['model']} {device} B={batch} {task:15s} {backend.name:18s} median "
                    f"{total:9.2f} ms  same output: {entry['same_output_as_first_reference']}")
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _cell(task: str, backend: Backend, inputs: dict[str, Any], batch: int, runs: int, warmup: int,
          max_new_tokens: int, weight_bytes: int, device: torch.device) -> tuple[dict[str, Any], list[Any]]:
    """Warm-up runs (timed apart), then `runs` timed runs of one task on one backend -> (entry, answers' signature)."""
    warm_start = time.perf_counter()
    compile_before = backend.warmup_ms()
    first_ms = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        run_task(task, backend, inputs, max_new_tokens)
        first_ms = first_ms if first_ms is not None else (time.perf_counter() - t0) * 1e3
    warm_total = (time.perf_counter() - warm_start) * 1e3
    timings = []
    with peak_memory(device) as memory:
        for _ in range(runs):
            answers = run_task(task, backend, inputs, max_new_tokens)
            timings.append(run_timing(answers[0]))
    return {
        "task": task, "backend": backend.name, "batch": batch,
        "warmup": {"runs": warmup, "first_call_ms": first_ms, "total_ms": warm_total,
                   "compile_ms": backend.warmup_ms() - compile_before},
        "stats": summarize(timings, batch, weight_bytes),
        "memory": memory,
        "answer_text": answers[0].text[:120],
        "runs": timings,
    }, answer_signature(answers)
