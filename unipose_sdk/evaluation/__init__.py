"""Evaluation of a UniPose model on held-out synthetic data (`unipose evaluate`), with trivial baselines."""

from unipose_sdk.evaluation.freeform import freeform_score, load_prompts
from unipose_sdk.evaluation.runner import FULL_SIZES, QUICK_SIZES, evaluate, to_markdown, write_report

__all__ = ["evaluate", "to_markdown", "write_report", "FULL_SIZES", "QUICK_SIZES", "freeform_score", "load_prompts"]
