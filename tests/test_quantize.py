"""Quantized exports: the weight maths and each scheme's nodes against numpy, the QDQ form's structure, the plans,
exports of the embedded model at every precision (metadata, comparison with float), the ONNX Runtime backend
serving them through the four task classes, refusal of mixed-up parts, and the CLI's error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from unipose_sdk.export import quantize as Q  # noqa: E402
from unipose_sdk.export import specs as S  # noqa: E402
from unipose_sdk.export.artifacts import read_directory, read_graph_metadata  # noqa: E402

from unipose_sdk.errors import CheckpointError, InvalidInputError  # noqa: E402

K, N, ROWS = 256, 48, 5


def _linear_model(op: str, weight: np.ndarray, bias: np.ndarray | None = None, trans_b: int = 1) -> onnx.ModelProto:
    """y = x @ W (+ b) as one MatMul, or as a Gemm with the weight stored [N, K] (transB=1) like nn.Linear."""
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((ROWS, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32) * 0.1,
            rng.standard_normal(N).astype(np.float32))


# ------------------------------------------------------------------------------------------- weight maths
def test_int4_blocks_reconstruct_within_half_a_step_and_pad_k() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 200)).astype(np.float32)  # K=200: two blocks of 128, the second padded
    q, scales = Q.int4_blocks(weight, 128)
    assert q.shape == (6, 256) and scales.shape == (6, 2) and q.min() >= -8 and q.max() <= 7
    assert (q[:, 200:] == 0).all()
    restored = (q.reshape(6, 2, 128) * scales[..., None]).reshape(6, 256)[:, :200]
    step = np.repeat(scales, 128, axis=1)[:, :200]
    clipped = np.abs(weight) > 7.5 * step  # the few weights the chosen clip ratio gives up on
    assert (np.abs(restored - weight)[~clipped] <= step[~clipped] / 2 + 1e-6).all()
    # The clip search never does worse than plain max|w| / 7.
    plain = np.abs(weight[:, :128]).max(axis=1, keepdims=True) / 7
    err_plain = np.square(np.rint(weight[:, :128] / plain) * plain - weight[:, :128]).sum()
    err = np.square(restored[:, :128] - weight[:, :128]).sum()
    assert err <= err_plain + 1e-6


def test_pack_uint4_puts_the_first_value_in_the_low_nibble() -> None:
    assert Q.pack_uint4(np.array([[1, 2, 15, 0, 7]])).tolist() == [[0x21, 0x0F, 0x07]]


def test_int8_channels_scale_per_output_column() -> None:
    weight = np.array([[1.0, -4.0], [-0.5, 2.0]], np.float32)
    q, scales = Q.int8_channels(weight, axis=1)
    assert scales.tolist() == pytest.approx([1 / 127, 4 / 127])
    assert q.tolist() == [[127, -127], [-64, 64]]


# ------------------------------------------------------------------------------------------- the schemes' nodes
@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_int4_nbits_node_computes_the_dequantized_product(op: str, data) -> None:  # type: ignore[no-untyped-def]
    x, w, b = data
    model = _linear_model(op, w.T.copy() if op == "Gemm" else w, b if op == "Gemm" else None)
    info = Q.quantize_model(model, Q.INT4_NBITS, "int4", block_size=64, accuracy_level=0)
    (node,) = model.graph.node
    assert node.op_type == "MatMulNBits" and node.domain == "com.microsoft"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"K": K, "N": N, "bits": 4, "block_size": 64, "accuracy_level": 0}
    assert info.nodes == 1 and info.quantized_bytes < info.float_bytes / 6
    assert [t.name for t in model.graph.initializer if t.name == "W"] == []  # the float weight is gone
    q, scales = Q.int4_blocks(w.T, 64)
    dequant = (q.reshape(N, -1, 64) * scales[..., None]).reshape(N, K).T
    expected = x @ dequant + (b if op == "Gemm" else 0)
    np.testing.assert_allclose(_run(model, {"x": x}), expected, atol=1e-4)
    # accuracy_level 4 (int8 activations inside the kernel) is the fast CPU path and stays close.
    fast = _linear_model(op, w.T.copy() if op == "Gemm" else w, b if op == "Gemm" else None)
    Q.quantize_model(fast, Q.INT4_NBITS, "int4", block_size=64)
    got = _run(fast, {"x": x})
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


def test_int8_dynamic_chain_matches_per_channel_int8(data) -> None:  # type: ignore[no-untyped-def]
    x, w, b = data
    model = _linear_model("Gemm", w.T.copy(), b)
    Q.quantize_model(model, Q.INT8_DYNAMIC, "int8")
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add"]
    weight_init = next(t for t in model.graph.initializer if t.data_type == TensorProto.INT8)
    assert tuple(weight_init.dims) == (K, N)
    expected = x @ w + b
    got = _run(model, {"x": x})
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


def test_qdq_form_is_int8_weights_behind_dequantize_linear(data) -> None:  # type: ignore[no-untyped-def]
    """The TensorRT form: standard ops only, an int8 weight per output channel (axis 1 of [K, N]) dequantized
    into the original MatMul; ONNX Runtime runs it too, so its values are checked here."""
    x, w, b = data
    model = _linear_model("Gemm", w.T.copy(), b)
    info = Q.quantize_model(model, Q.QDQ_INT8, "int8")
    assert info.form == "qdq" and info.ops == ("DequantizeLinear",)
    dq, matmul, add = model.graph.node
    assert (dq.op_type, matmul.op_type, add.op_type) == ("DequantizeLinear", "MatMul", "Add")
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # no contrib ops: TensorRT parses it
    inits = {t.name: t for t in model.graph.initializer}
    weight, scale, zero = (inits[name] for name in dq.input)
    assert weight.data_type == TensorProto.INT8 and tuple(weight.dims) == (K, N)
    assert tuple(scale.dims) == (N,) and zero.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero).any()
    assert helper.get_attribute_value(dq.attribute[0]) == 1 and dq.attribute[0].name == "axis"
    assert matmul.input == ["x", dq.output[0]] and add.input[1] == "b"
    onnx.checker.check_model(model)
    expected = x @ w + b
    assert np.linalg.norm(_run(model, {"x": x}) - expected) / np.linalg.norm(expected) < 0.02


@pytest.mark.parametrize("bits", [4, 8])
def test_gather_block_quantized_reads_the_dequantized_rows(bits: int) -> None:
    rng = np.random.default_rng(2)
    table = rng.standard_normal((40, 256)).astype(np.float32)
    ids = np.array([[0, 39, 7, 7]], np.int64)
    graph = helper.make_graph([helper.make_node("Gather", ["T", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 256])],
                              [numpy_helper.from_array(table, "T")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = Q.quantize_model(model, Q.INT4_GATHER if bits == 4 else Q.INT8_GATHER, "int4" if bits == 4 else "int8")
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"] and info.bits == bits
    got = _run(model, {"ids": ids})
    if bits == 4:
        q, scales = Q.int4_blocks(table, 128)
        expected = (q.reshape(40, 2, 128) * scales[..., None]).reshape(40, 256)[ids]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        assert np.abs(got - table[ids]).max() <= np.abs(table).max() / 127


def test_a_graph_without_constant_weights_stays_float() -> None:
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph)
    info = Q.quantize_model(model, Q.INT4_NBITS, "int4")
    assert info.scheme == Q.FLOAT and info.nodes == 0 and model.graph.node[0].op_type == "MatMul"


@pytest.mark.parametrize("width, recorded", [(256, Q.INT8_DYNAMIC_GATHER), (200, Q.INT8_DYNAMIC)])
def test_the_composite_scheme_rewrites_matmuls_and_tables_and_records_what_it_did(width: int, recorded: str) -> None:
    """The sentence encoder's scheme: int8 MatMuls and an int8 block-quantized table in one graph; a table whose
    width is not whole blocks stays float and the record names only the part that rewrote something."""
    rng = np.random.default_rng(4)
    table = rng.standard_normal((30, width)).astype(np.float32)
    weight = rng.standard_normal((width, N)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Gather", ["T", "ids"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, N])],
                              [numpy_helper.from_array(table, "T"), numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = Q.quantize_model(model, Q.INT8_DYNAMIC_GATHER, "int8")
    ops = {n.op_type for n in model.graph.node}
    assert info.scheme == recorded and set(info.ops) <= ops and "MatMul" not in ops
    assert ("GatherBlockQuantized" in ops) == (recorded == Q.INT8_DYNAMIC_GATHER)
    assert info.nodes == (2 if recorded == Q.INT8_DYNAMIC_GATHER else 1) and info.bits == 8
    assert json.loads({p.key: p.value for p in model.metadata_props}[Q.META_QUANTIZATION])["scheme"] == recorded
    assert recorded in Q.accepted_schemes(Q.INT8_DYNAMIC_GATHER)
    ids = np.array([[0, 29, 5]], np.int64)
    expected = table[ids] @ weight
    assert np.linalg.norm(_run(model, {"ids": ids}) - expected) / np.linalg.norm(expected) < 0.03


def test_the_sentence_encoder_is_planned_at_every_quantized_precision() -> None:
    for precision in ("int8", "int4", "mixed"):
        assert Q.plan(precision, graphs=S.ALL_GRAPH_NAMES)[S.TEXT_ENCODER_GRAPH] == Q.INT8_DYNAMIC_GATHER
        assert Q.plan(precision, "qdq", S.ALL_GRAPH_NAMES)[S.TEXT_ENCODER_GRAPH] == Q.QDQ_INT8
    assert Q.plan("float", graphs=S.ALL_GRAPH_NAMES)[S.TEXT_ENCODER_GRAPH] == Q.FLOAT
    assert Q.SCHEME_OPS[Q.INT8_DYNAMIC_GATHER] == ("DynamicQuantizeLinear", "MatMulInteger", "GatherBlockQuantized")
    assert Q.accepted_schemes(Q.INT8_DYNAMIC_GATHER) == {Q.FLOAT, Q.INT8_DYNAMIC, Q.INT8_GATHER,
                                                         Q.INT8_DYNAMIC_GATHER}
    assert Q.accepted_schemes(Q.INT4_NBITS) == {Q.FLOAT, Q.INT4_NBITS} and Q.accepted_schemes(None) == {Q.FLOAT}
    Q.check_dtype("int4", "fp16")  # the encoder's MatMuls stay float16 there instead of refusing the export


# ------------------------------------------------------------------------------------------- plans and checks
def test_plans_keep_the_pose_tokenizer_float() -> None:
    assert Q.plan("float") == dict.fromkeys(S.GRAPH_NAMES, Q.FLOAT)
    assert Q.plan("int4")["decoder"] == Q.INT4_NBITS and Q.plan("int8")["decoder"] == Q.INT8_DYNAMIC
    assert Q.plan("mixed") == {**dict.fromkeys(S.GRAPH_NAMES, Q.FLOAT), "vision": Q.INT8_DYNAMIC,
                               "embed": Q.INT4_GATHER, "decoder": Q.INT4_NBITS}
    assert set(Q.plan("int4", "qdq").values()) == {Q.FLOAT, Q.QDQ_INT8}
    for precision in Q.PRECISIONS:
        assert Q.plan(precision)["pose_encoder"] == Q.plan(precision)["pose_decoder"] == Q.FLOAT


def test_bad_values_are_typed_errors_naming_value_expected_and_fix() -> None:
    with pytest.raises(InvalidInputError, match=r"received precision='int3'; expected one of \['float', 'int8', "
                                                r"'int4', 'mixed'\]\. Pass --precision int4"):
        Q.plan("int3")
    with pytest.raises(InvalidInputError, match=r"block_size=100.*power of two"):
        Q.check_block_size(100)
    with pytest.raises(InvalidInputError, match=r"--dtype float16.*--dtype float32 for int8"):
        Q.check_dtype("int8", "fp16")
    Q.check_dtype("int4", "fp16")  # MatMulNBits takes float16 activations
    with pytest.raises(InvalidInputError, match="quantization form"):
        Q.plan("int4", "tensorrt")


def test_quant_info_round_trips_through_json() -> None:
    info = Q.QuantInfo("int4", Q.INT4_NBITS, 4, 128, 4, ("MatMulNBits",), nodes=3, float_bytes=10, quantized_bytes=2)
    assert Q.QuantInfo.from_json(info.to_json()) == info
    assert Q.read_quantization({}) == Q.QuantInfo(Q.FLOAT, Q.FLOAT)  # exports from before quantization


# ------------------------------------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unipose_sdk.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("quant") / "tiny-float"
    export_onnx(None, out, precision="fp32", progress=False, optimize=False)
    return out


@pytest.fixture(scope="module")
def quantized(float_export: Path) -> dict[str, Path]:
    from unipose_sdk.export.onnx import quantize_export

    out = {}
    for precision in ("int8", "int4", "mixed"):
        target = float_export.parent / f"tiny-{precision}"
        report = quantize_export(float_export, target, precision)
        assert report.weight_precision == precision
        out[precision] = target
    return out


@pytest.mark.slow
def test_export_writes_quantized_graphs_with_their_metadata(tmp_path: Path) -> None:
    """The one-step path: torch -> float graphs validated against torch -> quantized graphs compared with float;
    from an in-memory model, whose tokenizer is passed in and recorded like a directory's."""
    from unipose_sdk.export.onnx import export_onnx

    from unipose_sdk.checkpoint.embedded import load_embedded

    loaded = load_embedded("cpu")
    report = export_onnx(loaded.model, tmp_path / "int4", precision="fp32", weights="int4", progress=False,
                         optimize=False, tokenizer=loaded.tokenizer)
    recorded = json.loads(read_graph_metadata(tmp_path / "int4" / "decoder.onnx")[S.META_FILES])
    assert "tokenizer.json" in recorded and (tmp_path / "int4" / "tokenizer.json").is_file()
    by_name = {g.name: g for g in report.graphs}
    assert report.weight_precision == "int4"
    assert by_name["decoder"].weights == Q.INT4_NBITS and by_name["pose_encoder"].weights == Q.FLOAT
    assert by_name["decoder"].validated == "yes" and 0 < by_name["decoder"].quant_relative_error < Q.MAX_RELATIVE_ERROR
    assert 0 <= by_name["decoder"].token_agreement <= 1
    assert "tokens vs float" in report.table()
    for name in by_name:
        meta = read_graph_metadata(tmp_path / "int4" / f"{name}.onnx")
        quant = json.loads(meta[Q.META_QUANTIZATION])
        assert quant["precision"] == "int4" and quant["scheme"] == Q.plan("int4", graphs=S.ALL_GRAPH_NAMES)[name]
    decoder = json.loads(read_graph_metadata(tmp_path / "int4" / "decoder.onnx")[Q.META_QUANTIZATION])
    assert decoder | {"nodes": 0, "float_bytes": 0, "quantized_bytes": 0} == {
        "precision": "int4", "scheme": Q.INT4_NBITS, "bits": 4, "block_size": 128, "accuracy_level": 4,
        "ops": ["MatMulNBits"], "nodes": 0, "float_bytes": 0, "quantized_bytes": 0, "form": "onnxruntime"}
    assert decoder["nodes"] == 4 * 7 + 1  # q, k, v, o, gate, up, down per layer + the LM head
    assert decoder["quantized_bytes"] < decoder["float_bytes"] / 6


@pytest.mark.slow
def test_every_precision_reads_back_with_its_plan(float_export: Path, quantized: dict[str, Path]) -> None:
    assert read_directory(float_export).weights == "float"
    sizes = {}
    for precision, directory in quantized.items():
        exported = read_directory(directory)
        assert exported.weights == precision
        assert {name: q.scheme for name, q in exported.quantization.items()} == {
            name: Q.plan(precision, graphs=S.ALL_GRAPH_NAMES)[name] for name in exported.graphs}
        assert exported.identity != read_directory(float_export).identity  # an export of its own
        assert exported.identity.weights_sha256 == read_directory(float_export).identity.weights_sha256
        sizes[precision] = (directory / "decoder.onnx").stat().st_size
        assert "weights" in (directory / "export_report.txt").read_text()
    float_size = (float_export / "decoder.onnx").stat().st_size
    assert sizes["int4"] < sizes["int8"] < float_size / 2


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "int4", "mixed"])
def test_the_onnxruntime_backend_serves_quantized_exports_through_the_task_classes(
        quantized: dict[str, Path], precision: str) -> None:
    from unipose_sdk.body.examples import load_example_image, load_example_pose
    from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

    directory = quantized[precision]
    short = {"max_new_tokens": 6, "backend": "onnxruntime", "device": "cpu"}
    generator = Generator.from_pretrained(directory, **short)
    assert f"{precision} weights" in generator.session.runtime.describe()
    assert generator.session.runtime.weights == precision
    generated = generator.generate("a person squatting with both arms raised")
    assert len(generated.pose_codes) == 80 and generated.run.backend == "onnxruntime"
    edited = Editor.from_pretrained(directory, **short).edit(load_example_pose("squatting"), "raise the left arm")
    assert len(edited.pose_codes) == 80
    estimated = Estimator.from_pretrained(directory, **short).estimate(load_example_image())
    assert len(estimated.pose_codes) == 80
    described = Describer.from_pretrained(directory, **short).describe(pose=load_example_pose("squatting"))
    assert described.text


def _set_metadata(path: Path, key: str, value: str) -> None:
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, str(path))


@pytest.mark.slow
def test_mixed_up_parts_are_refused(float_export: Path, quantized: dict[str, Path], tmp_path: Path) -> None:
    # A graph of another export (the float one) copied into an int4 directory: refused by its export id.
    copied = tmp_path / "copied"
    shutil.copytree(quantized["int4"], copied)
    shutil.copy(float_export / "decoder.onnx", copied / "decoder.onnx")
    with pytest.raises(CheckpointError, match="decoder.onnx"):
        read_directory(copied)
    # A graph whose metadata claims another precision under the same export id.
    relabelled = tmp_path / "relabelled"
    shutil.copytree(quantized["int4"], relabelled)
    info = json.loads(read_graph_metadata(relabelled / "embed.onnx")[Q.META_QUANTIZATION])
    _set_metadata(relabelled / "embed.onnx", Q.META_QUANTIZATION, json.dumps({**info, "precision": "int8"}))
    with pytest.raises(CheckpointError, match=r"embed\.onnx \(int8\).*one weight precision"):
        read_directory(relabelled)
    # A graph whose scheme is not its precision's plan (the int8 decoder relabelled as int4).
    swapped = tmp_path / "swapped"
    shutil.copytree(quantized["int4"], swapped)
    export_id = read_graph_metadata(swapped / "embed.onnx")[S.META_EXPORT_ID]
    shutil.copy(quantized["int8"] / "decoder.onnx", swapped / "decoder.onnx")
    _set_metadata(swapped / "decoder.onnx", S.META_EXPORT_ID, export_id)
    info = json.loads(read_graph_metadata(swapped / "decoder.onnx")[Q.META_QUANTIZATION])
    _set_metadata(swapped / "decoder.onnx", Q.META_QUANTIZATION, json.dumps({**info, "precision": "int4"}))
    with pytest.raises(CheckpointError, match=r"decoder\.onnx with weights 'int8-dynamic' in a int4 export"):
        read_directory(swapped)
    # Metadata that names ops the graph does not hold (a float graph relabelled as quantized).
    fake = tmp_path / "fake"
    shutil.copytree(quantized["int4"], fake)
    shutil.copy(float_export / "vision.onnx", fake / "vision.onnx")
    meta = read_graph_metadata(quantized["int4"] / "vision.onnx")
    _set_metadata(fake / "vision.onnx", S.META_EXPORT_ID, meta[S.META_EXPORT_ID])
    model = onnx.load(str(fake / "vision.onnx"))
    model.metadata_props.add(key=Q.META_QUANTIZATION, value=meta[Q.META_QUANTIZATION])
    onnx.save(model, str(fake / "vision.onnx"))
    with pytest.raises(CheckpointError, match=r"vision\.onnx whose metadata says 'int4-nbits' but whose graph lacks"):
        read_directory(fake)


@pytest.mark.slow
def test_quantizing_needs_a_float_export_and_a_new_directory(float_export: Path, quantized: dict[str, Path],
                                                             tmp_path: Path) -> None:
    from unipose_sdk.export.onnx import quantize_export

    with pytest.raises(InvalidInputError, match="with int4 weights"):
        quantize_export(quantized["int4"], tmp_path / "again", "int8")
    with pytest.raises(CheckpointError, match="already exists"):
        quantize_export(float_export, quantized["int8"], "int8")
    assert not list(tmp_path.iterdir())  # nothing left behind


# ------------------------------------------------------------------------------------------- the command line
def test_cli_refuses_a_bad_precision_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    assert main(["export", "--precision", "int3", "--quiet", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "received --precision='int3'" in err and "'int4'" in err and "Pass --precision int4" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_quantizes_a_float_export(float_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    out = tmp_path / "int4"
    assert main(["export", "--model", str(float_export), "--precision", "int4", "--quiet", "-o", str(out)]) == 0
    assert "int4-nbits" in capsys.readouterr().out and read_directory(out).weights == "int4"
    assert main(["export", "--model", str(float_export), "--precision", "int4", "--block-size", "100",
                 "-o", str(tmp_path / "bad")]) == 2
    assert "block_size=100" in capsys.readouterr().err


@pytest.mark.slow
def test_the_memory_planner_prices_an_export_as_its_graphs_store_it(quantized: dict[str, Path]) -> None:
    from unipose_sdk import memory

    plan = memory.plan_memory(quantized["int4"], dtype="float32")
    assert plan.precision == "int4"  # the export's own precision
    stored = read_directory(quantized["int4"]).quantization
    by_name = {c.name: c for c in plan.components}
    config = read_directory(quantized["int4"]).config.llm
    norms = (2 * config.num_hidden_layers + 1) * config.hidden_size  # RMSNorm weights stay float32
    llm = by_name["llm decoder layers"].bytes + by_name["llm final norm + lm head"].bytes
    assert llm == stored["decoder"].quantized_bytes + 4 * norms
    assert by_name["llm embedding table"].bytes == stored["embed"].quantized_bytes
    with pytest.raises(InvalidInputError, match="an export with int4 weights"):
        memory.plan_memory(quantized["int4"], "int8")


@pytest.mark.slow
def test_bench_adds_a_row_per_precision(float_export: Path) -> None:
    from unipose_sdk.bench import bench

    result = bench(model="unipose-tiny", onnx_dir=str(float_export), precisions=["float", "int4"],
                   only=["onnxruntime"], tasks=["generate"], runs=1, warmup=0, max_new_tokens=4, log=lambda s: None)
    rows = {r["backend"]: r for r in result["results"]}
    assert set(rows) == {"onnxruntime", "onnxruntime-int4"}
    assert isinstance(rows["onnxruntime-int4"]["same_output_as_float_export"], bool)
    assert rows["onnxruntime-int4"]["stats"]["total"]["median_ms"] > 0
    assert (float_export.parent / "tiny-float-int4").is_dir() and "int4: quantized" in result["onnxruntime"]
    assert result["precisions"] == ["float", "int4"]


def test_bench_cli_refuses_bad_precisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    assert main(["bench", "--precision", "int9", "-o", str(tmp_path)]) == 2
    assert "received --precision='int9'" in capsys.readouterr().err
    assert main(["bench", "--precision", "int4", "-o", str(tmp_path)]) == 2
    assert "without --onnx-dir" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_qdq_form_reads_back_and_runs(float_export: Path, tmp_path: Path) -> None:
    """The TensorRT form of an export: int8 weights behind DequantizeLinear in the decoder and vision graphs, the
    embedding table float; it reads back under its own plan, and ONNX Runtime runs it through the task classes."""
    from unipose_sdk.export.onnx import quantize_export

    from unipose_sdk.tasks import Generator

    report = quantize_export(float_export, tmp_path / "qdq", "int8", form="qdq")
    assert {g.name: g.weights for g in report.graphs} == {g.name: Q.plan("int8", "qdq", S.ALL_GRAPH_NAMES)[g.name] for g in report.graphs}
    assert {g.name: g.weights for g in report.graphs}["decoder"] == Q.QDQ_INT8
    exported = read_directory(tmp_path / "qdq")
    assert exported.weights == "int8" and exported.quantization["decoder"].form == "qdq"
    ops = Q.graph_op_types(tmp_path / "qdq" / "decoder.onnx")
    assert "DequantizeLinear" in ops and not ops & {"MatMulNBits", "MatMulInteger", "GatherBlockQuantized"}
    result = Generator.from_pretrained(tmp_path / "qdq", backend="onnxruntime", max_new_tokens=4).generate("arms up")
    assert len(result.pose_codes) == 80
