"""ONNX emission of unipose::mixed_attention: decomposed (run in ONNX Runtime), Attention-23, custom node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import unipose_sdk.kernels  # noqa: E402,F401
from unipose_sdk.errors import InvalidInputError  # noqa: E402
from unipose_sdk.kernels import onnx as kernels_onnx  # noqa: E402
from unipose_sdk.kernels.reference import mixed_attention_reference  # noqa: E402
from unipose_sdk.kernels.testing import random_case  # noqa: E402
from unipose_sdk.models.attention_mask import MixedMask  # noqa: E402

SCALE = 0.25
NAMES = ["q", "k", "v", "block_start", "block_end", "key_start", "query_offset"]


class _Block(torch.nn.Module):
    """Something around the op, so the graph is more than the op alone."""

    def forward(self, q, k, v, block_start, block_end, key_start, query_offset):
        return torch.ops.unipose.mixed_attention(q, k, v, block_start, block_end, key_start, query_offset, SCALE) * 3


def _dynamic_shapes() -> dict:
    batch, queries, keys = torch.export.Dim("batch"), torch.export.Dim("queries"), torch.export.Dim("keys")
    per_row = {0: batch}
    return {"q": {0: batch, 2: queries}, "k": {0: batch, 2: keys}, "v": {0: batch, 2: keys},
            "block_start": per_row, "block_end": per_row, "key_start": per_row, "query_offset": per_row}


def _export(tmp_path: Path, emission: str) -> Path:
    case = random_case(torch.Generator().manual_seed(0), batch=2, heads_q=4, heads_kv=2, num_queries=30,
                       num_keys=40, head_dim=16)
    path = tmp_path / f"{emission}.onnx"
    kernels_onnx.export(_Block(), case.args()[:-1], str(path), emission=emission, input_names=NAMES,
                        output_names=["out"], dynamic_shapes=_dynamic_shapes())
    onnx.checker.check_model(onnx.load(str(path)), full_check=emission != "custom")
    return path


def _run_cases(path: Path) -> None:
    """Run the graph on lengths and bounds other than the export's, including a row without any key."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    cases = [random_case(gen, batch=3, heads_q=4, heads_kv=2, num_queries=n, num_keys=n + extra, head_dim=16,
                         block_place=place)
             for n, extra, place in ((1, 50, "middle"), (81, 19, "queries"), (45, 0, "end"))]
    padded = random_case(gen, batch=1, heads_q=4, heads_kv=2, num_queries=12, num_keys=12, head_dim=16)
    padded.mask = MixedMask.from_lists([0], [0], [8], [0])  # queries 0..7 see no key
    for case in [*cases, padded]:
        args = case.args()[:-1]
        (out,) = session.run(None, {name: t.numpy() for name, t in zip(NAMES, args)})
        expected = mixed_attention_reference(*args, SCALE) * 3
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=2e-5, rtol=1e-5, msg=case.describe)


def test_decomposed_runs_in_onnxruntime_cpu(tmp_path: Path) -> None:
    path = _export(tmp_path, "decomposed")
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Softmax", "Where"} <= ops and "Attention" not in ops
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 20
    _run_cases(path)


def test_attention23_is_valid_and_runs_where_supported(tmp_path: Path) -> None:
    path = _export(tmp_path, "attention23")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("Attention") == 1
    assert any(o.domain in ("", "ai.onnx") and o.version >= 23 for o in model.opset_import)
    try:  # ONNX Runtime implements Attention-23 on CPU from 1.23; older ones only get the checker above
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"onnxruntime {ort.__version__} cannot run Attention-23 on CPU: {error}")
    _run_cases(path)


def test_custom_node_carries_the_four_bounds(tmp_path: Path) -> None:
    model = onnx.load(str(_export(tmp_path, "custom")))
    nodes = [n for n in model.graph.node if n.domain == kernels_onnx.CUSTOM_DOMAIN]
    assert len(nodes) == 1 and nodes[0].op_type == "MixedAttention"
    assert list(nodes[0].input) == NAMES  # graph inputs wired straight into the node
    (scale,) = [onnx.helper.get_attribute_value(a) for a in nodes[0].attribute if a.name == "scale"]
    assert scale == pytest.approx(SCALE)
    assert (kernels_onnx.CUSTOM_DOMAIN, 1) in [(o.domain, o.version) for o in model.opset_import]


def test_bad_emission_choices_are_typed_errors() -> None:
    with pytest.raises(InvalidInputError, match="emission='flash'"):
        kernels_onnx.translation_table("flash")  # type: ignore[arg-type]
    case = random_case(torch.Generator().manual_seed(2), num_queries=4, num_keys=4, head_dim=16)
    with pytest.raises(InvalidInputError, match="opset 18..20"):
        kernels_onnx.export(_Block(), case.args()[:-1], emission="decomposed", opset_version=23)
    with pytest.raises(InvalidInputError, match="opset >= 23"):
        kernels_onnx.export(_Block(), case.args()[:-1], emission="attention23", opset_version=20)
