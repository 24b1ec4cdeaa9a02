"""The memory planner: how much memory a model needs at a weight precision, and which devices it fits.

    unipose info --memory --model unipose-7b --precision mixed          # or int4 | int8 | float; --json
    plan = memory.plan_memory("unipose-7b", precision="int4", dtype="float16")

Weights are counted per component from the model definition built on the meta device (nothing is allocated), and
priced the way `unipose export --precision` stores them (export/quantize.py): every nn.Linear weight of a
quantized component in its scheme (int4: half a byte per weight plus one scale per block of 128; int8: one byte
plus one scale per output channel), the token embedding table in its block-quantized gather form, and everything
else (norms, biases, convolutions, position tables, the pose tokenizer) in the float dtype (the pose tokenizer in
float32 always). A sentence encoder (models with one) is priced as its graph stores it: int8 MatMul weights and
its word / position tables block-quantized at every quantized precision. The KV cache holds keys and values of
every layer in the float dtype. Units are decimal: 1 GB = 1e9 bytes, 1 MB = 1e6 bytes (KiB only for the
per-token cache).

What is assumed, and stated in every plan: the typical prompts' token counts, the runtime overhead (a fixed
allowance for the CUDA context, allocator arenas and kernel workspaces, plus the activations of the largest step),
and the memory each device leaves to the model (the usable GB of DEVICES).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import unipose_sdk.formats as formats
from unipose_sdk.errors import InvalidInputError

GB = 1e9
MB = 1e6


@dataclass(frozen=True)
class DeviceBudget:
    name: str
    total_gb: float
    usable_gb: float  # what is left for the model after the OS / driver (assumed; see `note`)
    note: str


DEVICES = (
    DeviceBudget("Jetson Orin Nano 8GB", 8, 5.2, "memory shared with the CPU; the OS and JetPack services leave "
                 "about 5.2 GB (desktop off)"),
    DeviceBudget("Jetson Orin NX 16GB", 16, 13.0, "shared memory; about 3 GB for the OS and runtime (assumed)"),
    DeviceBudget("Jetson AGX Orin 32GB", 32, 29.0, "shared memory; about 3 GB for the OS and runtime (assumed)"),
    DeviceBudget("Jetson AGX Orin 64GB", 64, 61.0, "shared memory; about 3 GB for the OS and runtime (assumed)"),
    DeviceBudget("Jetson AGX Thor 128GB", 128, 124.0, "shared memory; about 4 GB for the OS and runtime (assumed)"),
    DeviceBudget("24 GB desktop GPU", 24, 23.0, "dedicated memory; about 1 GB for the driver and display (assumed)"),
    DeviceBudget("80 GB data-centre GPU", 80, 79.0, "dedicated memory; about 1 GB reserved by the driver (assumed)"),
)

# Fixed runtime allowance: CUDA context and cuBLAS / cuDNN handles, the execution provider's allocator arenas and
# kernel workspaces (an allowance, not a measurement; about what a CUDA context and one workspace take on Orin).
RUNTIME_FIXED_GB = 0.5
# Prompts whose cache a plan prices: (name, tokens). The image prompt is the CLIP tokens + template + answer.
TYPICAL_PROMPTS = (("text-to-pose (40-token prompt + 82-token pose answer)", 122),
                   ("image prompt (576 image tokens + template + pose answer)", 720))
MODEL_NAMES = ("unipose-7b", "unipose-tiny")


@dataclass
class Component:
    name: str
    parameters: int
    float_bytes: int  # at the plan's dtype (the pose tokenizer at float32)
    bytes: int  # as stored at the plan's precision
    scheme: str  # how its large matrices are stored


@dataclass
class MemoryPlan:
    model: str
    precision: str
    dtype: str
    components: list[Component]
    kv_bytes_per_token: int
    prompts: dict[str, dict[str, float]]
    overhead_gb: float
    overhead_note: str
    devices: list[dict[str, Any]]
    assumptions: list[str] = field(default_factory=list)

    @property
    def weights_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["weights_gb"] = self.weights_bytes / GB
        data["parameters"] = self.parameters
        return data


# ------------------------------------------------------------------------------------------- pricing
def linear_bytes(k: int, n: int, scheme: str, float_itemsize: int, block_size: int = 128) -> int:
    """Bytes of one [K in, N out] weight stored with `scheme` (export/quantize.py's layouts)."""
    blocks = -(-k // block_size)
    if scheme == "int4-nbits":  # packed nibbles of whole blocks + one scale per block, in the float dtype
        return n * blocks * (block_size // 2) + n * blocks * float_itemsize
    if scheme == "int8-dynamic":  # int8 [K, N] + one float32 scale per output channel
        return k * n + n * 4
    if scheme == "qdq-int8":  # int8 + a scale and an int8 zero point per output channel
        return k * n + n * (float_itemsize + 1)
    return k * n * float_itemsize


def table_bytes(rows: int, width: int, scheme: str, float_itemsize: int, block_size: int = 128) -> int:
    """Bytes of an embedding table [rows, width] stored with `scheme`."""
    if width % block_size:
        scheme = "float"  # GatherBlockQuantized needs whole blocks: the exporter leaves such tables float
    blocks = width // block_size
    if scheme == "int4-gather":
        return rows * width // 2 + rows * blocks * float_itemsize
    if scheme == "int8-gather":  # uint8 + a scale and a uint8 zero point per block
        return rows * width + rows * blocks * (float_itemsize + 1)
    return rows * width * float_itemsize


def _component_bytes(module: Any, scheme: str, table_scheme: str, itemsize: int) -> tuple[int, int, int]:
    """(parameters, float bytes, stored bytes) of a module: Linear weights in `scheme`, Embedding tables in
    `table_scheme`, every other parameter in the float dtype."""
    from torch import nn

    params = float_bytes = stored = 0
    priced: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            n, k = sub.weight.shape
            stored += linear_bytes(k, n, scheme, itemsize)
            priced.add(id(sub.weight))
        elif isinstance(sub, nn.Embedding) and table_scheme != "float":
            rows, width = sub.weight.shape
            stored += table_bytes(rows, width, table_scheme, itemsize)
            priced.add(id(sub.weight))
    for p in module.parameters():
        params += p.numel()
        float_bytes += p.numel() * itemsize
        if id(p) not in priced:
            stored += p.numel() * itemsize
    return params, float_bytes, stored


def _read_config(model: str | os.PathLike) -> tuple[Any, str | None, str]:
    """(config, the weight precision a directory holds or None, a display name)."""
    from unipose_sdk.models.config import get_preset

    if str(model) in MODEL_NAMES:
        return get_preset(str(model)), None, str(model)
    path = Path(model)
    if not path.is_dir():
        raise InvalidInputError.make(f"--model {str(model)!r}", f"one of {list(MODEL_NAMES)} or a model directory "
                                     "(SDK format or a `unipose export` directory)",
                                     "Pass --model unipose-7b, or the path of a converted or exported model.")
    from unipose_sdk.export.artifacts import is_export_directory, read_directory

    if is_export_directory(path):
        exported = read_directory(path)
        return exported.config, exported.weights, path.name
    from unipose_sdk.checkpoint.sdk_format import read_config

    return read_config(path), None, path.name


def plan_memory(model: str | os.PathLike = "unipose-7b", precision: str | None = None,
                dtype: str = "float16", batch: int = 1) -> MemoryPlan:
    """The memory plan of `model` (a preset name or a directory) with weights at `precision` (default: what an
    export directory holds, else float) and activations / KV cache in `dtype`."""
    import torch

    import unipose_sdk.export.quantize as Q
    import unipose_sdk.export.specs as S
    from unipose_sdk.models.unipose import UniPoseModel

    config, held, name = _read_config(model)
    precision = formats.weight_precision(precision if precision is not None else (held or "float"))
    if held is not None and held != precision:
        raise InvalidInputError.make(f"--precision {precision} for {name}, an export with {held} weights",
                                     f"--precision {held} (or no --precision)",
                                     "Drop --precision to plan the export as it is, or plan the model by name.")
    dt = formats.dtype(dtype, "dtype")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError.make(f"batch={batch!r}", "a positive int", "Pass --batch 1.")
    itemsize = dt.itemsize
    scheme_of = Q.plan(precision)
    meta_model = UniPoseModel.from_config(config, device=torch.device("meta"))
    components = []
    llm = meta_model.llm
    parts: list[tuple[str, Any, str, str, int]] = [
        ("llm embedding table", llm.model.embed_tokens, scheme_of["decoder"], scheme_of["embed"], itemsize),
        ("llm decoder layers", llm.model.layers, scheme_of["decoder"], "float", itemsize),
        ("llm final norm + lm head", torch.nn.ModuleList([llm.model.norm, llm.lm_head]), scheme_of["decoder"],
         "float", itemsize),
    ]
    for child_name, child in meta_model.vision.named_children():
        parts.append((f"vision {child_name}", child, scheme_of["vision"], "float", itemsize))
    if meta_model.pose_tokenizer is not None:
        parts.append(("pose tokenizer (float32)", meta_model.pose_tokenizer, "float", "float", 4))
    if getattr(meta_model, "text_encoder", None) is not None:
        # A composite scheme (int8-dynamic+int8-gather): its MatMul part prices the Linears, its gather part the
        # word / position tables.
        encoder_parts = Q.scheme_parts(Q.plan(precision, graphs=(S.TEXT_ENCODER_GRAPH,))[S.TEXT_ENCODER_GRAPH])
        parts.append(("text encoder", meta_model.text_encoder,
                      next((p for p in encoder_parts if not p.endswith("-gather")), "float"),
                      next((p for p in encoder_parts if p.endswith("-gather")), "float"), itemsize))
    for label, module, scheme, table_scheme, size in parts:
        params, float_bytes, stored = _component_bytes(module, scheme, table_scheme, size)
        shown = table_scheme if label.endswith("embedding table") else scheme
        if label == "text encoder":
            shown = "+".join(p for p in (scheme, table_scheme) if p != "float") or "float"
        components.append(Component(label, params, float_bytes, stored, shown))

    c = config.llm
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * itemsize
    max_context = config.max_text_tokens + 2 * config.pose_tokenizer.num_tokens
    prompts = {label: {"tokens": tokens, "kv_mb": batch * tokens * kv_per_token / MB}
               for label, tokens in (*TYPICAL_PROMPTS, (f"longest context ({max_context} tokens)", max_context))}
    # Activations of the largest step: the image prompt's prefill holds a few hidden-size rows and one MLP-width
    # row per token at a time, and float32 logits at the 80 pose positions.
    image_tokens = TYPICAL_PROMPTS[1][1]
    activations = batch * (image_tokens * (4 * c.hidden_size + 2 * c.intermediate_size) * itemsize
                           + config.pose_tokenizer.num_tokens * c.vocab_size * 4)
    overhead_gb = RUNTIME_FIXED_GB + activations / GB
    overhead_note = (f"{RUNTIME_FIXED_GB} GB fixed (CUDA context, allocator arenas, workspaces: an allowance, not "
                     f"measured) + {activations / MB:.0f} MB activations of the image prompt's prefill at batch "
                     f"{batch}")
    weights_gb = sum(comp.bytes for comp in components) / GB
    image_kv_gb = prompts[TYPICAL_PROMPTS[1][0]]["kv_mb"] * MB / GB
    devices = []
    for device in DEVICES:
        need = weights_gb + overhead_gb + image_kv_gb
        free_for_cache = device.usable_gb - weights_gb - overhead_gb
        per_prompt_gb = image_tokens * kv_per_token / GB
        devices.append({"device": device.name, "total_gb": device.total_gb, "usable_gb": device.usable_gb,
                        "needed_gb": need, "fits": need <= device.usable_gb,
                        "headroom_gb": device.usable_gb - need,
                        "image_prompts_in_cache": max(0, int(free_for_cache // per_prompt_gb)),
                        "note": device.note})
    assumptions = [
        "1 GB = 1e9 bytes; weights counted from the model definition on the meta device",
        f"weights stored as `unipose export --precision {precision}` writes them (block 128 for int4); norms, "
        "biases, convolutions and position tables in the float dtype; the pose tokenizer in float32",
        f"KV cache in {dt.name}; fit = weights + runtime overhead + the cache of one image prompt at batch {batch}",
        "runtime overhead: " + overhead_note,
        "usable memory per device: " + "; ".join(f"{d.name} {d.usable_gb} GB" for d in DEVICES),
    ]
    return MemoryPlan(name, precision, dt.name, components, kv_per_token, prompts, overhead_gb, overhead_note,
                      devices, assumptions)


def format_plan(plan: MemoryPlan) -> str:
    """The plan as the text `unipose info --memory` prints."""
    lines = [f"memory plan: {plan.model}, weights {plan.precision}, activations and KV cache {plan.dtype}", "",
             f"  {'component':34s} {'parameters':>14s} {'float GB':>9s} {'stored GB':>10s}  weights"]
    for c in plan.components:
        lines.append(f"  {c.name:34s} {c.parameters:>14,d} {c.float_bytes / GB:>9.3f} {c.bytes / GB:>10.3f}  "
                     f"{c.scheme}")
    total_float = sum(c.float_bytes for c in plan.components) / GB
    lines.append(f"  {'total':34s} {plan.parameters:>14,d} {total_float:>9.3f} {plan.weights_bytes / GB:>10.3f}")
    lines += ["", f"KV cache: {plan.kv_bytes_per_token / 1024:.0f} KiB per token"]
    for label, prompt in plan.prompts.items():
        lines.append(f"  {label}: {prompt['kv_mb']:.1f} MB")
    lines += [f"runtime overhead: {plan.overhead_gb:.2f} GB ({plan.overhead_note})", "",
              f"  {'device':24s} {'usable GB':>9s} {'needed GB':>9s}  fits  image prompts the cache can hold"]
    for d in plan.devices:
        lines.append(f"  {d['device']:24s} {d['usable_gb']:>9.1f} {d['needed_gb']:>9.2f}  "
                     f"{'yes ' if d['fits'] else 'no  '}  {d['image_prompts_in_cache'] if d['fits'] else '-'}")
    lines += ["", "assumed:"] + [f"  - {a}" for a in plan.assumptions]
    return "\n".join(lines)
