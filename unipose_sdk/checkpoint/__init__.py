"""Loading and writing weights. Every foreign key layout (official UniPose release, LLaVA / Hugging Face,
TokenHMR, the pose VQ-VAE Lightning checkpoint) is remapped in this package and nowhere else."""

from unipose_sdk.checkpoint.common import load_state_dict_strict

__all__ = ["load_state_dict_strict"]
