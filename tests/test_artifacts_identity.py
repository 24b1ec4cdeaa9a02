"""Artifacts carry their identity, and the format table drives loading.

Two exports of models with the SAME config but DIFFERENT weights (module fixture): any part of one copied into
the other (a graph, the pose codebook, the tokenizer files) is refused naming that part; damaged files and bad
metadata are CheckpointErrors naming the file; exports are all or nothing (errors, SIGTERM, a directory that
appears meanwhile), follow the umask and refuse an opset outside the supported range; engine headers carry
the same identity. Also the one dtype table and the format table (`backend="auto"`, the bench's formats).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from unipose_sdk.export import artifacts as A  # noqa: E402
from unipose_sdk.export import onnx as export_module  # noqa: E402
from unipose_sdk.export import specs as S  # noqa: E402
from unipose_sdk.export import tensorrt as T  # noqa: E402

from unipose_sdk import formats, loading  # noqa: E402
from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError  # noqa: E402
from unipose_sdk.fileio import TerminatedBySignal  # noqa: E402
from unipose_sdk.options import Backend, GeneratorOptions  # noqa: E402
from unipose_sdk.tasks import Generator  # noqa: E402

SHORT = {"max_new_tokens": 4}


# ------------------------------------------------------------------------------------------- fixtures
def _export(model: object, out: Path, **kwargs: object) -> export_module.ExportReport:
    return export_module.export_onnx(model, out, validate=False, optimize=False, progress=False, **kwargs)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The embedded model and a copy with every float tensor nudged (same config), each saved as an SDK
    directory with its tokenizer and exported."""
    from unipose_sdk.checkpoint.sdk_format import save_model

    root = tmp_path_factory.mktemp("identity")
    loaded = loading.load_torch_model(None, "cpu", torch.float32)
    save_model(loaded.model, root / "model-a", loaded.tokenizer)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in loaded.model.state_dict().values():  # parameters and buffers (the codebook is a buffer)
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen).to(t.dtype) * 1e-2)
    save_model(loaded.model, root / "model-b", loaded.tokenizer)
    for name in ("model-a", "model-b"):  # a model with a sentence encoder needs its tokenizer beside the weights
        if loaded.sentence_tokenizer is not None:
            loaded.sentence_tokenizer.save(root / name)
    _export(root / "model-a", root / "export-a")
    _export(root / "model-b", root / "export-b")
    return root / "export-a", root / "export-b"


@pytest.fixture
def mixed(two_exports: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of export A to damage or mix, and export B to take parts from."""
    a, b = two_exports
    copy = tmp_path / "mixed"
    shutil.copytree(a, copy)
    return copy, b


def _set_metadata(path: Path, **changes: str | None) -> None:
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------------------- identity
def test_two_exports_of_one_config_have_different_identities(two_exports: tuple[Path, Path]) -> None:
    a, b = (A.read_directory(p) for p in two_exports)
    assert a.config == b.config
    assert a.identity.export_id != b.identity.export_id
    assert a.identity.weights_sha256 != b.identity.weights_sha256
    assert a.identity.weights_sha256 == A.file_sha256(two_exports[0].parent / "model-a" / "model.safetensors")
    beside = {"pose_codebook.npy", "tokenizer.json", "tokenizer_config.json"}
    if a.config.text_encoder is not None:  # a model with a sentence encoder exports its tokenizer too
        beside.add("sentence_tokenizer.json")
    assert set(a.file_digests) == beside
    assert all(info.identity == a.identity for info in a.graphs.values())
    assert a.file_digests["pose_codebook.npy"] == A.file_sha256(two_exports[0] / "pose_codebook.npy")


@pytest.mark.parametrize("graph", S.GRAPH_NAMES)
def test_a_graph_of_another_export_is_refused_by_name(mixed: tuple[Path, Path], graph: str) -> None:
    target, other = mixed
    shutil.copy2(other / f"{graph}.onnx", target / f"{graph}.onnx")
    with pytest.raises(CheckpointError) as info:
        A.read_directory(target)
    message = str(info.value)
    assert f"{graph}.onnx" in message and "different exports" in message
    others = [g for g in S.GRAPH_NAMES if g != graph]
    assert not any(re.search(rf"(?<!\w){g}\.onnx \(", message) for g in others)  # only the odd one is named


def test_the_codebook_of_another_export_is_refused(mixed: tuple[Path, Path]) -> None:
    target, other = mixed
    shutil.copy2(other / "pose_codebook.npy", target / "pose_codebook.npy")
    with pytest.raises(CheckpointError, match=r"pose_codebook\.npy with sha256 .*another export"):
        A.read_directory(target)


@pytest.mark.parametrize("name", A.TOKENIZER_FILES)
def test_a_changed_tokenizer_file_is_refused(mixed: tuple[Path, Path], name: str) -> None:
    target, _ = mixed
    data = json.loads((target / name).read_text(encoding="utf-8"))
    (target / name).write_text(json.dumps(data, indent=1), encoding="utf-8")  # same content, other bytes
    with pytest.raises(CheckpointError, match=rf"{name} with sha256"):
        A.read_directory(target)


def test_mixed_directories_are_refused_through_the_task_classes(mixed: tuple[Path, Path]) -> None:
    target, other = mixed
    shutil.copy2(other / "decoder.onnx", target / "decoder.onnx")
    with pytest.raises(CheckpointError, match="decoder.onnx"):
        Generator.from_pretrained(target, **SHORT)


def test_the_identity_is_checked_even_when_every_graph_agrees(mixed: tuple[Path, Path]) -> None:
    """All the graphs of B with A's codebook and tokenizer: the graphs agree, the files beside them do not."""
    target, other = mixed
    for graph in S.family_graph_names(A.read_directory(other).config):
        shutil.copy2(other / f"{graph}.onnx", target / f"{graph}.onnx")
    with pytest.raises(CheckpointError, match="pose_codebook.npy"):
        A.read_directory(target)


def test_state_dict_digest_sees_values_dtypes_and_names() -> None:
    base = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    digest = A.state_dict_sha256(base)
    assert digest == A.state_dict_sha256(dict(reversed(list(base.items()))))  # order-independent
    assert digest != A.state_dict_sha256({**base, "w": torch.ones(2, 3) * 1.0001})
    assert digest != A.state_dict_sha256({**base, "w": torch.ones(2, 3, dtype=torch.bfloat16)})
    assert digest != A.state_dict_sha256({"v": base["w"], "b": base["b"]})
    assert digest != A.state_dict_sha256({**base, "w": torch.ones(3, 2)})


def test_an_in_memory_model_is_identified_by_its_state_dict(tmp_path: Path) -> None:
    loaded = loading.load_torch_model(None, "cpu", torch.float32)
    report = _export(loaded.model, tmp_path / "mem", graphs=("pose_decoder",))
    assert report.weights_sha256 == A.state_dict_sha256(loaded.model.state_dict())
    meta = A.read_graph_metadata(tmp_path / "mem" / "pose_decoder.onnx")
    assert meta[S.META_EXPORT_ID] == report.export_id and meta[S.META_WEIGHTS_SHA256] == report.weights_sha256
    assert set(json.loads(meta[S.META_FILES])) == {"pose_codebook.npy"}  # no tokenizer for an in-memory model


# ------------------------------------------------------------------------------------------- damaged files
def test_a_truncated_graph_is_a_checkpoint_error_naming_it(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    data = (target / "vision.onnx").read_bytes()
    (target / "vision.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"vision\.onnx, which is not a readable ONNX file.*Re-export"):
        A.read_directory(target)


def test_a_garbage_graph_is_a_checkpoint_error(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    (target / "embed.onnx").write_bytes(b"\xff\x00not protobuf" * 10)
    with pytest.raises(CheckpointError, match=r"embed\.onnx"):
        A.read_directory(target)


@pytest.mark.parametrize("key", [S.META_SPEC, S.META_CONFIG, S.META_FILES])
def test_metadata_that_is_not_json_names_the_file_and_key(mixed: tuple[Path, Path], key: str) -> None:
    target, _ = mixed
    _set_metadata(target / "decoder.onnx", **{key.replace(".", "__"): "{not json"})
    with pytest.raises(CheckpointError, match=rf"decoder\.onnx whose metadata entry '{key}' is not valid JSON"):
        A.read_directory(target)


def test_a_spec_with_missing_fields_is_a_checkpoint_error(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    _set_metadata(target / "embed.onnx", unipose__spec=json.dumps({"name": "embed"}))
    with pytest.raises(CheckpointError, match=r"embed\.onnx with an unusable graph spec"):
        A.read_directory(target)


def test_a_graph_without_identity_is_refused(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    _set_metadata(target / "pose_encoder.onnx", unipose__export_id=None)
    with pytest.raises(CheckpointError, match=r"pose_encoder\.onnx without an export id"):
        A.read_directory(target)


def test_an_export_of_the_previous_format_version_is_refused(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    _set_metadata(target / "decoder.onnx", unipose__format_version="1")
    with pytest.raises(CheckpointError, match="format version '1'.*Re-export"):
        A.read_directory(target)


def test_a_damaged_codebook_is_a_checkpoint_error(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    (target / "pose_codebook.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CheckpointError, match=r"pose_codebook\.npy, which numpy cannot read"):
        A.read_directory(target)


def test_a_damaged_tokenizer_is_refused_naming_it(mixed: tuple[Path, Path]) -> None:
    target, _ = mixed
    text = (target / "tokenizer.json").read_text(encoding="utf-8")
    (target / "tokenizer.json").write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        Generator.from_pretrained(target, **SHORT)


def test_the_tokenizer_reader_wraps_parse_errors(two_exports: tuple[Path, Path], tmp_path: Path) -> None:
    """Without a recorded digest to compare (read_tokenizer alone), a damaged file still names itself."""
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    layout = A.read_directory(two_exports[0]).config.vocab
    with pytest.raises(CheckpointError, match=r"tokenizer\.json, which cannot be read as a tokenizer.*damaged"):
        A.read_tokenizer(tmp_path, layout)


@pytest.mark.parametrize("missing", ["decoder.onnx", "vision.onnx"])
def test_auto_names_the_missing_graph(mixed: tuple[Path, Path], missing: str) -> None:
    target, _ = mixed
    (target / missing).unlink()
    with pytest.raises(CheckpointError, match=rf"without \['{missing}'\]"):
        Generator.from_pretrained(target, **SHORT)


# ------------------------------------------------------------------------------------------- writing exports
def test_a_second_export_into_the_same_directory_is_refused(two_exports: tuple[Path, Path]) -> None:
    before = sorted(p.name for p in two_exports[0].iterdir())
    with pytest.raises(CheckpointError, match="already exists.*--overwrite"):
        _export(None, two_exports[0], graphs=("pose_decoder",))
    assert sorted(p.name for p in two_exports[0].iterdir()) == before


def test_a_directory_that_appears_during_the_export_is_not_replaced(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    real = export_module.export_graph

    def racing(*args, **kwargs):  # type: ignore[no-untyped-def]
        target.mkdir(exist_ok=True)
        (target / "someone-elses.txt").write_text("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "export_graph", racing)
    with pytest.raises(CheckpointError, match="already exists"):
        _export(None, target, graphs=("pose_decoder",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left
    assert [p.name for p in target.iterdir()] == ["someone-elses.txt"]


def test_overwrite_replaces_a_finished_export(tmp_path: Path) -> None:
    first = _export(None, tmp_path / "out", graphs=("pose_decoder",))
    second = _export(None, tmp_path / "out", graphs=("pose_decoder",), overwrite=True)
    meta = A.read_graph_metadata(tmp_path / "out" / "pose_decoder.onnx")
    assert first.export_id != second.export_id and meta[S.META_EXPORT_ID] == second.export_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        _export(None, tmp_path / "out", graphs=("pose_decoder",))
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    for file in out.iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name


@pytest.mark.parametrize("opset, emission", [(7, "decomposed"), (17, "decomposed"), (24, "decomposed"),
                                             (True, "decomposed"), ("18", "decomposed"), (18, "attention23")])
def test_opsets_outside_the_supported_range_are_refused_before_any_work(tmp_path: Path, opset: object,
                                                                        emission: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "_load_source", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(InvalidInputError, match=r"opset=.*expected an int in \d+\.\.23"):
        _export(None, tmp_path / "out", opset=opset, emission=emission)
    assert not (tmp_path / "out").exists()


def test_unknown_emission_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="emission='fast'"):
        _export(None, tmp_path / "out", emission="fast")


def test_dtype_names_of_the_one_table_are_export_precisions(tmp_path: Path) -> None:
    report = _export(None, tmp_path / "out", precision="float32", graphs=("pose_decoder",))
    assert report.precision == "fp32"
    assert A.read_graph_metadata(tmp_path / "out" / "pose_decoder.onnx")[S.META_PRECISION] == "fp32"


@pytest.mark.parametrize("at_graph", [0, 1, 2])
def test_sigterm_during_an_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 at_graph: int) -> None:
    """SIGTERM (in-process) while graph `at_graph` is written: TerminatedBySignal, no target, no temporary dir."""
    real = export_module.export_graph
    calls = []

    def export_then_terminate(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > at_graph:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "export_graph", export_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TerminatedBySignal) as info:
        _export(None, tmp_path / "out", graphs=("pose_encoder", "pose_decoder", "embed"))
    assert info.value.signum == signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


@pytest.mark.slow
def test_sigterm_to_the_export_command_at_several_points_leaves_no_temporary_directory(tmp_path: Path) -> None:
    """`unipose export` as a subprocess, killed with SIGTERM as soon as its temporary directory exists, once
    its first graph is being written, and after a fixed delay: nothing hidden or partial remains."""

    def temporary() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    def first_graph() -> bool:
        return any(any(q.suffix == ".onnx" for q in p.iterdir()) for p in temporary() if p.is_dir())

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for point, ready in (("tmp", lambda: bool(temporary())), ("graph", first_graph), ("delay", None)):
        out = tmp_path / f"out-{point}"
        process = subprocess.Popen([sys.executable, "-m", "unipose_sdk", "export", "--quiet", "--no-validate",
                                    "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < 120:
            if (ready is not None and ready()) or (ready is None and time.monotonic() - started > 8):
                break
            time.sleep(0.01)
        finished_before = process.poll() is not None
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert temporary() == [], point
        if ready is not None:  # killed mid-export, not after it
            assert not finished_before and process.returncode != 0 and not out.exists(), point
        assert not out.exists() or A.read_directory(out).identity  # complete, or absent
        if out.exists():
            shutil.rmtree(out)


# ------------------------------------------------------------------------------------------- engine headers
def _engine_header(identity: A.Identity, graph: str = "decoder") -> A.EngineHeader:
    return A.EngineHeader(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", sdk_version="x",
                          precision="fp16", graph=graph, spec={}, onnx_sha256="ab" * 32,
                          export_id=identity.export_id, weights_sha256=identity.weights_sha256)


def test_engine_headers_carry_and_check_the_export_identity(two_exports: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = (A.read_directory(p) for p in two_exports)
    path = T.write_engine_file(tmp_path / "decoder.engine", _engine_header(a.identity), b"PLAN")
    header, _ = A.read_engine_header(path)
    assert header.identity == a.identity and header.format_version == A.HEADER_FORMAT_VERSION
    A.check_engine_identity(header, a, path)  # built from these graphs: accepted
    with pytest.raises(CheckpointError, match=r"decoder\.engine built from export .*Rebuild"):
        A.check_engine_identity(header, b, path)
    with pytest.raises(CheckpointError, match="built for graph 'decoder'"):
        A.check_engine_identity(header, a, tmp_path / "embed.engine")


def test_engine_headers_without_identity_are_refused_as_an_older_format() -> None:
    old = A.EngineHeader(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", sdk_version="x",
                         precision="fp16", graph="decoder", spec={}, onnx_sha256="ab", format_version=1)
    with pytest.raises(BackendUnavailableError, match="header format 1"):
        A.check_compatible(old, "10.3.0", "Orin", "8.7")


# ------------------------------------------------------------------------------------------- the tables
def test_the_one_dtype_table() -> None:
    assert formats.DTYPE_NAMES == ("float32", "float16", "bfloat16") and formats.PRECISIONS == S.PRECISIONS
    for name, short, torch_dtype in (("float32", "fp32", torch.float32), ("float16", "fp16", torch.float16),
                                     ("bfloat16", "bf16", torch.bfloat16)):
        assert formats.dtype(name) is formats.dtype(short) is formats.dtype(torch_dtype) is formats.DTYPES[name]
        assert formats.torch_dtype(short) is torch_dtype and formats.dtype(name.upper()).short == short
        assert S.check_precision(name) == short and S.torch_dtype_name(short) == name
    for bad in ("int8", torch.int64, 16, None):
        with pytest.raises(InvalidInputError, match="expected one of"):
            formats.dtype(bad)


def test_backend_enum_comes_from_the_format_table() -> None:
    assert [b.value for b in Backend] == ["auto", *formats.BACKENDS]
    assert formats.BACKENDS == ("torch", "onnxruntime", "tensorrt")
    assert formats.EXPORT_FORMATS == ("onnx", "engine")
    assert GeneratorOptions(backend="TensorRT").backend is Backend.TENSORRT
    assert formats.format_of_backend("onnxruntime").name == "onnx"
    assert formats.FORMATS["engine"].devices == ("cuda",)
    assert not formats.FORMATS["onnx"].runs("cpu", "bfloat16") and formats.FORMATS["onnx"].runs("cuda", "bfloat16")


def _fake_directory(root: Path, *files: str) -> Path:
    root.mkdir()
    for name in files:
        (root / name).write_bytes(b"")
    return root


def test_auto_resolves_each_kind_of_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = _fake_directory(tmp_path / "sdk", "config.json", "model.safetensors", "tokenizer.json")
    onnx = _fake_directory(tmp_path / "onnx", *(f"{g}.onnx" for g in S.GRAPH_NAMES))
    engine = _fake_directory(tmp_path / "engine", *(f"{g}.onnx" for g in S.GRAPH_NAMES),
                             *(f"{g}.engine" for g in S.GRAPH_NAMES))
    assert formats.resolve_source(None).format.name == "torch" and formats.resolve_source(None).path is None
    assert formats.resolve_source(sdk, "auto", "cpu").format.name == "torch"
    assert formats.resolve_source(onnx, "auto", "cuda").format.name == "onnx"
    assert formats.resolve_source(engine, "auto", "cpu").format.name == "onnx"  # engines do not run on the CPU
    monkeypatch.setattr(formats.Format, "installed", lambda self: True)
    chosen = formats.resolve_source(engine, "auto", "cuda")
    assert chosen.format.name == "engine" and chosen.note is None
    monkeypatch.setattr(formats.Format, "installed", lambda self: self.package != "tensorrt")
    chosen = formats.resolve_source(engine, "auto", "cuda")
    assert chosen.format.name == "onnx" and "tensorrt" in chosen.note and "not installed" in chosen.note
    assert [f.name for f in formats.runnable_formats(engine, "cuda")] == ["onnx"]
    assert [f.name for f in formats.runnable_formats(None, "cpu")] == ["torch"]


def test_a_partial_export_is_still_recognised_as_one(tmp_path: Path) -> None:
    partial = _fake_directory(tmp_path / "partial", "vision.onnx", "embed.onnx")
    assert [f.name for f in formats.formats_in(partial)] == ["onnx"]
    assert formats.resolve_source(partial, "auto", "cpu").format.name == "onnx"


def test_explicit_backends_need_their_files(tmp_path: Path) -> None:
    sdk = _fake_directory(tmp_path / "sdk", "config.json", "model.safetensors")
    with pytest.raises(BackendUnavailableError, match="backend='tensorrt'.*--format engine"):
        formats.resolve_source(sdk, "tensorrt", "cuda")
    with pytest.raises(BackendUnavailableError, match="unipose export"):
        formats.resolve_source(None, "onnxruntime", "cpu")
    with pytest.raises(InvalidInputError, match="backend='tflite'"):
        formats.resolve_source(sdk, "tflite", "cpu")


def test_the_one_loader(tmp_path: Path) -> None:
    from unipose_sdk.errors import ModelNotFoundError

    loaded = loading.load_torch_model("unipose-tiny", "cpu", "bf16")
    assert loaded.config.name == "unipose-tiny" and loaded.model.llm.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(ModelNotFoundError, match="unipose convert"):
        loading.load_torch_model(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="model of type int"):
        loading.load_torch_model(42)


def test_the_export_loader_uses_the_one_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Export accepts what the loader accepts ("unipose-tiny" by name, not only None)."""
    seen = []
    real = loading.load_torch_model

    def spy(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loading, "load_torch_model", spy)
    report = _export("unipose-tiny", tmp_path / "out", graphs=("pose_decoder",))
    assert seen == ["unipose-tiny"] and report.graphs[0].name == "pose_decoder"
    assert np.load(tmp_path / "out" / "pose_codebook.npy").dtype == np.float32
