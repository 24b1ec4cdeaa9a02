"""unipose_sdk.export: ONNX and TensorRT export of the UniPose model (installed from the repository's export/)."""
