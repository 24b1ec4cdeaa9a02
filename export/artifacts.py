"""Reading exported artifacts back, for the runtimes and the engine builder: the metadata of ONNX graphs and
engine headers, the pose codebook and the tokenizer beside them, and the checks that every part belongs to the
same export.

Identity. `unipose export` gives each export a random id and records, in every graph's metadata, that id, the
sha256 of the weights it was made from (`weights_sha256`) and the sha256 of the files written beside the
graphs (`pose_codebook.npy`, `tokenizer.json`, `tokenizer_config.json`); each engine header repeats the id and
the weights digest. Reading a directory refuses, naming the part, a graph of another export, a codebook or
tokenizer whose bytes are not the recorded ones, and an engine built from other graphs: two exports of models
with the same config but different weights would otherwise run together silently and give wrong output.

Every parse failure (a damaged ONNX file, metadata that is not the JSON this SDK writes, an unreadable
tokenizer) is a CheckpointError naming the file and the fix.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import unipose_sdk.export.quantize as Q
import unipose_sdk.export.specs as S

from unipose_sdk.errors import (
    BackendUnavailableError,
    CheckpointError,
    InvalidInputError,
    ModelNotFoundError,
    UniPoseError,
)
from unipose_sdk.models.config import UniPoseConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Every tokenizer file an export may hold: the sentence encoder's for models with one (unipose-tiny v2).
ALL_TOKENIZER_FILES = (*TOKENIZER_FILES, "sentence_tokenizer.json")
REEXPORT_HINT = "Re-export the model into a new directory: unipose export --model M -o DIR."
MIXED_HINT = ("The directory mixes files of different exports; do not copy files between exports: "
              "re-export the model into a new directory (unipose export --model M -o DIR).")


# ------------------------------------------------------------------------------------------- digests
def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file and of its external data file `<file>.data` (ONNX graphs past 2 GB), streamed."""
    digest = hashlib.sha256()
    for file in (Path(path), Path(str(path) + ".data")):
        if file.exists():
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes in name order (for weights that have no file:
    an in-memory model, the seeded placeholder)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        # As raw bytes whatever the dtype (numpy has no bfloat16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Identity:
    """Which export a part belongs to (`export_id`) and the digest of the weights it was made from."""

    export_id: str
    weights_sha256: str

    def short(self) -> str:
        return f"export {self.export_id[:12]} (weights sha256 {self.weights_sha256[:12]})"


# ------------------------------------------------------------------------------------------- ONNX directories
@dataclass
class GraphInfo:
    path: Path
    spec: S.GraphSpec
    metadata: dict[str, str]
    identity: Identity
    quantization: Q.QuantInfo = field(default_factory=lambda: Q.QuantInfo(Q.FLOAT, Q.FLOAT))


@dataclass
class ExportedModel:
    """A directory written by `unipose export`, described by the metadata inside its files."""

    directory: Path
    config: UniPoseConfig
    precision: str
    emission: str
    is_random: bool
    source: str
    graphs: dict[str, GraphInfo]
    identity: Identity
    file_digests: dict[str, str] = field(default_factory=dict)  # recorded sha256 of the files beside the graphs
    pose_codebook: np.ndarray | None = None  # [K, D] float32; None when the file was removed (argmax decoding)
    weights: str = "float"  # the weight precision every graph records: float | int8 | int4 | mixed

    @property
    def quantization(self) -> dict[str, Q.QuantInfo]:
        """Graph name -> how its weights are stored."""
        return {name: info.quantization for name, info in self.graphs.items()}


def read_graph_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of one ONNX file (the graph structure only; external weights are not read)."""
    import onnx

    file = Path(path)
    try:
        model = onnx.load(str(file), load_external_data=False)
    except FileNotFoundError:
        raise ModelNotFoundError.make(f"no graph file {file}", "the ONNX graph written by `unipose export`",
                                      REEXPORT_HINT) from None
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others for damaged files
        raise CheckpointError.make(f"{file}, which is not a readable ONNX file ({type(exc).__name__}: {exc})",
                                   "an ONNX graph written by `unipose export`",
                                   f"The file is damaged or truncated. {REEXPORT_HINT}") from None
    return {p.key: p.value for p in model.metadata_props}


def metadata_json(meta: Mapping[str, str], key: str, file: Path) -> Any:
    """One JSON-valued metadata entry, or a CheckpointError naming the file and the key."""
    if key not in meta:
        raise CheckpointError.make(f"{file} without the metadata entry {key!r}",
                                   "the metadata `unipose export` writes into every graph", REEXPORT_HINT)
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError.make(f"{file} whose metadata entry {key!r} is not valid JSON ({exc})",
                                   "the JSON `unipose export` writes",
                                   f"The file was edited or damaged. {REEXPORT_HINT}") from None


def is_export_directory(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a directory written by `unipose export` (it has the decoder graph)."""
    root = Path(path)
    return root.is_dir() and (root / "decoder.onnx").is_file()


def _graph_info(root: Path, name: str) -> GraphInfo:
    file = root / f"{name}.onnx"
    meta = read_graph_metadata(file)
    if meta.get(S.META_FORMAT) != S.FORMAT_NAME or meta.get(S.META_GRAPH) != name:
        raise CheckpointError.make(
            f"{file} with format {meta.get(S.META_FORMAT)!r} / graph {meta.get(S.META_GRAPH)!r}",
            f"format {S.FORMAT_NAME!r} and graph {name!r}",
            "This file was not written by `unipose export`; export the model again.")
    if meta.get(S.META_FORMAT_VERSION) != str(S.FORMAT_VERSION):
        raise CheckpointError.make(
            f"{file} of format version {meta.get(S.META_FORMAT_VERSION)!r}", f"version {S.FORMAT_VERSION}",
            "Re-export with this SDK version (or upgrade unipose-sdk).")
    try:
        spec = S.GraphSpec.from_dict(metadata_json(meta, S.META_SPEC, file))
    except UniPoseError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError.make(f"{file} with an unusable graph spec ({type(exc).__name__}: {exc})",
                                   "the spec `unipose export` writes", REEXPORT_HINT) from None
    export_id, weights = meta.get(S.META_EXPORT_ID), meta.get(S.META_WEIGHTS_SHA256)
    if not export_id or not weights:
        raise CheckpointError.make(f"{file} without an export id or weights digest",
                                   "the identity `unipose export` records in every graph", REEXPORT_HINT)
    try:
        quantization = Q.read_quantization(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError.make(f"{file} with unusable quantization metadata ({type(exc).__name__}: {exc})",
                                   f"the {Q.META_QUANTIZATION!r} entry `unipose export` writes",
                                   REEXPORT_HINT) from None
    return GraphInfo(file, spec, meta, Identity(export_id, weights), quantization)


def check_quantization(graphs: Mapping[str, GraphInfo]) -> str:
    """The weight precision every graph records. Refused, naming the graph: graphs of different precisions (parts
    of two exports mixed even under one export id), a scheme the precision does not plan for that graph, and a
    graph that does not hold the ops its metadata names (or holds quantized ops while it says float)."""
    precisions = collections.Counter(info.quantization.precision for info in graphs.values())
    reference = precisions.most_common(1)[0][0]
    odd = [f"{info.path.name} ({info.quantization.precision})" for info in graphs.values()
           if info.quantization.precision != reference]
    if odd or reference not in Q.PRECISIONS:
        first = next(iter(graphs.values())).path.parent
        raise CheckpointError.make(f"{', '.join(odd) or reference!r} in {first}",
                                   f"every graph of one weight precision (one of {list(Q.PRECISIONS)}), like the "
                                   f"other graphs ({reference})", MIXED_HINT)
    plans = {form: Q.plan(reference, form, S.ALL_GRAPH_NAMES) for form in Q.FORMS}
    for name, info in graphs.items():
        quant = info.quantization
        planned = plans.get(quant.form, {}).get(name)
        # A plan's scheme falls back to float when a graph has nothing it applies to (e.g. a vocabulary table
        # whose width is not whole blocks), and a composite to the parts that found something.
        if quant.scheme not in Q.accepted_schemes(planned):
            raise CheckpointError.make(f"{info.path.name} with weights {quant.scheme!r} in a {reference} export",
                                       f"weights {planned!r} for graph {name!r} at precision {reference}", MIXED_HINT)
        ops = Q.graph_op_types(info.path)
        missing = [op for op in Q.SCHEME_OPS.get(quant.scheme, ()) if op not in ops]
        stray = sorted(ops & Q.QUANTIZED_OPS) if quant.scheme == Q.FLOAT else []
        if missing or stray:
            raise CheckpointError.make(
                f"{info.path.name} whose metadata says {quant.scheme!r} but whose graph "
                + (f"lacks {missing}" if missing else f"holds {stray}"),
                "a graph that holds the ops its metadata names",
                f"The file was edited or replaced. {REEXPORT_HINT}")
    return reference


def check_same_export(graphs: Mapping[str, GraphInfo]) -> Identity:
    """The identity shared by the graphs; a graph of another export is refused by name (the identity most graphs
    carry is taken as the directory's, so the odd one out is the one named)."""
    counts = collections.Counter(info.identity for info in graphs.values())
    reference = max(counts, key=lambda ident: (counts[ident], graphs["decoder"].identity == ident
                                               if "decoder" in graphs else False))
    odd = [info for info in graphs.values() if info.identity != reference]
    if odd:
        names = ", ".join(f"{info.path.name} ({info.identity.short()})" for info in odd)
        raise CheckpointError.make(f"{names} in {odd[0].path.parent}",
                                   f"every graph from {reference.short()} like the other graphs", MIXED_HINT)
    return reference


def check_file_digest(path: Path, recorded: str | None, identity: Identity) -> None:
    """Refuse a file beside the graphs whose bytes are not the ones the export recorded."""
    if recorded is None or not path.is_file():
        return
    actual = file_sha256(path)
    if actual != recorded:
        raise CheckpointError.make(
            f"{path} with sha256 {actual[:12]}", f"the file of {identity.short()}, sha256 {recorded[:12]}",
            f"It comes from another export or was damaged. {MIXED_HINT}")


def read_directory(path: str | os.PathLike) -> ExportedModel:
    """Every graph's metadata, checked for format, version and identity; the codebook and tokenizer checked
    against the digests the graphs recorded."""
    root = Path(path)
    if not root.is_dir():
        raise ModelNotFoundError.make(f"export directory {str(root)!r}, which does not exist",
                                      "a directory written by `unipose export`",
                                      "Check the path, or export first: unipose export --model M -o DIR.")
    # A ChatPose export has no pose tokenizer graphs; with either of them present both are required, and a
    # UniPose config without them is refused below.
    has_pose_graphs = any((root / f"{n}.onnx").is_file() for n in S.POSE_GRAPH_NAMES)
    # The sentence encoder's and the matcher's graphs belong to models that have them: the config decides below.
    optional = (S.TEXT_ENCODER_GRAPH, S.POSE_MATCHER_GRAPH)
    names = [n for n in S.ALL_GRAPH_NAMES if (has_pose_graphs or n not in S.POSE_GRAPH_NAMES)
             and (n not in optional or (root / f"{n}.onnx").is_file())]
    missing = [n for n in names if not (root / f"{n}.onnx").is_file()]
    if missing:
        raise CheckpointError.make(
            f"export directory {str(root)!r} without {[f'{n}.onnx' for n in missing]}",
            f"all of {[f'{n}.onnx' for n in S.GRAPH_NAMES]}", "Re-run `unipose export` into a new directory.")
    graphs = {name: _graph_info(root, name) for name in names}
    identity = check_same_export(graphs)
    weights = check_quantization(graphs)
    first = graphs["decoder"]
    config_dict = metadata_json(first.metadata, S.META_CONFIG, first.path)
    for name, info in graphs.items():
        if metadata_json(info.metadata, S.META_CONFIG, info.path) != config_dict:
            raise CheckpointError.make(f"graph {name} exported from a different model config than decoder.onnx",
                                       "one model per export directory", "Re-export all graphs together.")
    try:
        config = UniPoseConfig.from_dict(config_dict)
    except UniPoseError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError.make(f"{first.path} with an unusable model config ({type(exc).__name__}: {exc})",
                                   "the UniPoseConfig `unipose export` records", REEXPORT_HINT) from None
    if set(S.family_graph_names(config)) != set(graphs):
        raise CheckpointError.make(
            f"export directory {str(root)!r} of a {config.family} model with the graphs {sorted(graphs)}",
            f"the graphs {sorted(S.family_graph_names(config))}", "Re-run `unipose export` into a new directory.")
    digests = metadata_json(first.metadata, S.META_FILES, first.path)
    if not isinstance(digests, dict):
        raise CheckpointError.make(f"{first.path} whose {S.META_FILES!r} is a {type(digests).__name__}",
                                   "a JSON object of file digests", REEXPORT_HINT)
    precision = first.metadata.get(S.META_PRECISION, "")
    if precision not in S.PRECISIONS:
        raise CheckpointError.make(f"{first.path} with precision {precision!r}", f"one of {S.PRECISIONS}",
                                   REEXPORT_HINT)
    for name in ALL_TOKENIZER_FILES:
        check_file_digest(root / name, digests.get(name), identity)
    is_random = first.metadata.get(S.META_IS_RANDOM, "false") == "true"
    return ExportedModel(root, config, precision, first.metadata.get(S.META_EMISSION, "decomposed"), is_random,
                         first.metadata.get(S.META_SOURCE, ""), graphs, identity, digests,
                         read_pose_codebook(root, config, digests.get(S.POSE_CODEBOOK_FILE), identity), weights)


def read_pose_codebook(root: Path, config: UniPoseConfig, recorded_sha256: str | None = None,
                       identity: Identity | None = None) -> np.ndarray | None:
    """The export's `pose_codebook.npy` [K, D] float32, or None when the directory has none."""
    path = root / S.POSE_CODEBOOK_FILE
    if not path.is_file():
        return None
    try:
        codebook = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError / EOFError / OSError for damaged files
        raise CheckpointError.make(f"{path}, which numpy cannot read ({type(exc).__name__}: {exc})",
                                   "the .npy array written by `unipose export`",
                                   f"The file is damaged. {REEXPORT_HINT}") from None
    expected = (config.pose_tokenizer.codebook_size, config.pose_tokenizer.code_dim)
    if getattr(codebook, "shape", None) != expected:
        raise CheckpointError.make(f"{path} of shape {getattr(codebook, 'shape', None)}",
                                   f"the codebook shape {expected} of the config",
                                   "Re-export the model: this file belongs to another pose tokenizer.")
    if identity is not None:
        check_file_digest(path, recorded_sha256, identity)
    return codebook.astype(np.float32)


def read_tokenizer(root: Path, layout: Any) -> Any:
    """The TextTokenizer beside the graphs (its digest was checked by read_directory); a missing or unreadable
    file names itself and the fix."""
    from unipose_sdk.text.tokenizer import TextTokenizer

    file = root / TOKENIZER_FILES[0]
    if not file.is_file():
        raise ModelNotFoundError(
            f"received export directory {root} without tokenizer.json; expected the text tokenizer beside the "
            "graphs. Re-run `unipose export`, which copies it from the model directory.")
    try:
        return TextTokenizer.from_directory(root, layout)
    except UniPoseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception for bad JSON
        raise CheckpointError.make(f"{file}, which cannot be read as a tokenizer ({type(exc).__name__}: {exc})",
                                   "the tokenizer.json written by `unipose export`",
                                   f"The file is damaged. {REEXPORT_HINT}") from None


# ------------------------------------------------------------------------------------------- engine headers
MAGIC = b"UPTRTENG"
# 2: the header carries the identity of the export its ONNX graph came from.
HEADER_FORMAT_VERSION = 2
HEADER_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 16 * 1024 * 1024
REBUILD_HINT = "Rebuild the engines on this machine: unipose export --model M --format engine -o DIR"


def parse_version(version: str) -> tuple[int, ...]:
    """"10.3.0.26" -> (10, 3, 0, 26); refuses anything without a numeric major.minor."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)  # "0b1" (a pre-release) counts as 0
        if match is None:
            break
        parts.append(int(match.group()))
    if len(parts) < 2:
        raise InvalidInputError.make(f"TensorRT version {version!r}", "a version like '10.3.0'",
                                     "Pass tensorrt.__version__.")
    return tuple(parts)


@dataclass(frozen=True)
class EngineHeader:
    """Engine file layout: MAGIC (8 bytes) | header length (uint32, little endian) | this header as JSON (UTF-8)
    | the serialized engine."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    sdk_version: str
    precision: str
    graph: str
    spec: dict[str, Any]
    onnx_sha256: str
    export_id: str = ""  # of the ONNX graph the engine was built from
    weights_sha256: str = ""
    format_version: int = HEADER_FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @property
    def identity(self) -> Identity:
        return Identity(self.export_id, self.weights_sha256)


def read_engine_header(path: str | os.PathLike) -> tuple[EngineHeader, int]:
    """(header, byte offset where the serialized engine starts)."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            prefix = handle.read(len(MAGIC) + HEADER_LENGTH.size)
            if len(prefix) < len(MAGIC) + HEADER_LENGTH.size or prefix[:len(MAGIC)] != MAGIC:
                raise CheckpointError.make(f"{file}, which does not start with the unipose engine header",
                                           "an engine written by `unipose export --format engine`", REBUILD_HINT)
            (length,) = HEADER_LENGTH.unpack(prefix[len(MAGIC):])
            if length > MAX_HEADER_BYTES:
                raise CheckpointError.make(f"{file} with a {length}-byte header", f"<= {MAX_HEADER_BYTES} bytes",
                                           f"The file is damaged. {REBUILD_HINT}")
            raw = handle.read(length)
    except FileNotFoundError:
        raise CheckpointError.make(f"no engine file {file}", "one .engine per graph", REBUILD_HINT) from None
    try:
        data = json.loads(raw.decode("utf-8"))
        header = EngineHeader(**data)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError.make(f"{file} with an unreadable header ({type(exc).__name__})",
                                   "the JSON header written by this SDK",
                                   f"The file is damaged. {REBUILD_HINT}") from None
    return header, len(MAGIC) + HEADER_LENGTH.size + length


def check_compatible(header: EngineHeader, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     path: str | os.PathLike = "engine") -> None:
    """Refuse an engine built for another TensorRT version, GPU or header format (plans are not portable)."""
    problems = []
    if header.format_version != HEADER_FORMAT_VERSION:
        problems.append(f"header format {header.format_version} (this SDK reads {HEADER_FORMAT_VERSION})")
    if parse_version(header.tensorrt_version)[:3] != parse_version(tensorrt_version)[:3]:
        problems.append(f"TensorRT {header.tensorrt_version} (installed: {tensorrt_version})")
    if header.compute_capability != compute_capability:
        problems.append(f"compute capability {header.compute_capability} (this GPU: {compute_capability})")
    if header.gpu_name != gpu_name:
        problems.append(f"GPU {header.gpu_name!r} (this GPU: {gpu_name!r})")
    if problems:
        raise BackendUnavailableError.make(
            f"engine {path} built for " + ", ".join(problems),
            "an engine built with this TensorRT version on this GPU", REBUILD_HINT + ".")


def check_engine_identity(header: EngineHeader, exported: ExportedModel, path: str | os.PathLike) -> None:
    """Refuse an engine built from the graphs of another export, or for another graph than its file name."""
    expected_graph = Path(path).stem
    if header.graph != expected_graph:
        raise CheckpointError.make(f"engine {path} built for graph {header.graph!r}", f"graph {expected_graph!r}",
                                   REBUILD_HINT + ".")
    if header.identity != exported.identity:
        raise CheckpointError.make(f"engine {path} built from {header.identity.short()}",
                                   f"an engine built from the graphs beside it, {exported.identity.short()}",
                                   f"It was copied from another export. {REBUILD_HINT}.")
