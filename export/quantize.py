"""Weight quantization of exported graphs: int4 / int8 weights written into the ONNX graphs of an export.

    unipose export --precision int4 -o out/tiny-int4          # or int8 | mixed | float (the default)

The float export is written and validated first; then each graph gets the scheme its precision plans for it
(`PLANS`), is rewritten node by node, and is compared with its float graph in ONNX Runtime on the same inputs
(`compare_graphs`: per-output relative error, and for the decoder's logits the share of positions whose arg-max
token is unchanged). The schemes:

    int4-nbits    every MatMul / Gemm with a constant weight -> com.microsoft MatMulNBits: 4-bit symmetric weights
                  in blocks of `block_size` (128) along K, one float scale per block, accuracy_level=4 (the
                  activations are quantized to int8 per block inside the kernel, so the CPU runs an int8 dot
                  product; accuracy_level=0 computes in float and is 2.7-5.5x slower on the CPU).
    int8-dynamic  the same nodes -> DynamicQuantizeLinear (activations to uint8 at run time, one scale per call)
                  + MatMulInteger with int8 weights, one scale per output channel; ONNX Runtime fuses the chain
                  into one kernel on the CPU.
    int4-gather   the embedding table's Gather -> com.microsoft GatherBlockQuantized (int4, blocks along the
    int8-gather   hidden axis; int8 as uint8 with a zero point of 128): the table is read, never multiplied.
    qdq-int8      for TensorRT, which does not take MatMulNBits: int8 weights per output channel behind a
                  standard DequantizeLinear feeding the original MatMul (weight-only explicit quantization).
    int8-dynamic+int8-gather
                  a composite: both rewrites in one graph, in that order (the sentence encoder's MatMuls and its
                  word / position tables). A part that finds nothing to rewrite (tables whose width is not whole
                  blocks) drops out of the recorded name, as a whole scheme with nothing to rewrite records float.

Which graph gets which scheme comes from a measurement (benchmarks/quant_7b_cpu.py: the 7B shapes with 2 decoder
layers and 2 layers per vision tower, ONNX Runtime 1.32 on 2 shared cores, speed-up over float32 of the medians):

    graph / step                      int8-dynamic   int4-nbits
    decoder, one decode step (1 row)      2.9x           3.3x     (weights read once per token: int4 reads least)
    decoder, 81-row pose block            3.7x           1.8x     (compute-bound: the int8 GEMM wins)
    decoder, 121-row prompt + pose        3.6x           1.9x
    vision towers (577 + 192 rows)        3.3x           1.6x

The decoder graph serves the prompt, the pose block and the decode steps alike, so "int4" trades a slower pose
block for the fastest decoding and the smallest weights, "int8" the reverse, and "mixed" keeps int4 in the
language model (most of the bytes) with the faster int8 towers. The pose tokenizer's graphs stay float (small,
and their codes must not move).

The sentence encoder of models that have one (unipose-tiny v2: all-MiniLM-L6-v2, 6 layers of width 384, a
30522 x 384 word table; `text_encoder` graph) runs once per prompt over all its words, so it is compute-bound like
the pose block. Measured with benchmarks/quant_text_encoder.py (the real MiniLM weights, ONNX Runtime 1.32, 2
cores shared with a training job, load average about 4.5, so +-30 %; speed-up over float of the medians of 30 runs;
sentence-vector cosine with float, min / mean over 50 sentences):

    text_encoder graph (MatMuls only)   size      12-word prompt  16 prompts   sentence cosine
    float                               92.7 MB       1.0x           1.0x
    int8-dynamic                        59.5 MB       1.9x           1.7x       0.986 / 0.993
    int4-nbits                          54.2 MB       1.8x           1.1x       0.938 / 0.957

int8-dynamic is at least as fast for one prompt, clearly faster for a batch, and moves the vectors far less, so
every precision (int8, int4, mixed) gives the encoder int8-dynamic MatMuls, and its word / position tables
int8-gather (the tables are half the graph's bytes): 24.2 MB in all, 1.9x at both sizes, cosine 0.985 / 0.993.
In a float16 export the MatMuls have no float32 weights to rewrite and stay float16 (dynamic int8 quantizes float32
activations); only the tables are quantized. The QDQ (TensorRT) form gives its MatMuls qdq-int8 and keeps its
tables float, as for the other graphs. The graph outputs the projected LLM rows, not the sentence vector, so the
export's comparison with float is the rows' relative error (0.12 on MiniLM with a fresh projector).

Every quantized graph records what was done in its metadata (`unipose.quantization`: the export's precision,
this graph's scheme, bits, block size, accuracy level, the quantized op types and how many nodes), and
export/artifacts.py refuses a directory whose graphs disagree on the precision, or whose graph does not hold the
ops its metadata names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import unipose_sdk.export.specs as S

import unipose_sdk.formats as formats
from unipose_sdk.errors import ExportValidationError, InvalidInputError

PRECISIONS = formats.WEIGHT_PRECISIONS
FLOAT = "float"
INT4_NBITS = "int4-nbits"
INT8_DYNAMIC = "int8-dynamic"
INT4_GATHER = "int4-gather"
INT8_GATHER = "int8-gather"
QDQ_INT8 = "qdq-int8"
# A composite scheme: its parts applied one after the other to the same graph (the sentence encoder's MatMuls and
# its embedding tables). Its name is the parts joined by "+".
INT8_DYNAMIC_GATHER = f"{INT8_DYNAMIC}+{INT8_GATHER}"
SCHEMES = (FLOAT, INT4_NBITS, INT8_DYNAMIC, INT4_GATHER, INT8_GATHER, QDQ_INT8, INT8_DYNAMIC_GATHER)
# The op types a graph of each scheme must hold (checked when a directory is read back).
SCHEME_OPS: dict[str, tuple[str, ...]] = {
    FLOAT: (), INT4_NBITS: ("MatMulNBits",), INT8_DYNAMIC: ("DynamicQuantizeLinear", "MatMulInteger"),
    INT4_GATHER: ("GatherBlockQuantized",), INT8_GATHER: ("GatherBlockQuantized",), QDQ_INT8: ("DequantizeLinear",),
}
SCHEME_OPS[INT8_DYNAMIC_GATHER] = SCHEME_OPS[INT8_DYNAMIC] + SCHEME_OPS[INT8_GATHER]
# Ops that only a quantized graph holds: a graph whose metadata says "float" must hold none of them.
QUANTIZED_OPS = frozenset(op for ops in SCHEME_OPS.values() for op in ops)
# Graph -> scheme for each precision (ONNX Runtime form). See the module docstring for the measurement.
# The sentence encoder (models with one) gets the same scheme at every precision: see the module docstring.
PLANS: dict[str, dict[str, str]] = {
    "float": {},
    "int8": {"decoder": INT8_DYNAMIC, "vision": INT8_DYNAMIC, "embed": INT8_GATHER,
             S.TEXT_ENCODER_GRAPH: INT8_DYNAMIC_GATHER},
    "int4": {"decoder": INT4_NBITS, "vision": INT4_NBITS, "embed": INT4_GATHER,
             S.TEXT_ENCODER_GRAPH: INT8_DYNAMIC_GATHER},
    "mixed": {"decoder": INT4_NBITS, "vision": INT8_DYNAMIC, "embed": INT4_GATHER,
              S.TEXT_ENCODER_GRAPH: INT8_DYNAMIC_GATHER},
}
# The TensorRT form: int8 weights behind DequantizeLinear wherever the ONNX Runtime form quantizes a MatMul; the
# embedding tables stay float (TensorRT has no block-quantized gather).
_QDQ = {"decoder": QDQ_INT8, "vision": QDQ_INT8, S.TEXT_ENCODER_GRAPH: QDQ_INT8}
QDQ_PLANS: dict[str, dict[str, str]] = {"float": {}, "int8": dict(_QDQ), "int4": dict(_QDQ), "mixed": dict(_QDQ)}
FORMS = ("onnxruntime", "qdq")
DEFAULT_BLOCK_SIZE = 128
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # int4 block scales tried: ratio x max|w| / 7
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations inside the kernel (the fast CPU path)
# A quantized graph whose output moved by as much as the float output's norm has lost the signal: a broken rewrite,
# not quantization noise (int4 on the 4-layer embedded model moves its logits by about half their norm).
MAX_RELATIVE_ERROR = 1.0
META_QUANTIZATION = "unipose.quantization"


@dataclass
class QuantInfo:
    """What was done to one graph: recorded in its metadata and in the export report."""

    precision: str  # the export's weight precision ("int4"), the same in every graph of the directory
    scheme: str  # this graph's scheme ("int4-nbits"), FLOAT for the graphs that stay float
    bits: int = 32
    block_size: int | None = None
    accuracy_level: int | None = None
    ops: tuple[str, ...] = ()
    nodes: int = 0  # how many nodes were quantized
    float_bytes: int = 0  # bytes of the weights that were quantized, before
    quantized_bytes: int = 0  # and after (weights + scales + zero points)
    form: str = "onnxruntime"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ops": list(self.ops)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> QuantInfo:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        data["ops"] = tuple(data.get("ops", ()))
        return QuantInfo(**data)


def check_form(form: object) -> str:
    if form not in FORMS:
        raise InvalidInputError.make(f"quantization form {form!r}", f"one of {list(FORMS)}",
                                     "Use 'onnxruntime' (MatMulNBits / MatMulInteger) for ONNX Runtime, 'qdq' for "
                                     "TensorRT engines.")
    return str(form)


def check_block_size(block_size: object) -> int:
    ok = isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 16 and (
        block_size & (block_size - 1)) == 0
    if not ok:
        raise InvalidInputError.make(f"block_size={block_size!r}", "a power of two >= 16 (16, 32, 64, 128, ...)",
                                     f"Pass {DEFAULT_BLOCK_SIZE} (the default), or 32 / 64 for smaller errors.")
    return int(block_size)


def plan(precision: str, form: str = "onnxruntime", graphs: tuple[str, ...] = S.GRAPH_NAMES) -> dict[str, str]:
    """Graph name -> scheme for each of `graphs` (default: the five graphs every UniPose export has; pass
    specs.ALL_GRAPH_NAMES to include the sentence encoder's) of an export at `precision`."""
    precision = formats.weight_precision(precision)
    table = (QDQ_PLANS if check_form(form) == "qdq" else PLANS)[precision]
    return {name: table.get(name, FLOAT) for name in graphs}


def scheme_parts(scheme: str) -> tuple[str, ...]:
    """The single schemes a (composite) scheme applies, in order: ("int8-dynamic", "int8-gather")."""
    return tuple(scheme.split("+"))


def accepted_schemes(planned: str | None) -> set[str]:
    """What a graph planned for `planned` may record: the plan itself, float (nothing it applies to, e.g. no
    constant weights), and for a composite any of its parts alone, in order (a part found nothing to rewrite,
    e.g. a small encoder's tables whose width is not whole blocks); the readback then checks the ops of what
    is recorded."""
    if planned is None:
        return {FLOAT}
    parts = scheme_parts(planned)
    subsets = {"+".join(p for i, p in enumerate(parts) if mask >> i & 1) for mask in range(1, 1 << len(parts))}
    return {FLOAT, planned, *subsets}


def check_dtype(precision: str, dtype_short: str, form: str = "onnxruntime") -> None:
    """Refuse a combination the schemes cannot write: dynamic int8 takes float32 activations only. The sentence
    encoder is not counted: in a float16 int4 / mixed export its MatMuls have no float32 weights to rewrite and
    stay float16, and only its tables are quantized (its graph records "int8-gather")."""
    schemes = set(plan(precision, form).values())
    if INT8_DYNAMIC in schemes and dtype_short != "fp32":
        raise InvalidInputError.make(
            f"--precision {precision} with --dtype {formats.dtype(dtype_short).name}",
            "--dtype float32 for int8 / mixed (dynamic int8 quantizes float32 activations)",
            "Export with --dtype float32, or use --precision int4 with float16.")
    if precision != "float" and dtype_short == "bf16":
        raise InvalidInputError.make(f"--precision {precision} with --dtype bfloat16", "float32 or float16",
                                     "Quantize a float32 (CPU) or float16 (GPU) export.")


# ------------------------------------------------------------------------------------------- weight maths
def int4_blocks(weight_nk: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit blocks along K of a [N, K] weight -> (q int8 in [-8, 7] of shape [N, K_pad], scales
    [N, K_pad / block_size] float32); K is zero-padded to a whole number of blocks. Each block's scale is the
    one of CLIP_RATIOS x max|w| / 7 with the smallest squared error: clipping the few largest weights of a
    block buys a finer step for all the others (on Gaussian weights about a third less error than max|w| / 7)."""
    n, k = weight_nk.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float32)
    padded[:, :k] = weight_nk
    grouped = padded.reshape(n, blocks, block_size)
    amax = np.abs(grouped).max(axis=2)
    best_scale = best_err = None
    for ratio in CLIP_RATIOS:
        scale = np.where(amax == 0, 1.0, amax * ratio / 7.0).astype(np.float32)
        q = np.clip(np.rint(grouped / scale[..., None]), -8, 7)
        err = np.square(q * scale[..., None] - grouped).sum(axis=2)
        if best_err is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale, best_err = np.where(better, scale, best_scale), np.minimum(err, best_err)
    q = np.clip(np.rint(grouped / best_scale[..., None]), -8, 7).astype(np.int8)
    return q.reshape(n, blocks * block_size), best_scale.astype(np.float32)


def pack_uint4(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values (0..15) along the last axis -> bytes, the first of each pair in the low nibble."""
    v = values.astype(np.uint8)
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], 1), np.uint8)], axis=-1)
    return (v[..., 0::2] & 0x0F) | ((v[..., 1::2] & 0x0F) << 4)


def int8_channels(weight_kn: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel of a weight -> (q int8 in [-127, 127], scales float32 along `axis`)."""
    scales = np.abs(weight_kn).max(axis=1 - axis) / 127.0
    safe = np.where(scales == 0, 1.0, scales)
    shape = (1, -1) if axis == 1 else (-1, 1)
    q = np.clip(np.rint(weight_kn / safe.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales.astype(np.float32)


# ------------------------------------------------------------------------------------------- graph rewriting
@dataclass
class _WeightNode:
    """A MatMul / Gemm whose second operand is a constant weight, in MatMul form: y = x @ W[K, N] (+ bias)."""

    node: Any
    x: str
    weight_kn: np.ndarray
    bias: str | None
    output: str
    used_inits: tuple[str, ...]


@dataclass
class _Rewrite:
    model: Any
    inits: dict[str, Any]
    consumers: dict[str, int] = field(default_factory=dict)
    dead: list[Any] = field(default_factory=list)  # nodes whose only consumer was replaced (weight Transposes)

    @staticmethod
    def of(model: Any) -> _Rewrite:
        rewrite = _Rewrite(model, {t.name: t for t in model.graph.initializer})
        for node in model.graph.node:
            for name in node.input:
                rewrite.consumers[name] = rewrite.consumers.get(name, 0) + 1
        return rewrite

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def transposed_weight(self, name: str) -> Any:
        """The Transpose(perm=[1, 0]) node that makes `name` out of a weight initializer used nowhere else (how an
        unoptimized export writes nn.Linear: MatMul(x, Transpose(W))), or None."""
        from onnx import helper

        producer = next((n for n in self.model.graph.node if name in n.output), None)
        if producer is None or producer.op_type != "Transpose" or producer.input[0] not in self.inits:
            return None
        perm = next((list(helper.get_attribute_value(a)) for a in producer.attribute if a.name == "perm"), None)
        if perm != [1, 0] or self.consumers.get(producer.input[0], 0) != 1 or self.consumers.get(name, 0) != 1:
            return None
        return producer

    def weight_nodes(self, dtype: Any) -> list[_WeightNode]:
        from onnx import helper

        found = []
        for node in self.model.graph.node:
            if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
                continue
            if node.op_type == "MatMul" and node.input[1] not in self.inits:
                transpose = self.transposed_weight(node.input[1])
                init = None if transpose is None else self.inits[transpose.input[0]]
                if init is not None and len(init.dims) == 2 and init.data_type == dtype:
                    self.dead.append(transpose)
                    found.append(_WeightNode(node, node.input[0], np.ascontiguousarray(self.array(init.name).T),
                                             None, node.output[0], (init.name,)))
                continue
            if node.input[1] not in self.inits:
                continue
            init = self.inits[node.input[1]]
            if len(init.dims) != 2 or init.data_type != dtype or self.consumers.get(node.input[1], 0) != 1:
                continue
            if node.op_type == "MatMul":
                found.append(_WeightNode(node, node.input[0], self.array(node.input[1]), None, node.output[0],
                                         (node.input[1],)))
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            weight = self.array(node.input[1])
            weight_kn = weight.T if attrs.get("transB", 0) else weight
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias is not None and (bias not in self.inits or len(self.inits[bias].dims) != 1):
                continue  # a bias that is not one vector per output would need a broadcast this pass does not write
            found.append(_WeightNode(node, node.input[0], np.ascontiguousarray(weight_kn), bias, node.output[0],
                                     (node.input[1],)))
        return found

    def replace(self, old: Any, new_nodes: list[Any], new_inits: list[Any]) -> None:
        nodes = self.model.graph.node
        index = list(nodes).index(old)
        nodes.remove(old)
        for offset, node in enumerate(new_nodes):
            nodes.insert(index + offset, node)
        self.model.graph.initializer.extend(new_inits)
        for name in old.input:
            self.consumers[name] = self.consumers.get(name, 1) - 1

    def drop_unused_initializers(self) -> None:
        for node in self.dead:
            self.model.graph.node.remove(node)
        self.dead.clear()
        used = {name for node in self.model.graph.node for name in node.input}
        used.update(o.name for o in self.model.graph.output)
        keep = [t for t in self.model.graph.initializer if t.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)


def _float_dtype(model: Any) -> tuple[int, Any]:
    """(TensorProto float type, numpy dtype) of the graph's float weights: float32, or float16 for fp16 exports."""
    from onnx import TensorProto

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(S.META_PRECISION) == "fp16":
        return TensorProto.FLOAT16, np.float16
    return TensorProto.FLOAT, np.float32


def _quantize_int4_nbits(rw: _Rewrite, block_size: int, accuracy_level: int) -> QuantInfo:
    from onnx import helper, numpy_helper

    proto_dtype, np_dtype = _float_dtype(rw.model)
    info = QuantInfo("", INT4_NBITS, 4, block_size, accuracy_level, ("MatMulNBits",))
    for i, wn in enumerate(rw.weight_nodes(proto_dtype)):
        k, n = wn.weight_kn.shape
        q, scales = int4_blocks(wn.weight_kn.T.astype(np.float32), block_size)
        blocks = q.shape[1] // block_size
        packed = pack_uint4((q + 8).reshape(n, blocks, block_size))  # unsigned nibbles, implicit zero point 8
        base = f"{wn.node.name or 'matmul'}_{i}_q4"
        b = numpy_helper.from_array(packed, f"{base}_B")
        s = numpy_helper.from_array(scales.reshape(-1).astype(np_dtype), f"{base}_scales")
        inputs = [wn.x, b.name, s.name]
        if wn.bias is not None:
            inputs += ["", "", wn.bias]  # zero_points and g_idx absent
        node = helper.make_node("MatMulNBits", inputs, [wn.output], name=base, domain="com.microsoft",
                                K=k, N=n, bits=4, block_size=block_size, accuracy_level=accuracy_level)
        rw.replace(wn.node, [node], [b, s])
        info.nodes += 1
        info.float_bytes += wn.weight_kn.size * np.dtype(np_dtype).itemsize
        info.quantized_bytes += packed.nbytes + scales.size * np.dtype(np_dtype).itemsize
    return info


def _quantize_int8_dynamic(rw: _Rewrite) -> QuantInfo:
    from onnx import TensorProto, helper, numpy_helper

    info = QuantInfo("", INT8_DYNAMIC, 8, None, None, ("DynamicQuantizeLinear", "MatMulInteger"))
    for i, wn in enumerate(rw.weight_nodes(TensorProto.FLOAT)):
        q, scales = int8_channels(wn.weight_kn.astype(np.float32), axis=1)
        base = f"{wn.node.name or 'matmul'}_{i}_q8"
        w = numpy_helper.from_array(q, f"{base}_W")
        s = numpy_helper.from_array(scales, f"{base}_scale")
        # The chain ONNX Runtime's CPU optimizer fuses into one kernel (DynamicQuantizeMatMul); without the fusion
        # it still runs as standard ops everywhere.
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [wn.x], [f"{base}_xq", f"{base}_xs", f"{base}_xzp"],
                             name=f"{base}_quant"),
            helper.make_node("MatMulInteger", [f"{base}_xq", w.name, f"{base}_xzp"], [f"{base}_int"],
                             name=f"{base}_matmul"),
            helper.make_node("Cast", [f"{base}_int"], [f"{base}_float"], to=TensorProto.FLOAT, name=f"{base}_cast"),
            helper.make_node("Mul", [f"{base}_xs", s.name], [f"{base}_scale_all"], name=f"{base}_scales"),
        ]
        scaled = f"{base}_scaled" if wn.bias is not None else wn.output
        nodes.append(helper.make_node("Mul", [f"{base}_float", f"{base}_scale_all"], [scaled], name=f"{base}_mul"))
        if wn.bias is not None:
            nodes.append(helper.make_node("Add", [scaled, wn.bias], [wn.output], name=f"{base}_bias"))
        rw.replace(wn.node, nodes, [w, s])
        info.nodes += 1
        info.float_bytes += wn.weight_kn.size * 4
        info.quantized_bytes += q.nbytes + scales.nbytes
    return info


def _quantize_qdq_int8(rw: _Rewrite) -> QuantInfo:
    from onnx import helper, numpy_helper

    proto_dtype, np_dtype = _float_dtype(rw.model)
    info = QuantInfo("", QDQ_INT8, 8, None, None, ("DequantizeLinear",), form="qdq")
    for i, wn in enumerate(rw.weight_nodes(proto_dtype)):
        q, scales = int8_channels(wn.weight_kn.astype(np.float32), axis=1)
        base = f"{wn.node.name or 'matmul'}_{i}_qdq"
        w = numpy_helper.from_array(q, f"{base}_W")
        s = numpy_helper.from_array(scales.astype(np_dtype), f"{base}_scale")
        zp = numpy_helper.from_array(np.zeros(scales.shape, np.int8), f"{base}_zero_point")
        nodes = [helper.make_node("DequantizeLinear", [w.name, s.name, zp.name], [f"{base}_weight"], axis=1,
                                  name=f"{base}_dq")]
        mm_out = f"{base}_mm" if wn.bias is not None else wn.output
        nodes.append(helper.make_node("MatMul", [wn.x, f"{base}_weight"], [mm_out], name=f"{base}_matmul"))
        if wn.bias is not None:
            nodes.append(helper.make_node("Add", [mm_out, wn.bias], [wn.output], name=f"{base}_bias"))
        rw.replace(wn.node, nodes, [w, s, zp])
        info.nodes += 1
        info.float_bytes += wn.weight_kn.size * np.dtype(np_dtype).itemsize
        info.quantized_bytes += q.nbytes + s.raw_data.__len__() + zp.raw_data.__len__()
    return info


def _quantize_gather(rw: _Rewrite, bits: int, block_size: int) -> QuantInfo:
    from onnx import TensorProto, helper, numpy_helper

    proto_dtype, np_dtype = _float_dtype(rw.model)
    scheme = INT4_GATHER if bits == 4 else INT8_GATHER
    info = QuantInfo("", scheme, bits, block_size, None, ("GatherBlockQuantized",))
    for i, node in enumerate(list(rw.model.graph.node)):
        if node.op_type != "Gather" or node.input[0] not in rw.inits:
            continue
        init = rw.inits[node.input[0]]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if len(init.dims) != 2 or init.data_type != proto_dtype or axis != 0 or init.dims[1] % block_size:
            continue  # the hidden axis must be whole blocks: GatherBlockQuantized does not pad
        table = rw.array(node.input[0]).astype(np.float32)
        rows, hidden = table.shape
        grouped = table.reshape(rows, hidden // block_size, block_size)
        base = f"{node.name or 'gather'}_{i}_q{bits}"
        if bits == 4:
            q4, scales = int4_blocks(table, block_size)
            packed = pack_uint4((q4 & 0x0F).astype(np.uint8))  # two's complement nibbles
            data = helper.make_tensor(f"{base}_data", TensorProto.INT4, [rows, hidden], packed.tobytes(), raw=True)
            extra: list[Any] = []
        else:
            scales = np.abs(grouped).max(axis=2) / 127.0
            q = np.clip(np.rint(grouped / np.where(scales == 0, 1.0, scales)[..., None]), -127, 127)
            data = numpy_helper.from_array((q + 128).astype(np.uint8).reshape(rows, hidden), f"{base}_data")
            extra = [numpy_helper.from_array(np.full(scales.shape, 128, np.uint8), f"{base}_zero_points")]
        s = numpy_helper.from_array(scales.astype(np_dtype), f"{base}_scales")
        inputs = [data.name, node.input[1], s.name] + [t.name for t in extra]
        new = helper.make_node("GatherBlockQuantized", inputs, [node.output[0]], name=base, domain="com.microsoft",
                               gather_axis=0, quantize_axis=1, block_size=block_size, bits=bits)
        rw.replace(node, [new], [data, s, *extra])
        info.nodes += 1
        info.float_bytes += table.size * np.dtype(np_dtype).itemsize
        info.quantized_bytes += len(data.raw_data) + s.raw_data.__len__() + sum(len(t.raw_data) for t in extra)
    return info


def quantize_model(model: Any, scheme: str, precision: str, block_size: int = DEFAULT_BLOCK_SIZE,
                   accuracy_level: int = ACCURACY_LEVEL) -> QuantInfo:
    """Rewrite `model` (an onnx ModelProto with its weights loaded) in place with `scheme`; records the result in
    its metadata and returns it."""
    from onnx import helper

    precision = formats.weight_precision(precision)
    if scheme not in SCHEMES:
        raise InvalidInputError.make(f"scheme {scheme!r}", f"one of {list(SCHEMES)}", "Use plan() to pick one.")
    block_size = check_block_size(block_size)
    done = []  # the parts that rewrote at least one node
    for part in (p for p in scheme_parts(scheme) if p != FLOAT):
        rw = _Rewrite.of(model)  # afresh for each part: the previous one rewired the graph
        if part == INT4_NBITS:
            part_info = _quantize_int4_nbits(rw, block_size, accuracy_level)
        elif part == INT8_DYNAMIC:
            part_info = _quantize_int8_dynamic(rw)
        elif part == QDQ_INT8:
            part_info = _quantize_qdq_int8(rw)
        else:
            part_info = _quantize_gather(rw, 4 if part == INT4_GATHER else 8, block_size)
        rw.drop_unused_initializers()
        if part_info.nodes:
            done.append(part_info)
    info = _combined(done, precision)
    _Rewrite.of(model).drop_unused_initializers()
    if any(op in ("MatMulNBits", "GatherBlockQuantized") for op in info.ops) and not any(
            o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    props = {p.key: p.value for p in model.metadata_props}
    props[META_QUANTIZATION] = info.to_json()
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return info


def _combined(parts: list[QuantInfo], precision: str) -> QuantInfo:
    """One record of the parts that rewrote something: float when none did, the part itself when one did, else
    the composite (its name the parts' joined by "+", the widest bits, every op, the counts added up)."""
    if not parts:
        return QuantInfo(precision, FLOAT)
    first = parts[0]
    return QuantInfo(
        precision, "+".join(p.scheme for p in parts), max(p.bits for p in parts),
        next((p.block_size for p in parts if p.block_size is not None), None),
        next((p.accuracy_level for p in parts if p.accuracy_level is not None), None),
        tuple(dict.fromkeys(op for p in parts for op in p.ops)), sum(p.nodes for p in parts),
        sum(p.float_bytes for p in parts), sum(p.quantized_bytes for p in parts), first.form)


def quantize_file(source: str | os.PathLike, target: str | os.PathLike, scheme: str, precision: str,
                  block_size: int = DEFAULT_BLOCK_SIZE, accuracy_level: int = ACCURACY_LEVEL,
                  export_id: str | None = None) -> QuantInfo:
    """Read one exported graph (with its external data), quantize it, write it to `target` (its weights in
    `<target>.data` past the 2 GB protobuf limit); `export_id` replaces the one it records."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    info = quantize_model(model, scheme, precision, block_size, accuracy_level)
    if export_id is not None:
        for prop in model.metadata_props:
            if prop.key == S.META_EXPORT_ID:
                prop.value = export_id
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    external = total > S.EXTERNAL_DATA_THRESHOLD_BYTES
    onnx.save_model(model, str(target), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=Path(str(target) + ".data").name if external else None)
    return info


def read_quantization(meta: dict[str, str]) -> QuantInfo:
    """The quantization a graph's metadata records; a graph without the entry is a float graph (exports written
    before quantization existed)."""
    text = meta.get(META_QUANTIZATION)
    return QuantInfo(FLOAT, FLOAT) if text is None else QuantInfo.from_json(text)


def graph_op_types(path: str | os.PathLike) -> set[str]:
    """The op types of a graph file (its structure only; external weights are not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def quantize_in_place(path: Path, spec: S.GraphSpec, scheme: str, precision: str, block_size: int,
                      feeds: dict[str, np.ndarray] | None, export_id: str | None = None,
                      ) -> tuple[str, float | None, float | None]:
    """Rewrite the graph file at `path` with `scheme` (a float graph only records the precision); with `feeds`,
    compare it with the float graph on them first. The float file is replaced only once the new one passed.
    `export_id` replaces the graph's export id (a directory quantized from another export is an export of its
    own). Returns (the scheme written, worst relative error, token agreement)."""
    quantized = path.with_name(path.stem + ".quantized.onnx")
    try:
        info = quantize_file(path, quantized, scheme, precision, block_size, export_id=export_id)
        error = agreement = None
        if feeds is not None and info.scheme != FLOAT:
            comparison = compare_graphs(path, quantized, spec, feeds)
            error, agreement = comparison.worst_relative_error, comparison.token_agreement
        data = Path(str(path) + ".data")
        if data.exists():
            data.unlink()
        os.replace(quantized, path)
        if Path(str(quantized) + ".data").exists():
            os.replace(Path(str(quantized) + ".data"), data)
            _relocate_external_data(path, quantized.name + ".data", data.name)
    finally:
        for leftover in (quantized, Path(str(quantized) + ".data")):
            leftover.unlink(missing_ok=True)
    return info.scheme, error, agreement


def _relocate_external_data(path: Path, old_location: str, new_location: str) -> None:
    """Point a graph's external tensors at their data file's new name (the graph refers to it by name)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location" and item.value == old_location:
                item.value = new_location
    onnx.save_model(model, str(path))


# ------------------------------------------------------------------------------------------- validation
@dataclass
class GraphComparison:
    """A quantized graph against its float graph on the same inputs (both in ONNX Runtime)."""

    relative_error: dict[str, float]  # per float output: ||q - f|| / ||f||
    max_abs_error: dict[str, float]
    token_agreement: float | None = None  # decoder: share of logit positions with the same arg-max

    @property
    def worst_relative_error(self) -> float:
        return max(self.relative_error.values(), default=0.0)


def compare_graphs(float_path: str | os.PathLike, quant_path: str | os.PathLike, spec: S.GraphSpec,
                   feeds: dict[str, np.ndarray], providers: tuple[str, ...] = ("CPUExecutionProvider",),
                   ) -> GraphComparison:
    """Run both graphs on `feeds`; raises ExportValidationError when an output is not finite or moved by more
    than MAX_RELATIVE_ERROR of its norm (a broken rewrite, not quantization noise)."""
    ort = formats.FORMATS["onnx"].require()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(float_path), sess_options=so, providers=list(providers)).run(None, feeds)
    got = ort.InferenceSession(str(quant_path), sess_options=so, providers=list(providers)).run(None, feeds)
    rel, mx = {}, {}
    agreement = None
    for out, want, have in zip(spec.outputs, ref, got):
        if not np.issubdtype(want.dtype, np.floating):
            continue
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        if not np.isfinite(have64).all():
            raise ExportValidationError.make(f"quantized graph {spec.name!r} output {out.name!r} with non-finite "
                                             "values", "finite values like the float graph's",
                                             "Export with --precision float and report the model and command.")
        norm = float(np.linalg.norm(want64)) or 1.0
        rel[out.name] = float(np.linalg.norm(have64 - want64)) / norm
        mx[out.name] = float(np.abs(have64 - want64).max()) if want.size else 0.0
        if out.name == "logits" and want.size:
            agreement = float((want.argmax(-1) == have.argmax(-1)).mean())
        if rel[out.name] > MAX_RELATIVE_ERROR:
            raise ExportValidationError.make(
                f"quantized graph {spec.name!r} output {out.name!r} with relative error {rel[out.name]:.3f}",
                f"at most {MAX_RELATIVE_ERROR} of the float output's norm",
                "Use a smaller --block-size, --precision int8, or --precision float for this model.")
    return GraphComparison(rel, mx, agreement)
