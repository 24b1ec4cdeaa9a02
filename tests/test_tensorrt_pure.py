"""The pure parts of the TensorRT path, without TensorRT: profiles from specs, engine headers (written by the
exporter, read by export/artifacts.py), version and identity checks, engine-cache keys, the missing-package
error. Building and running engines needs TensorRT and a GPU (skipped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from unipose_sdk.export import artifacts as A
from unipose_sdk.export import tensorrt as T
from unipose_sdk.export.specs import graph_specs

from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError
from unipose_sdk.models.config import get_preset

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _header(**changes: object) -> T.EngineHeader:
    spec = graph_specs(get_preset("unipose-tiny"))["pose_decoder"]
    values = dict(tensorrt_version="10.3.0.26", gpu_name="Orin", compute_capability="8.7", sdk_version="0.1.0",
                  precision="fp16", graph="pose_decoder", spec=spec.to_dict(), onnx_sha256="ab" * 32)
    values.update(changes)
    return T.EngineHeader(**values)  # type: ignore[arg-type]


def test_decoder_profile_covers_prefill_decode_and_pose_step() -> None:
    config = get_preset("unipose-7b")
    spec = graph_specs(config, "fp16")["decoder"]
    profile = T.optimization_profile(spec)
    assert set(profile) == set(spec.input_names)
    embeds = profile["input_embeds"]
    assert embeds.min == (1, 1, 4096) and embeds.opt == (1, 81, 4096)
    assert embeds.max[1] == config.max_text_tokens + 160
    assert profile["past_key_31"].min == (1, 8, 1, 128) and profile["past_key_31"].max[2] == embeds.max[1]
    assert profile["logits_index"].opt == (80,) and profile["block_start"].max == (8,)
    jetson = T.optimization_profile(spec, {"batch": (1, 1, 1)})
    assert jetson["input_embeds"].max[0] == 1 and jetson["positions"].max == (1, embeds.max[1])


def test_profile_errors() -> None:
    spec = graph_specs(get_preset("unipose-tiny"))["decoder"]
    with pytest.raises(InvalidInputError, match="min <= opt <= max"):
        T.optimization_profile(spec, {"tokens": (4, 2, 8)})
    spec_without = type(spec)(**{**spec.__dict__, "axis_ranges": {"batch": (1, 1, 2)}})
    with pytest.raises(InvalidInputError, match="tokens"):
        T.optimization_profile(spec_without)


def test_header_round_trip_and_engine_offset(tmp_path: Path) -> None:
    path = T.write_engine_file(tmp_path / "pose_decoder.engine", _header(), b"\x00PLAN-BYTES")
    header, offset = A.read_engine_header(path)
    assert header.to_json() == _header().to_json()
    assert A.S.GraphSpec.from_dict(header.spec) == graph_specs(get_preset("unipose-tiny"))["pose_decoder"]
    assert path.read_bytes()[offset:] == b"\x00PLAN-BYTES"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_damaged_or_foreign_engine_files_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.engine"
    plain.write_bytes(b"serialized plan without header")
    with pytest.raises(CheckpointError, match="unipose export --format engine"):
        A.read_engine_header(plain)
    huge = tmp_path / "huge.engine"
    huge.write_bytes(A.MAGIC + (2**31).to_bytes(4, "little"))
    with pytest.raises(CheckpointError, match="header"):
        A.read_engine_header(huge)
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(A.MAGIC + (3).to_bytes(4, "little") + b"{x}")
    with pytest.raises(CheckpointError, match="unreadable header"):
        A.read_engine_header(garbage)
    with pytest.raises(CheckpointError, match="no engine file"):
        A.read_engine_header(tmp_path / "missing.engine")


def test_version_and_gpu_checks() -> None:
    header = _header()
    A.check_compatible(header, "10.3.0.30", "Orin", "8.7")  # same major.minor.patch: accepted
    with pytest.raises(BackendUnavailableError,
                       match=r"TensorRT 10\.3\.0\.26 \(installed: 10\.7\.0\).*--format engine"):
        A.check_compatible(header, "10.7.0", "Orin", "8.7")
    with pytest.raises(BackendUnavailableError, match="compute capability 8.7 .*9.0"):
        A.check_compatible(header, "10.3.0", "NVIDIA H100", "9.0")
    with pytest.raises(BackendUnavailableError, match="header format"):
        A.check_compatible(_header(format_version=99), "10.3.0", "Orin", "8.7")


def test_version_parsing_and_attention_form() -> None:
    assert A.parse_version("10.3.0.26") == (10, 3, 0, 26) and A.parse_version("11.0.0b1") == (11, 0, 0)
    assert T.attention_emission_for("10.3.0") == "decomposed"  # JetPack 6
    assert T.attention_emission_for("10.14.1") == "attention23" and T.attention_emission_for("11.0") == "attention23"
    with pytest.raises(InvalidInputError):
        A.parse_version("latest")


def test_engine_cache_key_changes_with_every_input() -> None:
    spec = graph_specs(get_preset("unipose-tiny"), "fp16")["decoder"]
    profile = T.optimization_profile(spec)
    base = T.engine_cache_key("aa", "10.3.0.26", "8.7", "fp16", profile)
    assert base == T.engine_cache_key("aa", "10.3.0.99", "8.7", "fp16", profile)  # build number does not matter
    others = {T.engine_cache_key("bb", "10.3.0", "8.7", "fp16", profile),
              T.engine_cache_key("aa", "10.4.0", "8.7", "fp16", profile),
              T.engine_cache_key("aa", "10.3.0", "9.0", "fp16", profile),
              T.engine_cache_key("aa", "10.3.0", "8.7", "bf16", profile),
              T.engine_cache_key("aa", "10.3.0", "8.7", "fp16", T.optimization_profile(spec, {"batch": (1, 1, 1)}))}
    assert base not in others and len(others) == 5


def test_file_sha256_includes_external_data(tmp_path: Path) -> None:
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    alone = A.file_sha256(graph)
    (tmp_path / "g.onnx.data").write_bytes(b"weights")
    assert A.file_sha256(graph) != alone


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; this checks the message when it is missing")
def test_missing_tensorrt_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r'pip install "unipose-sdk\[trt\]"'):
        T.require_tensorrt()
    from unipose_sdk.cli import main

    assert main(["export", "--format", "engine", "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


def test_the_runtime_needs_one_engine_per_exported_graph(tmp_path: Path) -> None:
    import dataclasses

    from unipose_sdk.export.specs import family_graph_names

    from unipose_sdk.models.config import TextEncoderConfig
    from unipose_sdk.runtime.tensorrt import check_engines

    unipose = get_preset("unipose-tiny")
    chatpose = get_preset("chatpose-tiny")
    with_encoder = dataclasses.replace(unipose, text_encoder=TextEncoderConfig())
    for config in (unipose, chatpose, with_encoder):
        names = family_graph_names(config)
        for name in names:
            (tmp_path / f"{name}.engine").write_bytes(b"")
        assert check_engines(tmp_path, names) == names
    assert "pose_decoder" not in family_graph_names(chatpose)  # ChatPose runs without pose tokenizer engines
    (tmp_path / "text_encoder.engine").unlink()
    with pytest.raises(CheckpointError, match=r"without engines for \['text_encoder'\]"):
        check_engines(tmp_path, family_graph_names(with_encoder))


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (engines are built on the target device)")
def test_engine_build_and_run_on_a_gpu() -> None:  # pragma: no cover - needs TensorRT and a GPU
    pytest.skip("engine build/run is exercised manually on a TensorRT machine: unipose export --format engine")
