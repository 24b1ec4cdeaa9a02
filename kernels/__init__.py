"""unipose_sdk.kernels: fused mixed-attention kernels (installed from the repository's kernels/)."""
