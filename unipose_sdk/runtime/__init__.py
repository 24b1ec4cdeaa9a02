"""Runtimes: where the model runs (torch, ONNX Runtime, TensorRT) behind one interface."""
