"""unipose_sdk.kernels: fused mixed-attention kernels (installed from the repository's kernels/).

Importing this package defines the `torch.ops.unipose.mixed_attention` custom op and files it under the name
"fused" in `unipose_sdk.models.attention` (the default there on CPU when the C++ kernel is built). It is cheap:
the C++ extension loads on the first CPU call, triton is imported on the first CUDA call, onnx only by
`unipose_sdk.kernels.onnx`.

    ops.py        the custom op, its per-device dispatch and fallbacks, the model registration
    reference.py  the pure-torch reference (fallback and test oracle)
    csrc/         the C++ CPU kernel (pybind11), built by setup.py
    triton/       the Triton GPU kernel
    onnx.py       three ways to emit the op into an ONNX graph
"""

from unipose_sdk.kernels.ops import fused_attention, kernel_status, mixed_attention, register_with_model
from unipose_sdk.kernels.reference import mixed_attention_reference

register_with_model()

__all__ = ["fused_attention", "kernel_status", "mixed_attention", "mixed_attention_reference"]
