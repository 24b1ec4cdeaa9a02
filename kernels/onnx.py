"""Emit `unipose::mixed_attention` into ONNX graphs, three ways (the torch.onnx dynamo exporter + onnxscript).

    "decomposed"   MatMul / Softmax with the mask built inside the graph from the four per-row inputs
                   (opset 18..20; runs in any ONNX Runtime, CPU included);
    "attention23"  the standard `Attention` operator of opset 23 with a boolean mask built the same way
                   (runtimes with fused attention: ONNX Runtime >= 1.23, TensorRT >= 10.14);
    "custom"       one `com.unipose.MixedAttention` node taking q, k, v and the four bounds (attribute `scale`),
                   for runtimes that register a kernel under that name (a TensorRT plugin, an ORT custom op).

Usage: `torch.onnx.export(model, args, dynamo=True, opset_version=opset_for(emission),
custom_translation_table=translation_table(emission))`, or `export(model, args, path, emission=...)`.
The graph inputs keep the op's contract: bounds int32 [B] in cache-slot coordinates (attention_mask.py).
onnx / onnxscript are imported here only, never by `import unipose_sdk.kernels`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from onnxscript import opset18 as op
from onnxscript import opset23 as op23
import onnx
from onnxscript.values import Op, Opset

from unipose_sdk.errors import InvalidInputError

Emission = Literal["decomposed", "attention23", "custom"]
EMISSIONS: tuple[str, ...] = ("decomposed", "attention23", "custom")
CUSTOM_DOMAIN = "com.unipose"
CUSTOM_OP = "MixedAttention"
CUSTOM_SCHEMA = onnx.defs.OpSchema(
    CUSTOM_OP, CUSTOM_DOMAIN, 1,
    doc="Mixed attention of unipose-sdk: causal, plus one bidirectional block per batch row (cache-slot bounds).",
    inputs=[onnx.defs.OpSchema.FormalParameter(name, type_str)
            for name, type_str in (("q", "T"), ("k", "T"), ("v", "T"), ("block_start", "I"), ("block_end", "I"),
                                   ("key_start", "I"), ("query_offset", "I"))],
    outputs=[onnx.defs.OpSchema.FormalParameter("out", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "q, k, v and out"),
                      ("I", ["tensor(int32)"], "per-row bounds [B]")],
    attributes=[onnx.defs.OpSchema.Attribute("scale", onnx.defs.OpSchema.AttrType.FLOAT, "softmax scale")],
)
# onnxscript looks operators up in ONNX's schema registry; a custom domain's node is built from the schema above.
_mixed_attention_node = Op(Opset(CUSTOM_DOMAIN, 1), CUSTOM_OP, CUSTOM_SCHEMA)

# ONNX TensorProto data types used below.
_INT64 = 7
_BOOL = 9


def _allowed_mask(q, k, block_start, block_end, key_start, query_offset):
    """Boolean [B, Tq, Tk]: the rule of attention_mask.py, from the per-row bounds and the runtime lengths."""
    num_queries = op.Gather(op.Shape(q), op.Constant(value_int=2))
    num_keys = op.Gather(op.Shape(k), op.Constant(value_int=2))
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    q_idx = op.Range(zero, num_queries, one)            # [Tq]
    kv_idx = op.Reshape(op.Range(zero, num_keys, one), op.Constant(value_ints=[1, 1, -1]))  # [1, 1, Tk]

    def per_row(bound):  # int32 [B] -> int64 [B, 1, 1]
        return op.Reshape(op.Cast(bound, to=_INT64), op.Constant(value_ints=[-1, 1, 1]))

    start, end, first_key = per_row(block_start), per_row(block_end), per_row(key_start)
    pos = op.Add(op.Reshape(q_idx, op.Constant(value_ints=[1, -1, 1])), per_row(query_offset))  # [B, Tq, 1]
    causal = op.LessOrEqual(kv_idx, pos)
    q_in_block = op.And(op.GreaterOrEqual(pos, start), op.Less(pos, end))
    kv_in_block = op.And(op.GreaterOrEqual(kv_idx, start), op.Less(kv_idx, end))
    visible = op.Or(causal, op.And(q_in_block, kv_in_block))
    return op.And(op.GreaterOrEqual(kv_idx, first_key), visible)  # [B, Tq, Tk]


def _decomposed(q, k, v, block_start, block_end, key_start, query_offset, scale: float):
    allowed = _allowed_mask(q, k, block_start, block_end, key_start, query_offset)
    # Grouped-query attention without repeating K/V: q [B, Hkv, G, Tq, D] against k, v [B, Hkv, 1, Tk, D].
    q_shape = op.Shape(q)
    batch = op.Slice(q_shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    heads_kv = op.Slice(op.Shape(k), op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    tail = op.Slice(q_shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[4]))  # [Tq, D]
    grouped = op.Concat(batch, heads_kv, op.Constant(value_ints=[-1]), tail, axis=0)
    q5 = op.Reshape(q, grouped)
    k5 = op.Unsqueeze(k, op.Constant(value_ints=[2]))
    v5 = op.Unsqueeze(v, op.Constant(value_ints=[2]))
    scores = op.Mul(op.MatMul(q5, op.Transpose(k5, perm=[0, 1, 2, 4, 3])), op.CastLike(scale, q))
    mask5 = op.Unsqueeze(allowed, op.Constant(value_ints=[1, 2]))  # [B, 1, 1, Tq, Tk]
    scores = op.Where(mask5, scores, op.CastLike(float("-inf"), q))
    # A row with no allowed key is NaN after Softmax; the second Where turns it into zeros.
    probs = op.Where(mask5, op.Softmax(scores, axis=-1), op.CastLike(0.0, q))
    return op.Reshape(op.MatMul(probs, v5), q_shape)


def _attention23(q, k, v, block_start, block_end, key_start, query_offset, scale: float):
    allowed = _allowed_mask(q, k, block_start, block_end, key_start, query_offset)
    has_key = op.Unsqueeze(op.ReduceMax(op.Cast(allowed, to=_INT64), op.Constant(value_ints=[-1]), keepdims=1),
                           op.Constant(value_ints=[1]))  # [B, 1, Tq, 1]
    has_key = op.Cast(has_key, to=_BOOL)
    # Rows without a key attend everything (finite softmax) and are zeroed afterwards, as in sdpa_dense.
    mask4 = op.Or(op.Unsqueeze(allowed, op.Constant(value_ints=[1])), op.Not(has_key))  # [B, 1, Tq, Tk]
    out = op23.Attention(q, k, v, mask4, scale=scale)[0]  # Y (present K/V and QK outputs stay unused)
    return op.Where(has_key, out, op.CastLike(0.0, q))


def _custom_node(q, k, v, block_start, block_end, key_start, query_offset, scale: float):
    return _mixed_attention_node(q, k, v, block_start, block_end, key_start, query_offset, scale=scale)


_TRANSLATIONS: dict[str, tuple[Callable[..., Any], int]] = {
    "decomposed": (_decomposed, 18),
    "attention23": (_attention23, 23),
    "custom": (_custom_node, 18),
}


def _check(emission: str) -> None:
    if emission not in _TRANSLATIONS:
        raise InvalidInputError.make(f"emission={emission!r}", f"one of {EMISSIONS}",
                                     "use 'decomposed' for ONNX Runtime CPU, 'attention23' for opset-23 runtimes.")


def opset_for(emission: Emission) -> int:
    """The ONNX opset the emission needs (the default domain's version to export with)."""
    _check(emission)
    return _TRANSLATIONS[emission][1]


def translation_table(emission: Emission = "decomposed") -> dict[Callable[..., Any], Callable[..., Any]]:
    """`custom_translation_table` for torch.onnx.export(..., dynamo=True)."""
    _check(emission)
    import unipose_sdk.kernels  # noqa: F401  (the op must exist)

    return {torch.ops.unipose.mixed_attention.default: _TRANSLATIONS[emission][0]}


def export(
    model: torch.nn.Module, args: tuple, path: str | None = None, *, emission: Emission = "decomposed",
    opset_version: int | None = None, **kwargs: Any,
):
    """torch.onnx.export with the op translated by `emission`; returns the ONNXProgram (saved when `path`)."""
    opset = opset_version if opset_version is not None else opset_for(emission)
    if opset < opset_for(emission):
        raise InvalidInputError.make(f"opset_version={opset} for emission {emission!r}",
                                     f"opset >= {opset_for(emission)}", "raise opset_version or pick 'decomposed'.")
    if emission == "decomposed" and opset > 20:
        raise InvalidInputError.make(f"opset_version={opset} for emission 'decomposed'", "opset 18..20",
                                     "use emission='attention23' for opset 23 and up.")
    program = torch.onnx.export(model, args, dynamo=True, opset_version=opset,
                                custom_translation_table=translation_table(emission), **kwargs)
    if path is not None:
        program.save(path)
    return program
