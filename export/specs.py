"""One declarative spec per exported graph: file name, named inputs and outputs, dynamic axes, opset, tolerance.

Everything that exports, validates, loads or builds an engine reads these specs, so the tensor names a runtime
binds are the names the exporter wrote (the ultralytics idea: one table drives export and loading).

    pose_encoder   pose_6d [B, 22, 6] float32                      -> codes [B, 80] int64
    pose_decoder   codes [B, 80] int64                             -> pose_6d [B, 22, 6], rotmat [B, 22, 3, 3]
    vision         clip_pixels [B, 3, S, S], pose_pixels [B, 3, H, W] -> image_embeds [B, N, C]
    embed          input_ids [B, T] int64                          -> input_embeds [B, T, C]
    decoder        input_embeds [B, T, C], positions [B, T] int64, block_start / block_end / key_start /
                   query_offset [B] int32, logits_index [N] int64, past_key_{i} / past_value_{i} [B, Hkv, Tk, D]
                   -> logits [B, N, V] float32, present_key_{i} / present_value_{i} [B, Hkv, Tk, D]

The decoder's present k/v are the FULL updated cache (the past with this call's tokens written at the per-row
slots query_offset[b] + t), not only the new tokens. Why: the mask is defined in cache-slot coordinates and rows
write at different slots (one row runs its pose step while others wait), so the graph must scatter the new keys
into the cache before attending anyway; returning that tensor costs no extra copy inside the graph, and the
runtime simply swaps it in as the next call's past (two buffers ping-ponged under IO binding / TensorRT), with
no scatter of its own. Axis names: batch, tokens, keys (cache slots), logits (selected positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import unipose_sdk.formats as formats
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import UniPoseConfig

FORMAT_NAME = "unipose-sdk/onnx"
# 2: every graph records the export's identity (export id, weights digest, digests of the files beside it).
FORMAT_VERSION = 2
PRECISIONS = formats.PRECISIONS  # "fp32", "fp16", "bf16": the short names of the one dtype table
# ONNX opsets the exporter writes and ONNX Runtime runs; an emission may need more (attention23: 23).
OPSET_RANGE = (18, 23)
GRAPH_NAMES = ("pose_encoder", "pose_decoder", "vision", "embed", "decoder")
# The sentence encoder's graph: only models with one (`config.text_encoder`, unipose-tiny v2) export it.
TEXT_ENCODER_GRAPH = "text_encoder"
# The text-pose matcher's graph: only models with one (`config.pose_matcher`) export it.
POSE_MATCHER_GRAPH = "pose_matcher"
ALL_GRAPH_NAMES = (*GRAPH_NAMES, TEXT_ENCODER_GRAPH, POSE_MATCHER_GRAPH)
# The pose tokenizer's graphs: a ChatPose model has no pose tokenizer, so its exports hold the other three only.
POSE_GRAPH_NAMES = ("pose_encoder", "pose_decoder")


def family_graph_names(config: UniPoseConfig) -> tuple[str, ...]:
    """The graphs an export of this model holds (ChatPose: no pose tokenizer graphs; the sentence encoder's and
    the text-pose matcher's only for a model with one)."""
    names = GRAPH_NAMES
    if config.text_encoder is not None:
        names = (*names, TEXT_ENCODER_GRAPH)
    if config.pose_matcher is not None:
        names = (*names, POSE_MATCHER_GRAPH)
    if config.family == "chatpose":
        return tuple(n for n in names if n not in POSE_GRAPH_NAMES)
    return names
# The pose codebook [K, D] float32 as .npy beside the graphs: expected-code pose decoding (config pose_decoding)
# weights it on the host; it is also inside pose_decoder.onnx, but not under a name one can rely on.
POSE_CODEBOOK_FILE = "pose_codebook.npy"
# The 2 GB protobuf limit: graphs whose weights exceed it keep their tensors in a `<file>.data` file beside them.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2

# Metadata keys written into every ONNX file's metadata_props (and into engine headers).
META_FORMAT = "unipose.format"
META_FORMAT_VERSION = "unipose.format_version"
META_GRAPH = "unipose.graph"
META_SDK_VERSION = "unipose.sdk_version"
META_CONFIG = "unipose.config"
META_VOCAB = "unipose.vocab"
META_SPEC = "unipose.spec"
META_PRECISION = "unipose.precision"
META_EMISSION = "unipose.attention_emission"
META_IS_RANDOM = "unipose.is_random"
META_SOURCE = "unipose.source"
META_VALIDATION = "unipose.validation"
# Identity: which export a file belongs to and what it was made from (read back by export/artifacts.py).
META_EXPORT_ID = "unipose.export_id"  # random per export: all five graphs of one export carry the same id
META_WEIGHTS_SHA256 = "unipose.weights_sha256"  # digest of the weights the export was made from
META_FILES = "unipose.files"  # JSON {file name: sha256} of the codebook and tokenizer files beside the graphs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` entries are ints (fixed) or axis names (dynamic)."""

    name: str
    dtype: str  # "float32", "float16", "bfloat16", "int32", "int64", or "compute" (the export precision's dtype)
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: s for i, s in enumerate(self.shape) if isinstance(s, str)}


@dataclass(frozen=True)
class Tolerance:
    """A float output passes when max|onnx - torch| <= atol + rtol * max|torch|; an integer output when at least
    `min_match` of its elements are equal (nearest-code / argmax ties may flip under reordered float sums)."""

    atol: float
    rtol: float
    min_match: float = 1.0


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    tolerance: Tolerance
    precision: str  # of the weights and float activations; the pose tokenizer graphs are always fp32
    # Ranges of each dynamic axis for TensorRT optimization profiles: axis -> (min, opt, max).
    axis_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> GraphSpec:
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

        return GraphSpec(
            name=data["name"], inputs=tensors(data["inputs"]), outputs=tensors(data["outputs"]),
            opset=int(data["opset"]), tolerance=Tolerance(**data["tolerance"]), precision=data["precision"],
            axis_ranges={k: tuple(v) for k, v in data.get("axis_ranges", {}).items()},  # type: ignore[misc]
        )


def check_precision(precision: object) -> str:
    """The short precision name ("fp16") of any name of the dtype table ("float16", "fp16", torch.float16)."""
    return formats.dtype(precision, "precision").short


def torch_dtype_name(precision: str) -> str:
    return formats.dtype(precision, "precision").name


def check_opset(opset: object, emission_opset: int = OPSET_RANGE[0]) -> int:
    """`opset` when the exporter can write it and the attention emission's operators exist in it."""
    low, high = max(OPSET_RANGE[0], emission_opset), OPSET_RANGE[1]
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise InvalidInputError.make(f"opset={opset!r}", f"an int in {low}..{high} for this attention emission",
                                     f"Pass --opset {low} (the default), or a value up to {high}.")
    return opset


# Tolerances per precision. fp32 differs from torch only by summation order. Half precision is compared with the
# float32 torch model (the truth), so the bounds are real accuracy bounds, not "it runs" checks.
_FLOAT_TOLERANCE = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_match=0.99),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2, min_match=0.95),
    "bf16": Tolerance(atol=1e-1, rtol=5e-2, min_match=0.9),
}
_POSE_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4, min_match=0.99)  # pose graphs are always float32


def graph_specs(config: UniPoseConfig, precision: str = "fp32", opset: int = 18,
                max_batch: int = 8) -> dict[str, GraphSpec]:
    """The five graph specs of a model config, in export order."""
    precision = check_precision(precision)
    joints, rot = config.pose_tokenizer.num_joints, config.pose_tokenizer.rotation_dim
    codes = config.pose_tokenizer.num_tokens
    llm = config.llm
    clip, pose_vit = config.clip, config.pose_vit
    tol = _FLOAT_TOLERANCE[precision]
    max_context = config.max_text_tokens + 2 * codes  # prompt + answer + the pose-step slack of generation
    batch = (1, 1, max_batch)
    specs = [
        GraphSpec(
            "pose_encoder",
            inputs=(TensorSpec("pose_6d", "float32", ("batch", joints, rot)),),
            outputs=(TensorSpec("codes", "int64", ("batch", codes)),),
            opset=opset, tolerance=_POSE_TOLERANCE, precision="fp32", axis_ranges={"batch": batch},
        ),
        GraphSpec(
            "pose_decoder",
            inputs=(TensorSpec("codes", "int64", ("batch", codes)),),
            outputs=(TensorSpec("pose_6d", "float32", ("batch", joints, rot)),
                     TensorSpec("rotmat", "float32", ("batch", joints, 3, 3))),
            opset=opset, tolerance=_POSE_TOLERANCE, precision="fp32", axis_ranges={"batch": batch},
        ),
        GraphSpec(
            "vision",
            inputs=(TensorSpec("clip_pixels", "compute", ("batch", 3, clip.image_size, clip.image_size)),
                    TensorSpec("pose_pixels", "compute", ("batch", 3, pose_vit.image_height, pose_vit.image_width))),
            outputs=(TensorSpec("image_embeds", "compute", ("batch", clip.num_patches, llm.hidden_size)),),
            opset=opset, tolerance=tol, precision=precision, axis_ranges={"batch": batch},
        ),
        GraphSpec(
            "embed",
            inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")),),
            outputs=(TensorSpec("input_embeds", "compute", ("batch", "tokens", llm.hidden_size)),),
            opset=opset, tolerance=tol, precision=precision,
            axis_ranges={"batch": batch, "tokens": (1, 64, max_context)},
        ),
        GraphSpec(
            "decoder",
            inputs=decoder_inputs(config),
            outputs=(TensorSpec("logits", "float32", ("batch", "logits", llm.vocab_size)),
                     # ChatPose: the pose head's outputs at the same positions as the logits (LMOutput.pose).
                     *((TensorSpec("pose_params", "float32", ("batch", "logits", llm.pose_head_outputs)),)
                       if llm.pose_head_outputs else ()),
                     *(TensorSpec(f"present_key_{i}", "compute", kv_shape(config))
                       for i in range(llm.num_hidden_layers)),
                     *(TensorSpec(f"present_value_{i}", "compute", kv_shape(config))
                       for i in range(llm.num_hidden_layers))),
            opset=opset, tolerance=tol, precision=precision,
            # tokens: 1 (decode step), 1 + 80 (pose step), up to a whole prompt (prefill).
            axis_ranges={"batch": batch, "tokens": (1, 1 + codes, max_context),
                         "keys": (1, max_context, max_context), "logits": (1, codes, codes)},
        ),
    ]
    if config.text_encoder is not None:
        words = config.text_encoder.max_tokens
        specs.append(GraphSpec(
            TEXT_ENCODER_GRAPH,
            inputs=(TensorSpec("input_ids", "int64", ("batch", "words")),
                    TensorSpec("attention_mask", "int64", ("batch", "words"))),
            outputs=(TensorSpec("text_rows", "compute", ("batch", config.text_encoder.num_rows, llm.hidden_size)),
                     TensorSpec("sentence_embedding", "float32", ("batch", config.text_encoder.hidden_size))),
            opset=opset, tolerance=tol, precision=precision,
            axis_ranges={"batch": batch, "words": (2, 16, words)},
        ))
    if config.pose_matcher is not None:
        # Always float32, like the pose graphs: its scores pick one candidate, and a close second must stay second.
        candidates = (1, 9, 16 * max_batch)
        specs.append(GraphSpec(
            POSE_MATCHER_GRAPH,
            inputs=(TensorSpec("joints_m", "float32", ("poses", joints, 3)),
                    TensorSpec("sentence_embedding", "float32", ("poses", config.pose_matcher.text_size))),
            outputs=(TensorSpec("scores", "float32", ("poses",)),),
            opset=opset, tolerance=_POSE_TOLERANCE, precision="fp32", axis_ranges={"poses": candidates},
        ))
    names = family_graph_names(config)
    return {spec.name: spec for spec in specs if spec.name in names}


def kv_shape(config: UniPoseConfig) -> tuple[int | str, ...]:
    return ("batch", config.llm.num_key_value_heads, "keys", config.llm.head_dim)


def decoder_inputs(config: UniPoseConfig) -> tuple[TensorSpec, ...]:
    llm = config.llm
    return (
        TensorSpec("input_embeds", "compute", ("batch", "tokens", llm.hidden_size)),
        TensorSpec("positions", "int64", ("batch", "tokens")),
        TensorSpec("block_start", "int32", ("batch",)),
        TensorSpec("block_end", "int32", ("batch",)),
        TensorSpec("key_start", "int32", ("batch",)),
        TensorSpec("query_offset", "int32", ("batch",)),
        TensorSpec("logits_index", "int64", ("logits",)),
        *(TensorSpec(f"past_key_{i}", "compute", kv_shape(config)) for i in range(llm.num_hidden_layers)),
        *(TensorSpec(f"past_value_{i}", "compute", kv_shape(config)) for i in range(llm.num_hidden_layers)),
    )


def resolve_dtype(tensor: TensorSpec, precision: str) -> str:
    """The concrete dtype name of a tensor in a graph exported at `precision`."""
    return torch_dtype_name(precision) if tensor.dtype == "compute" else tensor.dtype
