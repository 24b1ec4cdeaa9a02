"""The single UniPose model definition in PyTorch, shared by every backend, the exporter and the tests."""
