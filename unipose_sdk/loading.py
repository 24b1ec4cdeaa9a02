"""The one loader of torch weights: the embedded unipose-tiny or an SDK model directory, for the session, the
exporter and the benchmark alike (`formats.resolve_source` decides when the torch format runs at all).

Importing it imports `unipose_sdk.kernels`, which files the fused attention kernel in the model's attention router
(`models.attention`): every model loaded here can take it where the router's default route says so."""

from __future__ import annotations

import os
from typing import Any

import unipose_sdk.kernels  # noqa: F401 - files "fused" in models.attention's registry
from unipose_sdk.checkpoint.embedded import load_embedded
from unipose_sdk.checkpoint.sdk_format import LoadedModel, load_model
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.formats import EMBEDDED_MODEL, existing_directory, is_embedded, torch_dtype


def load_torch_model(model: Any, device: Any = "cpu", dtype: Any = None) -> LoadedModel:
    """None / "unipose-tiny" (the embedded model) or an SDK model directory -> LoadedModel (model, config,
    tokenizer, is_random, source); `dtype` by any name of the dtype table (None: as stored)."""
    resolved = None if dtype is None else torch_dtype(dtype)
    if is_embedded(model):
        return load_embedded(device, resolved)
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidInputError.make(f"model of type {type(model).__name__}",
                                     f"None, {EMBEDDED_MODEL!r} or an SDK model directory",
                                     "Pass the model directory written by `unipose convert`.")
    return load_model(existing_directory(model), device, resolved)
