"""`unipose bench`: end-to-end latency per task and backend, against two PyTorch references, in one command.

Backends, all in one process on the same weights and inputs (method: /work/shared/design/performance.md):
- `ref-hf-eager` (reference 1, the official-style stack): Hugging Face transformers' `MistralForCausalLM`,
  eager attention, a DynamicCache and an explicit 4-D additive float mask (the mixed mask), with our LLM
  state dict assigned into it; prefill, the pose step and the trailing decode steps one by one, logits at every
  position, as users of the official code run it.
- `ref-sdk-eager` (reference 2): this SDK's model, eager, dense masked SDPA (`use_attention_impl("sdpa_dense")`),
  step by step, no fast path, trailing text decoded.
- `sdk-fast`: the SDK's default path: fused mixed attention, static KV cache reused across calls, prefill and
  pose block in one forward, pose tasks stop after the pose block. Eager model calls.
- `sdk-fast-compiled`: the same with the model calls compiled (`torch.compile`, CUDA graphs on CUDA). Default on
  CUDA; on the CPU only with --compile (compiling takes minutes there).
- `onnxruntime`: the exported graphs through ONNX Runtime, when an export directory is given (--onnx-dir; for the
  tiny model a new path is exported first, so `unipose bench --onnx-dir out/tiny-onnx` reproduces every row).

Every backend runs the task through the SDK's own pipeline (`tasks/pipeline.py`: prompt building, images,
pose tokenizer) with the same prompt builders as the task classes; only the generation call and the vision route
differ. The reference rows take the reference vision route (`preprocess.preprocess_batch` + the VisionEncoder
module); the fast rows take the SDK's default one (`runtime/fast_vision.py`: resize as cropped matrix products,
then packed towers on torch or the vision graph on ONNX Runtime; equal within float rounding). The pose tokenizer
is the SDK's eager module for every torch backend.

Output under -o: `latency_<model>_<device>.json` (raw: machine, versions, command, git commit, load note, every
run), `.md` (tables) and `.png` (chart). The last stdout line is the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk import generation
from unipose_sdk.generation import GenerationResult, left_pad, pose_codes_from_logits
from unipose_sdk.models.config import VocabLayout
from unipose_sdk.models.llm import MistralLM

TASKS = ("estimate", "generate", "edit", "describe_pose", "describe_image")
POSE_TASKS = ("estimate", "generate", "edit")
REFERENCES = ("ref-hf-eager", "ref-sdk-eager")
STAGES = ("preprocess", "vision", "prefill", "pose_step", "prefill_pose", "decode", "detokenize", "llm", "total")


# ---------------------------------------------------------------------------------------------------------------
# Reference 1: transformers' Mistral, eager, DynamicCache, explicit 4-D mixed mask


class HFReference:
    """transformers `MistralForCausalLM` (eager attention) holding the SAME weight tensors as `llm`."""

    def __init__(self, llm: MistralLM) -> None:
        from transformers import MistralConfig, MistralForCausalLM
        from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding

        c = llm.config
        config = MistralConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rope_theta=c.rope_theta,
            rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
            tie_word_embeddings=c.tie_word_embeddings, sliding_window=None,
        )
        config._attn_implementation = "eager"
        with torch.device("meta"):
            model = MistralForCausalLM(config)
        # assign=True: the HF modules take our tensors (no copy; 7B fits once). The rotary buffer is not in the
        # state dict, so it is rebuilt on the real device.
        model.load_state_dict(llm.state_dict(), strict=True, assign=True)
        with torch.device(llm.device):
            model.model.rotary_emb = MistralRotaryEmbedding(config=config)
        self.model = model.eval()
        self.device = llm.device
        self.dtype = llm.dtype

    def forward(self, embeds: Tensor, positions: Tensor, mask: Tensor, cache: Any) -> Tensor:
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        return out.logits  # every position, as the official code computes them

    def additive_mask(self, valid: Tensor, num_new: int, block: tuple[int, int] | None) -> Tensor:
        """[B, 1, T, K] float mask for T new tokens at key slots K-T..K-1: 0 where allowed, the dtype's min
        elsewhere. valid [B, K]: keys that belong to the row (not left padding, not rows appended while the row
        waited or had finished). Causal, plus bidirectional inside `block` (slot range of the pose queries)."""
        keys = valid.shape[1]
        q = torch.arange(keys - num_new, keys, device=valid.device).view(-1, 1)
        k = torch.arange(keys, device=valid.device).view(1, -1)
        allowed = k <= q
        if block is not None:
            inside_q = (q >= block[0]) & (q < block[1])
            inside_k = (k >= block[0]) & (k < block[1])
            allowed = allowed | (inside_q & inside_k)
        allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)  # [B, T, K]
        zero = torch.zeros((), dtype=self.dtype, device=valid.device)
        neg = torch.tensor(torch.finfo(self.dtype).min, dtype=self.dtype, device=valid.device)
        return torch.where(allowed, zero, neg).unsqueeze(1)

    @torch.inference_mode()
    def generate(self, rows: Sequence[Tensor], vocab: VocabLayout, max_new_tokens: int, *,
                 first_token: int | None = None, timings: dict[str, float] | None = None,
                 pose_code_vectors: Tensor | None = None) -> list[GenerationResult]:
        """Greedy generation, steps one by one, all rows in lockstep (HF batching: a row that waits or has
        finished still receives tokens, masked out of every later query). Same output as `generation.generate`."""
        from transformers import DynamicCache

        clock = generation._StageClock(timings, self.device)
        embed = self.model.model.embed_tokens
        prompt, lengths = left_pad([r.to(self.device, self.dtype) for r in rows])
        batch, padded, _ = prompt.shape
        length = torch.tensor(lengths, device=self.device)
        valid = torch.arange(padded, device=self.device).unsqueeze(0) >= (padded - length).unsqueeze(1)
        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
        streams = generation.AnswerStreams(batch, vocab, max_new_tokens)

        clock.begin()
        positions = (torch.arange(padded, device=self.device).unsqueeze(0) - (padded - length).unsqueeze(1))
        logits = self.forward(prompt, positions.clamp(min=0), self.additive_mask(valid, padded, None), cache)
        next_position = length.clone()
        streams.accept_first(logits[:, -1].argmax(dim=-1).tolist(), first_token)
        clock.end("prefill")
        while True:
            if not any(streams.running()):
                return streams.results
            posing = streams.posing()
            if any(posing):
                clock.begin()
                active = torch.tensor(posing, device=self.device)
                begin = embed(torch.full((batch, 1), vocab.pose_begin_id, device=self.device))
                queries = embed.weight[-vocab.num_pose_tokens:].unsqueeze(0).expand(batch, -1, -1)
                keys = valid.shape[1]
                valid = torch.cat([valid, active.unsqueeze(1).expand(-1, 1 + vocab.num_pose_tokens)], dim=1)
                steps = torch.arange(1 + vocab.num_pose_tokens, device=self.device)
                mask = self.additive_mask(valid, 1 + vocab.num_pose_tokens, (keys + 1, valid.shape[1]))
                logits = self.forward(torch.cat([begin, queries], dim=1), next_position.unsqueeze(1) + steps, mask,
                                      cache)
                next_position = next_position + active.long() * (1 + vocab.num_pose_tokens)
                codes = pose_codes_from_logits(logits[:, 1:].float(), vocab, pose_code_vectors).cpu()
                for b in (b for b in range(batch) if posing[b]):
                    streams.take_pose(b, codes[b])
                clock.end("pose_step", "pose_steps")
                if not any(streams.running()):
                    return streams.results
            clock.begin()
            running = streams.running()
            active = torch.tensor(running, device=self.device)
            tokens = torch.tensor(streams.next_tokens(), device=self.device)
            valid = torch.cat([valid, active.unsqueeze(1)], dim=1)
            logits = self.forward(embed(tokens.unsqueeze(1)), next_position.unsqueeze(1),
                                  self.additive_mask(valid, 1, None), cache)
            next_position = next_position + active.long()
            streams.accept_running(logits[:, -1].argmax(dim=-1).tolist(), running)
            clock.end("decode", "decode_steps")


# ---------------------------------------------------------------------------------------------------------------
# Backends as generation functions over one session (same signature as UniPose.generate)


@dataclass
class Backend:
    name: str
    label: str
    generate_fn: Callable[..., tuple[list, dict[str, float]]] | None  # None: onnxruntime session's own
    pose_only: bool
    one_pass: bool
    session: Any = None
    warmup_ms: Callable[[], float] = field(default=lambda: 0.0)
    reference_vision: bool = False  # the reference vision route (see the module docstring)


def _generate_with(session: Any, llm: Any, *, attention: str | None = None) -> Callable[..., Any]:
    """A `UniPose.generate` replacement that runs `generation.generate` on `llm` (optionally forcing an attention
    implementation); `llm=None` means the reference-1 HF model (stored on the function)."""
    from unipose_sdk.models.attention import use_attention_impl

    def run(rows: Sequence[Any], image_embeds: Tensor | None, max_new_tokens: int, force_pose: bool,
            one_pass: bool | None = None, stop_after_pose: bool = False) -> tuple[list, dict[str, float]]:
        start = time.perf_counter()
        stages: dict[str, float] = {}
        vocab = session.config.vocab
        first = vocab.pose_begin_id if force_pose else None
        forced = use_attention_impl(attention) if attention else contextlib.nullcontext()
        with torch.inference_mode(), forced:
            embeds = session.embed_rows(rows, image_embeds)
            if isinstance(llm, HFReference):
                results = llm.generate(embeds, vocab, max_new_tokens, first_token=first, timings=stages,
                                       pose_code_vectors=session.pose_code_vectors)
            else:
                results = generation.generate(llm, embeds, vocab, max_new_tokens,
                                              max_context=session.config.llm.max_position_embeddings,
                                              first_token=first, one_pass=one_pass,
                                              stop_after_pose=stop_after_pose, timings=stages,
                                              pose_code_vectors=session.pose_code_vectors)
        stages["llm"] = (time.perf_counter() - start) * 1e3
        return results, stages

    return run


def make_backends(session: Any, device: torch.device, compile_cpu: bool, onnx_session: Any = None,
                  only: Sequence[str] | None = None) -> list[Backend]:
    from unipose_sdk.runtime.compiled import FastLM

    raw: MistralLM = session.runtime.llm.llm
    backends = [
        Backend("ref-hf-eager", "reference 1: transformers Mistral eager, DynamicCache, 4-D mask, step by step; "
                "reference vision", _generate_with(session, HFReference(raw)), pose_only=False, one_pass=False,
                reference_vision=True),
        Backend("ref-sdk-eager", "reference 2: SDK model eager, dense masked SDPA, step by step; reference vision",
                _generate_with(session, raw, attention="sdpa_dense"), pose_only=False, one_pass=False,
                reference_vision=True),
    ]
    fast = FastLM(raw)
    backends.append(Backend("sdk-fast", "SDK fast path: fused attention, static cache, one pass, pose only; fast "
                            "vision (matrix-product resize, packed towers)",
                            _generate_with(session, fast), pose_only=True, one_pass=True))
    if device.type == "cuda" or compile_cpu:
        compiled = FastLM(raw, compile=True)
        backends.append(Backend("sdk-fast-compiled", f"SDK fast path + torch.compile (mode={compiled.mode})",
                                _generate_with(session, compiled), pose_only=True, one_pass=True,
                                warmup_ms=lambda: compiled.warmup_ms))
    if onnx_session is not None:
        backends.append(Backend("onnxruntime", "SDK fast path on ONNX Runtime (exported graphs; matrix-product "
                                "resize, then the vision graph)", None,
                                pose_only=True, one_pass=True, session=onnx_session))
    if only:
        backends = [b for b in backends if b.name in only]
    return backends


# ---------------------------------------------------------------------------------------------------------------
# Tasks: the task classes' prompt builders, through the shared pipeline


def task_inputs(batch: int) -> dict[str, Any]:
    from unipose_sdk.body.examples import load_example_pose

    rng = np.random.default_rng(0)
    return {
        "image": [(rng.random((256, 192, 3)) * 255).astype(np.uint8) for _ in range(batch)],
        "text": ["a person squatting with both arms raised above the head"] * batch,
        "pose": [load_example_pose(name) for name in ("sitting", "walking_stride", "waving_right_hand")
                 ][:1] * batch,
        "instruction": ["raise your left arm above your head"] * batch,
    }


def run_task(task: str, session: Any, backend: Backend, inputs: dict[str, Any], max_new_tokens: int) -> list:
    from unipose_sdk.body.pose import Pose
    from unipose_sdk.tasks.images import images_to_embeds
    from unipose_sdk.tasks.pipeline import answer_with_poses, answer_with_text
    from unipose_sdk.text.prompts import Task

    session = backend.session or session
    gen = backend.generate_fn
    reference = backend.reference_vision
    kw = {"pose_only": backend.pose_only, "one_pass": backend.one_pass, "generate_fn": gen}
    if task == "estimate":
        return answer_with_poses(session, lambda: [session.prompts.build_task(Task.POSE_ESTIMATION)
                                                   for _ in inputs["image"]], max_new_tokens,
                                 lambda: images_to_embeds(session, inputs["image"], reference=reference), **kw)
    if task == "generate":
        return answer_with_poses(session, lambda: [session.prompts.build_task(Task.TEXT_TO_POSE, caption=t)
                                                   for t in inputs["text"]], max_new_tokens, **kw)
    if task == "edit":
        poses = Pose.cat(inputs["pose"])

        def edit_prompts() -> list:
            codes = session.encode_poses(poses)
            return [session.prompts.build_task(Task.POSE_EDITING, caption=t, poses=[codes[i]])
                    for i, t in enumerate(inputs["instruction"])]
        return answer_with_poses(session, edit_prompts, max_new_tokens, **kw)
    if task == "describe_pose":
        poses = Pose.cat(inputs["pose"])

        def describe_prompts() -> list:
            return [session.prompts.build_task(Task.POSE_DESCRIPTION, poses=[c]) for c in session.encode_poses(poses)]
        return answer_with_text(session, describe_prompts, max_new_tokens, generate_fn=gen)
    if task == "describe_image":
        return answer_with_text(session, lambda: [session.prompts.build_task(Task.IMAGE_DESCRIPTION)
                                                  for _ in inputs["image"]], max_new_tokens,
                                lambda: images_to_embeds(session, inputs["image"], reference=reference),
                                generate_fn=gen)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def answer_signature(answers: list) -> list:
    """What must be equal across backends: pose codes for pose tasks, the text for the description tasks."""
    return [a.codes if a.codes is not None else a.text for a in answers]


# ---------------------------------------------------------------------------------------------------------------
# Measurement helpers


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


# ---------------------------------------------------------------------------------------------------------------
# Model loading


def load_session(model: str, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, str]:
    """(session, weights note). tiny: the embedded unipose-tiny; 7b: the 7B configuration with random weights."""
    from unipose_sdk.options import BaseOptions
    from unipose_sdk.session import UniPose

    if model == "tiny":
        session = UniPose.load(BaseOptions(model=None, backend="torch", device=device.type, dtype=dtype,
                                           compile=False))
        note = "embedded unipose-tiny" + (" (RANDOM placeholder weights)" if session.model_is_random else "")
        return session, note
    if model != "7b":
        raise ValueError(f"unknown model {model!r}; expected 'tiny' or '7b'")
    from unipose_sdk.models.config import get_preset
    from unipose_sdk.models.unipose import UniPoseModel
    from unipose_sdk.runtime.torch import TorchRuntime
    from unipose_sdk.text.prompts import TASK_TEMPLATES
    from unipose_sdk.text.tokenizer import build_tiny_tokenizer

    config = get_preset("unipose-7b")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        net = UniPoseModel.from_config(config, device=device)  # random init on the device
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in net.parameters():  # small values keep the random 7B's activations finite in bf16
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    corpus = [t for pair in TASK_TEMPLATES.values() for t in pair] * 4 + ["a person squatting with arms raised"] * 4
    tokenizer = build_tiny_tokenizer(corpus, config.vocab.text_vocab_size, config.vocab)
    runtime = TorchRuntime(net, config, device, dtype, compile=False)
    from unipose_sdk.session import UniPose as Session

    return Session(runtime, tokenizer, "unipose-7b (random weights)", True), (
        "unipose-7b configuration with RANDOM weights: latency does not depend on weight values; the text "
        "tokenizer is a small BPE padded to the 7B layout (prompt lengths differ slightly from the official one)")


def load_onnx_session(onnx_dir: str | None, device: torch.device, model: str = "tiny") -> tuple[Any, str]:
    """The onnxruntime backend's session, or None and why. For the tiny model a missing directory is exported
    first (the embedded unipose-tiny, fp32, validated), so one command reproduces the ONNX Runtime rows."""
    if not onnx_dir:
        return None, "not run: pass --onnx-dir <directory written by `unipose export`>"
    try:
        from unipose_sdk.export.validate import is_export_directory
        from unipose_sdk.options import BaseOptions
        from unipose_sdk.session import UniPose

        note = f"loaded {onnx_dir}"
        if model == "tiny" and not Path(onnx_dir).exists():
            from unipose_sdk.export.onnx import export_onnx

            started = time.perf_counter()
            export_onnx(None, onnx_dir, precision="fp32", progress=False)
            note = f"exported the embedded unipose-tiny (fp32) to {onnx_dir} in {time.perf_counter() - started:.0f} s"
        elif not is_export_directory(onnx_dir):
            return None, (f"not run: {onnx_dir} is not a directory written by `unipose export` (pass a new path "
                          "with --model tiny to export into it)")
        session = UniPose.load(BaseOptions(model=onnx_dir, backend="onnxruntime", device=device.type))
        return session, (f"{note}; {torch.get_num_threads()} intra-op threads per session (torch's count), "
                         "idle threads sleep")
    except Exception as exc:  # the backend is optional: say why it is missing instead of failing the benchmark
        return None, f"not run: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


def bench(model: str = "tiny", device_name: str = "cpu", batches: Sequence[int] = (1,), tasks: Sequence[str] = TASKS,
          runs: int = 10, warmup: int = 2, max_new_tokens: int = 32, compile_cpu: bool = False,
          onnx_dir: str | None = None, only: Sequence[str] | None = None, dtype: str | None = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    from unipose_sdk.options import Device, resolve_device

    device = resolve_device(Device(device_name))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                   None: None}[dtype]
    started = time.perf_counter()
    session, weights_note = load_session(model, device, torch_dtype)
    onnx_session, onnx_note = load_onnx_session(onnx_dir, device, model)
    backends = make_backends(session, device, compile_cpu, onnx_session, only)
    raw: MistralLM = session.runtime.llm.llm
    weight_bytes = sum(p.numel() * p.element_size() for p in raw.parameters())
    bandwidth = copy_bandwidth_gbs(device, 1024 if device.type == "cuda" else 256)
    result: dict[str, Any] = {
        "schema": "unipose-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": machine_info(device),
        "load_note": "",
        "model": model, "weights": weights_note, "device": str(device),
        "dtype": str(raw.dtype).replace("torch.", ""),
        "llm_weight_bytes": weight_bytes,
        "copy_bandwidth_gbs": bandwidth,
        "decode_floor_ms": weight_bytes / (bandwidth * 1e9) * 1e3,
        "settings": {"runs": runs, "warmup": warmup, "max_new_tokens": max_new_tokens, "batches": list(batches),
                     "tasks": list(tasks)},
        "backends": {b.name: b.label for b in backends},
        "onnxruntime": onnx_note,
        "results": [],
    }
    for batch in batches:
        inputs = task_inputs(batch)
        for task in tasks:
            reference_signature = None
            for backend in backends:
                warm_start = time.perf_counter()
                compile_before = backend.warmup_ms()
                first_ms = None
                for _ in range(warmup):
                    t0 = time.perf_counter()
                    answers = run_task(task, session, backend, inputs, max_new_tokens)
                    first_ms = first_ms if first_ms is not None else (time.perf_counter() - t0) * 1e3
                warm_total = (time.perf_counter() - warm_start) * 1e3
                timings = []
                with peak_memory(device) as memory:
                    for _ in range(runs):
                        answers = run_task(task, session, backend, inputs, max_new_tokens)
                        timings.append(answers[0].timing_ms)
                signature = answer_signature(answers)
                if backend.name == "ref-hf-eager" or reference_signature is None:
                    reference_signature = reference_signature or signature
                entry = {
                    "task": task, "backend": backend.name, "batch": batch,
                    "warmup": {"runs": warmup, "first_call_ms": first_ms, "total_ms": warm_total,
                               "compile_ms": backend.warmup_ms() - compile_before},
                    "stats": summarize(timings, batch, weight_bytes),
                    "memory": memory,
                    "same_output_as_first_reference": signature == reference_signature,
                    "answer_text": answers[0].text[:120],
                    "runs": timings,
                }
                result["results"].append(entry)
                total = entry["stats"].get("total", {}).get("median_ms", float("nan"))
                log(f"[bench] {model} {device} B={batch} {task:15s} {backend.name:18s} median {total:9.2f} ms"
                    f"  same output: {entry['same_output_as_first_reference']}")
    result["elapsed_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------------------------
# Reports


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


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    device_type = "cuda" if result["device"].startswith("cuda") else "cpu"
    stem = out_dir / (result.get("name") or f"latency_{result['model']}_{device_type}")
    paths = {"json": str(stem.with_suffix(".json")), "markdown": str(stem.with_suffix(".md")),
             "chart": str(stem.with_suffix(".png"))}
    result["outputs"] = paths
    for key, text in (("json", json.dumps(result, indent=1)), ("markdown", markdown(result))):
        tmp = Path(paths[key] + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    chart(result, Path(paths["chart"]))
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 1 8; quick: 1)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--backends", nargs="+", default=None, help="run only these backends (names as in the table)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per cell (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per cell (default 2; quick 1)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="text budget (default 32; quick 12)")
    parser.add_argument("--quick", action="store_true", help="few runs, batch 1, short answers: a smoke run")
    parser.add_argument("--compile", action="store_true", help="on the CPU, also time the compiled fast path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--onnx-dir", default=None,
                        help="exported model directory for the onnxruntime backend (tiny: exported there first when "
                             "it does not exist)")
    parser.add_argument("--name", default=None, help="output file stem (default latency_<model>_<device>)")
    parser.add_argument("--load-note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("-o", "--output", default="benchmarks/results", help="results directory")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quick = args.quick
    batches = args.batch or ([1] if quick else [1, 8])
    result = bench(
        model=args.model, device_name=args.device, batches=batches, tasks=args.tasks,
        runs=args.runs if args.runs is not None else (3 if quick else 10),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else (12 if quick else 32),
        compile_cpu=args.compile, onnx_dir=args.onnx_dir, only=args.backends, dtype=args.dtype,
    )
    result["load_note"] = args.load_note
    result["name"] = args.name
    write_outputs(result, Path(args.output))
    return result


def _handle(args: argparse.Namespace) -> int:
    result = run_from_args(args)
    print(json.dumps(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="latency per task and backend against the PyTorch references",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(handler=_handle)
