"""unipose_sdk.export: ONNX and TensorRT export of the UniPose model (installed from the repository's export/).

    specs.py      one declarative spec per graph: names, dynamic axes, opset, tolerance, metadata keys
    onnx.py       export_onnx(model, output_dir, precision=...): five self-describing, validated graphs
    validate.py   ONNX Runtime vs torch comparison (ExportValidationError); it only compares
    quantize.py   int4 / int8 weights in the graphs (MatMulNBits, dynamic int8, GatherBlockQuantized, QDQ)
    artifacts.py  reading exports back (the runtimes use it): metadata, engine headers, codebook, tokenizer,
                  and the identity checks that every part belongs to one export
    tensorrt.py   engines from the exported graphs: profiles, version checks, cache keys, the builder

The runtimes import this package (specs, artifacts); it imports no runtime, so the two packages form no cycle.

Heavy imports (torch.onnx, onnxscript, onnxruntime, tensorrt) happen inside the functions that need them.
"""

from unipose_sdk.export.specs import GRAPH_NAMES, PRECISIONS, GraphSpec, TensorSpec, Tolerance, graph_specs


def export_onnx(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See unipose_sdk.export.onnx.export_onnx (imported lazily: it pulls in the ONNX exporter)."""
    from unipose_sdk.export.onnx import export_onnx as _export_onnx

    return _export_onnx(*args, **kwargs)


__all__ = ["GRAPH_NAMES", "PRECISIONS", "GraphSpec", "TensorSpec", "Tolerance", "export_onnx", "graph_specs"]
