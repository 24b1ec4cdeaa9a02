"""Export a UniPose model to a directory of five ONNX graphs that describes itself.

    unipose_sdk.export.export_onnx(model=None, output_dir="out/tiny-onnx", precision="fp32")

What is exported (the shapes are in `specs.py`): the pose tokenizer's encoder (+ nearest-code search) and decoder
(+ Gram-Schmidt to rotation matrices), the vision side (both towers, fusion, projector), the token embedding
lookup, and ONE decoder graph that serves prefill, decode steps and the 81-token pose step, with the KV cache and
the mixed-mask bounds as graph inputs.

The graphs come from the single model definition: the wrappers below only choose which method of the same
modules becomes the graph, and the model's KVCache writes out of place (`KVCache.from_tensors(...,
in_place=False)`), so the updated cache is a graph output. Attention is forced to the `unipose::mixed_attention`
custom op, which `unipose_sdk.kernels.onnx` translates (decomposed MatMul/Softmax by default, opset 23
`Attention`, or a custom node). In half precision the attention runs in float32 inside the graph (a Cast around
the same translation), and RMSNorm already computes in float32 in the model.

With `weights="int8" | "int4" | "mixed"` each graph is then quantized as export/quantize.py plans it and compared
with its float graph; `quantize_export` does the same to an existing float export directory, without torch.

Every file carries its metadata (config, vocabulary layout, spec, SDK version, precision) and the export's
identity (a random export id, the sha256 of the source weights, the sha256 of the codebook and tokenizer files
written beside the graphs) in metadata_props; export/artifacts.py reads them back and refuses parts of
different exports. The directory is written under a temporary name (created with the umask's mode, like every
file in it) and renamed into place in one step only after every graph has been validated against torch
(`validate.py`); an error, Ctrl-C or SIGTERM removes the temporary directory, and an existing directory is only
replaced with overwrite=True.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import unipose_sdk.export.specs as S
from torch import Tensor, nn
from unipose_sdk.export.artifacts import ALL_TOKENIZER_FILES, file_sha256, state_dict_sha256

import unipose_sdk.formats as formats
import unipose_sdk.loading as loading
from unipose_sdk._version import __version__
from unipose_sdk.body.rotations import rotation_6d_to_matrix
from unipose_sdk.errors import CheckpointError, InvalidInputError
from unipose_sdk.fileio import deferred_signals, make_temp_dir, raise_if_signalled, replace_directory, signals_raise
from unipose_sdk.models.attention import use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.llm import KVCache

log = logging.getLogger("unipose_sdk")


# ------------------------------------------------------------------------------------------- graph wrappers
class PoseEncoderGraph(nn.Module):
    """pose_6d [B, 22, 6] -> codes [B, 80]: PoseTokenizer.encode without its Python input checks."""

    def __init__(self, pose_tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = pose_tokenizer

    def forward(self, pose_6d: Tensor) -> Tensor:
        latents = self.tokenizer.encoder(pose_6d)  # [B, C, K]
        batch, channels, num_codes = latents.shape
        flat = latents.transpose(1, 2).reshape(batch * num_codes, channels)
        return self.tokenizer.quantizer.nearest(flat).reshape(batch, num_codes)


class PoseDecoderGraph(nn.Module):
    """codes [B, 80] -> pose_6d [B, 22, 6], rotmat [B, 22, 3, 3]: PoseTokenizer.decode_6d / decode_rotmat."""

    def __init__(self, pose_tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = pose_tokenizer

    def forward(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        pose_6d = self.tokenizer.decoder(self.tokenizer.quantizer.lookup(codes).transpose(1, 2))
        return pose_6d, rotation_6d_to_matrix(pose_6d.float())


class VisionGraph(nn.Module):
    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self.vision(clip_pixels, pose_pixels)


class TextEncoderGraph(nn.Module):
    """The sentence encoder: WordPiece ids and mask -> the LLM input rows of the sentence embedding, and the
    embedding itself (float32; the text-pose matcher reads it)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        sentence = self.text_encoder.sentence_embedding(input_ids, attention_mask)
        return self.text_encoder.project(sentence), sentence


class PoseMatcherGraph(nn.Module):
    """The text-pose matcher: joints [N, 22, 3] and sentence embeddings [N, H] -> scores [N]."""

    def __init__(self, pose_matcher: nn.Module) -> None:
        super().__init__()
        self.pose_matcher = pose_matcher

    def forward(self, joints_m: Tensor, sentence_embedding: Tensor) -> Tensor:
        return self.pose_matcher(joints_m, sentence_embedding)


class EmbedGraph(nn.Module):
    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.llm.embed(input_ids)


class DecoderGraph(nn.Module):
    """MistralLM.forward over T new tokens against explicit past k/v; logits only at `logits_index`."""

    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.llm = llm
        self.num_layers = llm.config.num_hidden_layers

    def forward(self, input_embeds: Tensor, positions: Tensor, block_start: Tensor, block_end: Tensor,
                key_start: Tensor, query_offset: Tensor, logits_index: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        n = self.num_layers
        # The model's own cache write, out of place: the updated cache of every layer is a value the graph returns
        # (torch.export would otherwise see input mutations).
        cache = KVCache.from_tensors(list(past[:n]), list(past[n:]), in_place=False)
        mask = MixedMask(block_start, block_end, key_start, query_offset)
        out = self.llm(input_embeds=input_embeds, positions=positions, mask=mask, cache=cache,
                       logits_positions=None, return_hidden=True)
        # The LM head at the selected positions only, as MistralLM does for `logits_positions`.
        selected = out.hidden.index_select(1, logits_index)
        logits = self.llm.lm_head(selected).float()
        if self.llm.pose_head is not None:  # ChatPose: the pose head's outputs at the same positions
            return (logits, self.llm.pose_head(selected).float(), *cache.k, *cache.v)
        return (logits, *cache.k, *cache.v)


# ------------------------------------------------------------------------------------------- example inputs
def example_inputs(spec: S.GraphSpec, config: UniPoseConfig, dtype: torch.dtype, *, batch: int = 2,
                   tokens: int = 5, keys: int = 9, logits: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs that follow `spec`: random floats, valid ids / codes, and mask bounds that exercise a pose block,
    left padding and a cache offset. Dynamic sizes are >= 2 so torch.export keeps them symbolic."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"batch": batch, "tokens": tokens, "keys": keys, "logits": logits, "poses": 3}
    offset = keys - tokens  # every row writes its tokens at the end of the cache
    values: dict[str, Tensor] = {
        "block_start": torch.full((batch,), offset + 1, dtype=torch.int32),
        "block_end": torch.full((batch,), offset + tokens, dtype=torch.int32),
        "key_start": torch.arange(batch, dtype=torch.int32) % max(1, offset),
        "query_offset": torch.full((batch,), offset, dtype=torch.int32),
        "logits_index": torch.arange(tokens - logits, tokens, dtype=torch.long),
        "positions": torch.arange(offset, offset + tokens, dtype=torch.long).repeat(batch, 1),
        "input_ids": torch.randint(0, config.llm.vocab_size, (batch, tokens), generator=gen),
        "codes": torch.randint(0, config.pose_tokenizer.codebook_size, (batch, config.pose_tokenizer.num_tokens),
                               generator=gen),
    }
    if spec.name == S.TEXT_ENCODER_GRAPH and config.text_encoder is not None:
        words = max(tokens, 4)
        sizes["words"] = words
        values["input_ids"] = torch.randint(0, config.text_encoder.vocab_size, (batch, words), generator=gen)
        mask = torch.ones((batch, words), dtype=torch.long)
        mask[1:, words // 2:] = 0  # right padding in every row but the first
        values["attention_mask"] = mask
    if spec.name == S.POSE_MATCHER_GRAPH:
        from unipose_sdk.body.pose import Pose

        rotmat = torch.linalg.qr(torch.randn(sizes["poses"], 22, 3, 3, generator=gen, dtype=torch.float64))[0]
        rotmat = rotmat * torch.linalg.det(rotmat).sign()[..., None, None]  # proper rotations
        values["joints_m"] = Pose.from_rotmat(rotmat.float()).joints()
        values["sentence_embedding"] = torch.nn.functional.normalize(
            torch.randn(sizes["poses"], spec.inputs[1].shape[1], generator=gen), dim=-1)
    out = []
    for tensor in spec.inputs:
        shape = tuple(sizes[s] if isinstance(s, str) else s for s in tensor.shape)
        if tensor.name in values:
            out.append(values[tensor.name])
        elif tensor.name == "pose_6d":
            rotmat = torch.linalg.qr(torch.randn(*shape[:2], 3, 3, generator=gen))[0]
            out.append(rotmat[..., :2, :].reshape(shape))  # 6D = first two rows of a rotation (orthonormal)
        else:
            scale = 1.0 if tensor.name != "input_embeds" else 0.05
            out.append((torch.randn(shape, generator=gen) * scale).to(dtype if tensor.dtype == "compute"
                                                                      else getattr(torch, tensor.dtype)))
    return tuple(out)


def _dynamic_shapes(spec: S.GraphSpec) -> tuple[Any, ...]:
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1)
        return dims[name]

    per_input = [{axis: dim(name) for axis, name in t.dynamic_axes.items()} or None for t in spec.inputs]
    if spec.name == "decoder":  # the past k/v travel as one *past varargs tuple
        first_past = next(i for i, t in enumerate(spec.inputs) if t.name.startswith("past_"))
        return (*per_input[:first_past], tuple(per_input[first_past:]))
    return tuple(per_input)


# ------------------------------------------------------------------------------------------- attention
def _translation(emission: str, upcast: bool) -> dict[Callable[..., Any], Callable[..., Any]]:
    """kernels/onnx.py's translation of the attention op; with `upcast`, wrapped in Casts so that MatMul and
    Softmax run in float32 inside a half-precision graph (the same emission, never a second copy of it)."""
    from onnxscript import opset18 as op
    from unipose_sdk.kernels import onnx as kernels_onnx

    table = kernels_onnx.translation_table(emission)  # type: ignore[arg-type]
    if not upcast:
        return table
    ((target, translate),) = table.items()

    def upcast_translate(q, k, v, block_start, block_end, key_start, query_offset, scale: float):  # noqa: ANN001
        f32 = 1  # TensorProto.FLOAT
        out = translate(op.Cast(q, to=f32), op.Cast(k, to=f32), op.Cast(v, to=f32),
                        block_start, block_end, key_start, query_offset, scale)
        return op.CastLike(out, q)

    return {target: upcast_translate}


# ------------------------------------------------------------------------------------------- the export
@dataclass
class GraphReport:
    name: str
    file: str
    size_mb: float
    export_s: float
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    validated: str = "no"  # "yes", "no" (validate=False), or "skipped: <reason>"
    weights: str = "float"  # the quantization scheme of this graph (export/quantize.py), "float" when none
    quant_relative_error: float | None = None  # worst output's ||quantized - float|| / ||float|| (validation)
    token_agreement: float | None = None  # decoder: share of logit positions whose arg-max token is unchanged


@dataclass
class ExportReport:
    directory: Path
    precision: str
    emission: str
    graphs: list[GraphReport] = field(default_factory=list)
    export_id: str = ""
    weights_sha256: str = ""
    weight_precision: str = "float"  # float | int8 | int4 | mixed (formats.WEIGHT_PRECISIONS)

    def table(self) -> str:
        quantized = any(g.weights != "float" for g in self.graphs)
        rows = [("graph", "size MB", "time s", "max diff", "validated")
                + (("weights", "error vs float", "tokens vs float") if quantized else ())]
        for g in self.graphs:
            diff = "-" if g.max_abs_diff is None else f"{g.max_abs_diff:.2e}"
            row: tuple[str, ...] = (g.name, f"{g.size_mb:.1f}", f"{g.export_s:.1f}", diff, g.validated)
            if quantized:
                error = "-" if g.quant_relative_error is None else f"{g.quant_relative_error:.3f}"
                tokens = "-" if g.token_agreement is None else f"{g.token_agreement:.1%}"
                row += (g.weights, error, tokens)
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


@dataclass
class _Source:
    model: Any  # UniPoseModel
    config: UniPoseConfig
    tokenizer: Any
    is_random: bool
    source: str
    weights_sha256: str  # of model.safetensors when the weights come from one, else of the state dict
    sentence_tokenizer: Any = None  # models with a sentence encoder


def _load_source(model: Any, dtype: torch.dtype) -> _Source:
    from unipose_sdk.checkpoint.embedded import EMBEDDED_DIR
    from unipose_sdk.checkpoint.sdk_format import WEIGHTS_FILE
    from unipose_sdk.models.unipose import UniPoseModel

    if isinstance(model, UniPoseModel):
        return _Source(model, model.config, None, False, "in-memory UniPoseModel",
                       state_dict_sha256(model.state_dict()))
    if not (model is None or isinstance(model, (str, os.PathLike))):
        raise InvalidInputError.make(f"model of type {type(model).__name__}",
                                     f"None, {formats.EMBEDDED_MODEL!r}, an SDK model directory or a UniPoseModel",
                                     "Pass the model directory written by `unipose convert`.")
    loaded = loading.load_torch_model(model, "cpu", dtype)
    name = formats.EMBEDDED_MODEL if formats.is_embedded(model) else str(model)
    weights = (EMBEDDED_DIR if formats.is_embedded(model) else Path(model)) / WEIGHTS_FILE
    digest = file_sha256(weights) if weights.is_file() else state_dict_sha256(loaded.model.state_dict())
    return _Source(loaded.model, loaded.config, loaded.tokenizer, loaded.is_random, f"{name}: {loaded.source}",
                   digest, loaded.sentence_tokenizer)


def _part_at(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module in `dtype`: itself when it already is, else a cast copy (the caller's model is never changed)."""
    first = next(module.parameters())
    return module if first.dtype == dtype else copy.deepcopy(module).to(dtype)


def graph_modules(source_model: Any, name: str, dtype: torch.dtype) -> nn.Module:
    """The export wrapper of graph `name` over the model's own modules, in `dtype` (pose graphs stay float32)."""
    if name == "pose_encoder":
        return PoseEncoderGraph(_part_at(source_model.pose_tokenizer, torch.float32)).eval()
    if name == "pose_decoder":
        return PoseDecoderGraph(_part_at(source_model.pose_tokenizer, torch.float32)).eval()
    if name == "vision":
        return VisionGraph(_part_at(source_model.vision, dtype)).eval()
    if name == "embed":
        return EmbedGraph(_part_at(source_model.llm, dtype)).eval()
    if name == S.TEXT_ENCODER_GRAPH:
        return TextEncoderGraph(_part_at(source_model.text_encoder, dtype)).eval()
    if name == S.POSE_MATCHER_GRAPH:
        return PoseMatcherGraph(_part_at(source_model.pose_matcher, torch.float32)).eval()
    if name == "decoder":
        return DecoderGraph(_part_at(source_model.llm, dtype)).eval()
    raise InvalidInputError.make(f"graph {name!r}", f"one of {S.ALL_GRAPH_NAMES}", "Pick a graph from the specs.")


def metadata_props(spec: S.GraphSpec, src: _Source, precision: str, emission: str, export_id: str,
                   file_digests: dict[str, str]) -> dict[str, str]:
    return {
        S.META_FORMAT: S.FORMAT_NAME,
        S.META_FORMAT_VERSION: str(S.FORMAT_VERSION),
        S.META_GRAPH: spec.name,
        S.META_SDK_VERSION: __version__,
        S.META_CONFIG: json.dumps(src.config.to_dict()),
        S.META_VOCAB: json.dumps({**src.config.to_dict()["vocab"], "vocab_size": src.config.vocab.vocab_size,
                                  "pose_begin_id": src.config.vocab.pose_begin_id,
                                  "pose_end_id": src.config.vocab.pose_end_id,
                                  "pose_query_offset": src.config.vocab.pose_query_offset}),
        S.META_SPEC: json.dumps(spec.to_dict()),
        S.META_PRECISION: precision,
        S.META_EMISSION: emission,
        S.META_IS_RANDOM: json.dumps(bool(src.is_random)),
        S.META_SOURCE: src.source,
        S.META_EXPORT_ID: export_id,
        S.META_WEIGHTS_SHA256: src.weights_sha256,
        S.META_FILES: json.dumps(file_digests, sort_keys=True),
    }


def export_graph(module: nn.Module, spec: S.GraphSpec, config: UniPoseConfig, path: Path, dtype: torch.dtype,
                 metadata: dict[str, str], emission: str = "decomposed", optimize: bool = True) -> None:
    """torch.onnx (dynamo) export of one wrapper, with metadata; weights go to `<file>.data` past 2 GB."""
    from unipose_sdk.kernels import onnx as kernels_onnx

    args = example_inputs(spec, config, dtype)
    upcast = dtype != torch.float32
    with use_attention_impl("fused"), torch.no_grad():
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=max(spec.opset, kernels_onnx.opset_for(emission)),
            custom_translation_table=_translation(emission, upcast), input_names=spec.input_names,
            output_names=spec.output_names, dynamic_shapes=_dynamic_shapes(spec), optimize=optimize, verbose=False)
    program.model.metadata_props.update(metadata)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers())
    program.save(str(path), external_data=weight_bytes > S.EXTERNAL_DATA_THRESHOLD_BYTES)


def _validation_feeds(spec: S.GraphSpec, config: UniPoseConfig, dtype: torch.dtype) -> dict[str, np.ndarray]:
    """The validation inputs (the ones `validate_graph` uses) as numpy feeds, for comparing graphs with each other."""
    from unipose_sdk.export.validate import VALIDATION_SIZES, to_numpy

    inputs = example_inputs(spec, config, dtype, seed=1, **VALIDATION_SIZES)
    return {n: to_numpy(t) for n, t in zip(spec.input_names, inputs)}


def _file_size_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20


def _refuse_existing(target: Path) -> CheckpointError:
    return CheckpointError.make(f"output directory {str(target)!r}, which already exists", "a new directory",
                                "Choose another output path, or pass overwrite=True / --overwrite.")


def export_onnx(model: Any = None, output_dir: str | os.PathLike = "unipose-onnx", *, precision: str = "fp32",
                emission: str = "decomposed", opset: int = S.OPSET_RANGE[0], graphs: tuple[str, ...] | None = None,
                validate: bool = True, overwrite: bool = False, progress: bool = True,
                optimize: bool = True, weights: str = "float", block_size: int = 128,
                quant_form: str = "onnxruntime", tokenizer: Any = None) -> ExportReport:
    """Export `model` (None / "unipose-tiny", an SDK model directory, or a UniPoseModel) to `output_dir`.

    precision: float32 | float16 | bfloat16 (or fp32 | fp16 | bf16) for the LLM and vision graphs (the pose
        tokenizer graphs are always float32); the graphs record the short name.
    emission: how attention is written (see unipose_sdk.kernels.onnx): "decomposed" (opset 18..20, any ONNX
        Runtime, TensorRT < 10.14 such as JetPack 6), "attention23", "custom".
    opset: within specs.OPSET_RANGE and at least what the emission needs; anything else is refused.
    optimize: run the ONNX optimizer on each graph (constant folding, fusions); ONNX Runtime optimizes again at
        load time, so turning it off only trades a little load time for a faster export.
    validate: run each graph in ONNX Runtime against the float32 torch model; a miss raises
        ExportValidationError naming the graph and its max / mean difference, and nothing is written.
    overwrite: replace an existing `output_dir` (only once the new export is complete); without it an existing
        directory is refused, also one that appears while the export runs.
    weights: float | int8 | int4 | mixed: quantized weights on top of `precision` (export/quantize.py plans the
        scheme of each graph); each quantized graph is compared with its float graph (error and token agreement
        in the report) and refused when it lost the signal.
    block_size: int4 block length along K (a power of two >= 16). quant_form: "onnxruntime" (MatMulNBits,
        MatMulInteger, GatherBlockQuantized) or "qdq" (int8 weights behind DequantizeLinear, for TensorRT).
    tokenizer: the TextTokenizer to write beside the graphs of an in-memory UniPoseModel (a model directory brings
        its own), so the task classes can load the export.
    """
    import unipose_sdk.export.quantize as Q
    from tqdm import tqdm
    from unipose_sdk.export.validate import VALIDATION_SIZES, validate_graph
    from unipose_sdk.kernels import onnx as kernels_onnx

    precision = S.check_precision(precision)
    weights = formats.weight_precision(weights)
    Q.check_block_size(block_size)
    Q.check_dtype(weights, precision, quant_form)
    schemes = Q.plan(weights, quant_form, S.ALL_GRAPH_NAMES)
    if emission not in kernels_onnx.EMISSIONS:
        raise InvalidInputError.make(f"emission={emission!r}", f"one of {kernels_onnx.EMISSIONS}",
                                     "Use 'decomposed' unless the runtime imports the opset-23 Attention op.")
    S.check_opset(opset, kernels_onnx.opset_for(emission))  # type: ignore[arg-type]
    target = Path(output_dir)
    if target.exists() and not overwrite:
        raise _refuse_existing(target)
    unknown = [g for g in graphs or () if g not in S.ALL_GRAPH_NAMES]
    if unknown:
        raise InvalidInputError.make(f"graphs {unknown}", f"names from {S.ALL_GRAPH_NAMES}", "Fix the graph names.")
    dtype = formats.torch_dtype(precision)
    # The reference for validation is float32; without validation load straight at the export precision.
    src = _load_source(model, torch.float32 if validate else dtype)
    if tokenizer is not None and src.tokenizer is None:
        src.tokenizer = tokenizer
    specs = S.graph_specs(src.config, precision, opset=opset)
    # None: every graph of this model (ChatPose has no pose tokenizer graphs; a sentence encoder adds its own).
    graphs = tuple(specs) if graphs is None else tuple(g for g in graphs if g in specs)
    export_id = uuid.uuid4().hex
    report = ExportReport(target, precision, emission, export_id=export_id, weights_sha256=src.weights_sha256,
                          weight_precision=weights)

    target.parent.mkdir(parents=True, exist_ok=True)
    # SIGTERM / SIGHUP raise (as Ctrl-C does) while the export runs, so the cleanup below runs for them too; the
    # temporary directory's mode follows the umask (tempfile.mkdtemp would leave the finished directory 0700).
    with signals_raise():
        tmp = make_temp_dir(target.parent, target.name)
        try:
            # The files beside the graphs first: every graph records their digests.
            if src.tokenizer is not None:
                src.tokenizer.save(tmp)
            if src.sentence_tokenizer is not None:
                src.sentence_tokenizer.save(tmp)
            if src.model.pose_tokenizer is not None:
                codebook = src.model.pose_tokenizer.quantizer.codebook.detach().float().cpu().numpy()
                np.save(tmp / S.POSE_CODEBOOK_FILE, codebook, allow_pickle=False)
            digests = {name: file_sha256(tmp / name) for name in (S.POSE_CODEBOOK_FILE, *ALL_TOKENIZER_FILES)
                       if (tmp / name).is_file()}
            for name in tqdm(graphs, desc="unipose export", unit="graph", disable=not progress):
                raise_if_signalled()  # a signal whose exception Python swallowed (see fileio) ends it here
                spec = specs[name]
                started = time.perf_counter()
                graph_dtype = formats.torch_dtype(spec.precision)
                module = graph_modules(src.model, name, graph_dtype)
                path = tmp / spec.file_name
                export_graph(module, spec, src.config, path, graph_dtype,
                             metadata_props(spec, src, precision, emission, export_id, digests), emission, optimize)
                entry = GraphReport(name, spec.file_name, _file_size_mb(path), time.perf_counter() - started)
                if validate:
                    reference = graph_modules(src.model, name, torch.float32)
                    inputs = example_inputs(spec, src.config, graph_dtype, seed=1, **VALIDATION_SIZES)
                    entry.max_abs_diff, entry.mean_abs_diff, entry.validated = validate_graph(
                        path, spec, reference, graph_dtype, inputs)
                    del reference
                del module
                if schemes[name] != Q.FLOAT or weights != "float":  # a float export's graphs are left as written
                    result = Q.quantize_in_place(path, spec, schemes[name], weights, block_size, _validation_feeds(
                        spec, src.config, graph_dtype) if validate else None)
                    entry.weights, entry.quant_relative_error, entry.token_agreement = result
                    entry.size_mb = _file_size_mb(path)
                report.graphs.append(entry)
            (tmp / "export_report.txt").write_text(report.table() + "\n", encoding="utf-8")
            with deferred_signals():
                if overwrite:
                    replace_directory(tmp, target)
                else:
                    try:  # one step; fails when another writer created a non-empty target meanwhile
                        os.rename(tmp, target)
                    except OSError:
                        raise _refuse_existing(target) from None
        except BaseException:
            with deferred_signals():  # a second signal must not cut the cleanup short
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return report


def quantize_export(source: str | os.PathLike, output_dir: str | os.PathLike, precision: str, *,
                    block_size: int = 128, form: str = "onnxruntime", validate: bool = True,
                    overwrite: bool = False) -> ExportReport:
    """A quantized copy of a float export directory (no torch model needed: the graphs are rewritten; `unipose
    export --model FLOAT_EXPORT_DIR --precision P`). The copy is an export of its own (a new export id in every
    graph), so its graphs and the float ones never mix; its graphs are compared with the float ones (the float
    graphs were validated against torch when they were exported)."""
    import unipose_sdk.export.quantize as Q
    from unipose_sdk.export.artifacts import read_directory

    precision = formats.weight_precision(precision)
    block_size = Q.check_block_size(block_size)
    exported = read_directory(source)
    if exported.weights != Q.FLOAT:
        raise InvalidInputError.make(f"export directory {str(source)!r} with {exported.weights} weights",
                                     "a float export to quantize", "Quantize the float export of the model.")
    Q.check_dtype(precision, exported.precision, form)
    schemes = Q.plan(precision, form, S.ALL_GRAPH_NAMES)
    target = Path(output_dir)
    if target.exists() and not overwrite:
        raise _refuse_existing(target)
    export_id = uuid.uuid4().hex
    dtype_name = formats.dtype(exported.precision).name
    report = ExportReport(target, exported.precision, exported.emission, export_id=export_id,
                          weights_sha256=exported.identity.weights_sha256, weight_precision=precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    with signals_raise():
        tmp = make_temp_dir(target.parent, target.name)
        try:
            for item in Path(source).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
            for name, info in exported.graphs.items():
                feeds = None
                if validate and schemes[name] != Q.FLOAT:
                    feeds = _validation_feeds(info.spec, exported.config, formats.torch_dtype(dtype_name))
                started = time.perf_counter()
                path = tmp / info.path.name
                entry = GraphReport(name, path.name, 0.0, 0.0, validated="float graph: yes" if validate else "no")
                entry.weights, entry.quant_relative_error, entry.token_agreement = Q.quantize_in_place(
                    path, info.spec, schemes[name], precision, block_size, feeds, export_id=export_id)
                entry.size_mb, entry.export_s = _file_size_mb(path), time.perf_counter() - started
                report.graphs.append(entry)
            (tmp / "export_report.txt").write_text(report.table() + "\n", encoding="utf-8")
            with deferred_signals():
                if overwrite:
                    replace_directory(tmp, target)
                else:
                    try:
                        os.rename(tmp, target)
                    except OSError:
                        raise _refuse_existing(target) from None
        except BaseException:
            with deferred_signals():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return report
