"""Export: specs, one real graph export with metadata and validation, every error path, atomic output, the CLI,
and (slow) a 2-layer slice of the 7B decoder shapes exported with external data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from unipose_sdk.export import specs as S  # noqa: E402
from unipose_sdk.export.artifacts import read_graph_metadata  # noqa: E402
from unipose_sdk.export.onnx import DecoderGraph, example_inputs, export_graph, export_onnx  # noqa: E402
from unipose_sdk.export.validate import compare  # noqa: E402

from unipose_sdk.checkpoint.embedded import embedded_model_is_trained  # noqa: E402
from unipose_sdk.errors import CheckpointError, ExportValidationError, InvalidInputError  # noqa: E402
from unipose_sdk.models.config import get_preset  # noqa: E402


def test_specs_name_every_tensor_and_axis() -> None:
    config = get_preset("unipose-tiny")
    specs = S.graph_specs(config, "fp16")
    assert tuple(specs) == S.GRAPH_NAMES
    decoder = specs["decoder"]
    layers = config.llm.num_hidden_layers
    assert len(decoder.inputs) == 7 + 2 * layers and len(decoder.outputs) == 1 + 2 * layers
    assert decoder.inputs[0].dynamic_axes == {0: "batch", 1: "tokens"}
    assert decoder.outputs[0].dtype == "float32" and S.resolve_dtype(decoder.inputs[0], "fp16") == "float16"
    assert specs["pose_encoder"].precision == "fp32"  # the pose tokenizer never leaves float32
    assert specs["pose_encoder"].outputs[0].shape == ("batch", 80)
    assert S.GraphSpec.from_dict(json.loads(json.dumps(decoder.to_dict()))) == decoder
    with pytest.raises(InvalidInputError, match="precision"):
        S.graph_specs(config, "int8")


def test_example_inputs_follow_the_spec_and_the_mask_contract() -> None:
    config = get_preset("unipose-tiny")
    spec = S.graph_specs(config)["decoder"]
    args = dict(zip(spec.input_names, example_inputs(spec, config, torch.float32, batch=3, tokens=4, keys=10)))
    assert args["input_embeds"].shape == (3, 4, config.llm.hidden_size)
    assert args["past_key_0"].shape == (3, config.llm.num_key_value_heads, 10, config.llm.head_dim)
    assert (args["query_offset"] + 4 <= 10).all() and (args["block_end"] >= args["block_start"]).all()
    assert args["block_start"].dtype == torch.int32 and args["positions"].dtype == torch.int64


def test_compare_reports_max_and_mean_and_names_the_graph() -> None:
    tol = S.Tolerance(atol=1e-3, rtol=0.0, min_match=0.9)
    ref = torch.zeros(4, 5)
    assert compare("vision", "image_embeds", np.full((4, 5), 5e-4, np.float32), ref, tol)[0] == pytest.approx(5e-4)
    with pytest.raises(ExportValidationError, match=r"graph 'vision' output 'image_embeds' with max abs diff "
                                                    r"2\.000e-03 and mean abs diff 1\.000e-04"):
        bad = np.zeros((4, 5), np.float32)
        bad[0, 0] = 2e-3
        compare("vision", "image_embeds", bad, ref, tol)
    with pytest.raises(ExportValidationError, match="shape"):
        compare("vision", "image_embeds", np.zeros((4, 6), np.float32), ref, tol)
    with pytest.raises(ExportValidationError, match="nan|max abs diff"):
        compare("vision", "image_embeds", np.full((4, 5), np.nan, np.float32), ref, tol)
    codes = torch.arange(10)
    assert compare("pose_encoder", "codes", np.arange(10), codes, tol) == (0.0, 0.0)
    with pytest.raises(ExportValidationError, match="80.00%"):
        compare("pose_encoder", "codes", np.r_[np.arange(8), 0, 0], codes, tol)


@pytest.fixture(scope="module")
def pose_graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "pose"
    report = export_onnx(None, out, graphs=("pose_decoder",), progress=False, optimize=False)
    assert report.graphs[0].validated == "yes" and report.graphs[0].max_abs_diff < 1e-4
    table = report.table()
    assert table.splitlines()[0].split() == ["graph", "size", "MB", "time", "s", "max", "diff", "validated"]
    assert "pose_decoder" in table
    return out


def test_exported_graph_carries_its_metadata_and_tokenizer(pose_graphs: Path) -> None:
    meta = read_graph_metadata(pose_graphs / "pose_decoder.onnx")
    assert meta[S.META_FORMAT] == S.FORMAT_NAME and meta[S.META_GRAPH] == "pose_decoder"
    assert json.loads(meta[S.META_CONFIG])["name"] == "unipose-tiny"
    assert json.loads(meta[S.META_VOCAB])["pose_begin_id"] == get_preset("unipose-tiny").vocab.pose_begin_id
    assert S.GraphSpec.from_dict(json.loads(meta[S.META_SPEC])).output_names == ["pose_6d", "rotmat"]
    assert meta[S.META_PRECISION] == "fp32"
    assert json.loads(meta[S.META_IS_RANDOM]) is (not embedded_model_is_trained())
    assert (pose_graphs / "tokenizer.json").is_file()
    assert not list(pose_graphs.parent.glob(".*.tmp"))


def test_existing_directory_is_refused_and_failed_exports_leave_nothing(pose_graphs: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="already exists"):
        export_onnx(None, pose_graphs, graphs=("pose_decoder",), progress=False)
    with pytest.raises(InvalidInputError, match="graphs"):
        export_onnx(None, tmp_path / "x", graphs=("llm",), progress=False)
    with pytest.raises(InvalidInputError, match="precision"):
        export_onnx(None, tmp_path / "x", precision="int4", progress=False)
    with pytest.raises(InvalidInputError, match="model of type"):
        export_onnx(42, tmp_path / "x", progress=False)

    import unipose_sdk.export.validate as validate

    def miss(*args: object, **kwargs: object) -> None:
        raise ExportValidationError("received graph 'pose_encoder' with max abs diff 1; expected less. Fix.")

    monkeypatch.setattr(validate, "validate_graph", miss)
    with pytest.raises(ExportValidationError, match="pose_encoder"):
        export_onnx(None, tmp_path / "failed", graphs=("pose_encoder",), progress=False, optimize=False)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory remains


def test_fp16_embed_graph_is_half_and_checked_against_float32(tmp_path: Path) -> None:
    report = export_onnx(None, tmp_path / "fp16", precision="fp16", graphs=("embed",), progress=False,
                         optimize=False)
    entry = report.graphs[0]
    # In bounds; exactly 0 when the source weights are float16 already (the shipped embedded model), an fp16
    # rounding error for the float32 placeholder.
    assert entry.validated == "yes" and 0 <= entry.max_abs_diff < 1e-2
    assert (entry.max_abs_diff == 0) == embedded_model_is_trained()
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "fp16" / "embed.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].type == "tensor(float16)"


def test_cli_export_writes_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from unipose_sdk.export import onnx as export_module

    from unipose_sdk.cli import main

    calls = {}

    def fake_export(model, output_dir, **kwargs):  # type: ignore[no-untyped-def]
        calls.update(kwargs, model=model, output_dir=output_dir)
        return export_module.ExportReport(Path(output_dir), kwargs["precision"], kwargs["emission"])

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    assert main(["export", "--dtype", "float16", "--no-validate", "--quiet", "-o", str(tmp_path / "o")]) == 0
    assert calls["precision"] == "fp16" and calls["validate"] is False and calls["emission"] == "decomposed"
    assert "graph" in capsys.readouterr().out
    monkeypatch.undo()
    (tmp_path / "exists").mkdir()
    assert main(["export", "--quiet", "-o", str(tmp_path / "exists")]) == 2  # user error: exit code 2


@pytest.mark.slow
def test_7b_decoder_slice_exports_with_external_data(tmp_path: Path) -> None:
    """Two decoder layers at the 7B shapes (hidden 4096, 32/8 heads, head dim 128, vocab 34132): ~2.9 GB of
    float32 weights, so the graph must keep them in external data; the files pass the checker and run in ORT."""
    import onnx
    import onnxruntime as ort

    from unipose_sdk.models.llm import MistralLM

    base = get_preset("unipose-7b")
    config = dataclasses.replace(base, llm=dataclasses.replace(base.llm, num_hidden_layers=2))
    with torch.device("meta"):
        llm = MistralLM(config.llm)
    llm = llm.to_empty(device="cpu")
    with torch.no_grad():  # small random weights (uninitialised memory could hold NaN)
        for p in llm.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    spec = S.graph_specs(config)["decoder"]
    path = tmp_path / "decoder.onnx"
    module = DecoderGraph(llm).eval()
    export_graph(module, spec, config, path, torch.float32, {S.META_GRAPH: "decoder"}, optimize=False)
    data = tmp_path / "decoder.onnx.data"
    assert data.is_file() and data.stat().st_size > 2 * 1024**3 and path.stat().st_size < 10 * 1024**2
    onnx.checker.check_model(str(path))  # by path: the checker follows the external data
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = example_inputs(spec, config, torch.float32, batch=1, tokens=3, keys=4, logits=1)
    (logits,) = session.run(["logits"], {n: a.numpy() for n, a in zip(spec.input_names, args)})
    with torch.no_grad():
        expected = module(*args)[0]
    assert logits.shape == (1, 1, 34132)
    assert np.abs(logits - expected.numpy()).max() < 1e-3
