"""The four task classes (Estimator, Generator, Editor, Describer) and the free-form Assistant."""

from unipose_sdk.tasks.assistant import Assistant, PastTurn
from unipose_sdk.tasks.describer import Describer
from unipose_sdk.tasks.editor import Editor
from unipose_sdk.tasks.estimator import Estimator
from unipose_sdk.tasks.generator import Generator

__all__ = ["Assistant", "Describer", "Editor", "Estimator", "Generator", "PastTurn"]
