"""Weight averaging: one model from several runs that continued from the same weights (a "model soup").

    python -m unipose_sdk.training.ship average --from RUN_A/stage3 RUN_B/stage3:2 --out SOUP_RUN
    python -m unipose_sdk.training.ship export --run SOUP_RUN --out CANDIDATE

Runs continued (`unipose train --init-from`) from one set of weights with different seeds, task mixes or
conversation shares each move the trained parts a short way from that start, and on different tasks. Their
weighted mean is a model of the same shape that often keeps much of what each run gained (Wortsman et al., "Model
soups", ICML 2022); whether it does is for `unipose evaluate` to say, like any other candidate, and the ship gate
decides as for a trained run.

Only checkpoints that belong together are averaged: one config (the shipped decoding settings aside), one text
tokenizer, one sentence tokenizer, the same tensors by name and shape, and frozen parts equal in value (the pose
tokenizer, whose codes every pose answer is written in, and the sentence encoder). Anything else is refused
before a file is written. Sources are SDK directories (safetensors; nothing is unpickled): a run's stage
directory, or a candidate / shipped model (frozen parts are compared by value, so a float16 candidate matches the
float32 run it was exported from; its float16 weights enter the mean as they are).

The result is written as `OUT/stage3` (float32, like a training stage) with a `training.json` that records each
source's weight and its whole training history (without the per-step loss curves), so `ship export` and the model
card say what went in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unipose_sdk.checkpoint.sdk_format import LoadedModel, load_model, save_model
from unipose_sdk.errors import CheckpointError, InvalidInputError
from unipose_sdk.fileio import signals_raise
from unipose_sdk.training.pipeline import STAGE_INFO, earlier_records

# Parts no training stage updates: a source whose copy differs was built on other frozen weights.
FROZEN_PREFIXES = ("pose_tokenizer.", "text_encoder.bert.")
AVERAGED_STAGE = "stage3"


def parse_source(text: str) -> tuple[Path, float]:
    """`DIR` or `DIR:WEIGHT` (a positive finite weight, default 1) -> (directory, weight)."""
    directory, sep, weight_text = text.rpartition(":")
    if not sep or not weight_text or "/" in weight_text or "\\" in weight_text:
        return Path(text), 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        return Path(text), 1.0  # a directory name with a colon in it
    if not (math.isfinite(weight) and weight > 0):
        raise InvalidInputError.make(f"weight {weight_text!r} in {text!r}", "a positive finite number",
                                     "Write DIR:2 to count DIR twice, or DIR alone for weight 1.")
    return Path(directory), weight


# The decoding settings a config carries beside the weights (`ship export` writes the Generator's, `evaluation.
# description_floor --write` the image descriptions' floor).
DECODING_FIELDS = ("pose_decoding", "text_to_pose_code_temperature", "text_to_pose_guidance",
                   "image_description_min_sentence_logprob")


def _decoding_free(config: Any) -> Any:
    """The config with its decoding settings back at their defaults."""
    return dataclasses.replace(config, **{f.name: f.default for f in dataclasses.fields(config)
                                          if f.name in DECODING_FIELDS})


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() == b.is_file() and (not a.is_file() or a.read_bytes() == b.read_bytes())


def check_belong_together(directories: Sequence[Path], loaded: Sequence[LoadedModel]) -> None:
    """Raise CheckpointError naming the first source that does not match the first one, and how."""
    first_dir, first = directories[0], loaded[0]
    first_state = first.model.state_dict()
    for directory, other in zip(directories[1:], loaded[1:]):
        def refuse(what: str, fix: str) -> None:
            raise CheckpointError.make(f"{directory} ({what})", f"a checkpoint that belongs with {first_dir}: "
                                       "the same config, tokenizers and frozen parts", fix)

        if _decoding_free(other.config) != _decoding_free(first.config):
            refuse("another model config", "Average runs of one model size and layout only.")
        for name in ("tokenizer.json", "sentence_tokenizer.json"):
            if not _same_file(first_dir / name, directory / name):
                refuse(f"another {name}", "Average runs trained with one tokenizer only.")
        state = other.model.state_dict()
        if state.keys() != first_state.keys():
            extra = sorted(state.keys() ^ first_state.keys())[:3]
            refuse(f"other tensor names, e.g. {extra}", "Average runs of one model layout only.")
        for key, tensor in state.items():
            if tensor.shape != first_state[key].shape:
                refuse(f"{key} of shape {tuple(tensor.shape)}, not {tuple(first_state[key].shape)}",
                       "Average runs of one model size only.")
            if key.startswith(FROZEN_PREFIXES) and not torch.equal(tensor.float(), first_state[key].float()):
                refuse(f"a different frozen {key}", "Average runs continued from the same weights only.")


def without_step_histories(records: Any) -> Any:
    """Training records without their per-step loss curves (`language` / `vision` "history"), at every depth.

    Averaged runs share their ancestors, so each source's full records would repeat them: three sources of one
    lineage came to 5 MB, too much to ship in the package. The curves stay in each run's own directory."""
    if isinstance(records, dict):
        return {k: without_step_histories(v) for k, v in records.items() if k != "history"}
    if isinstance(records, list):
        return [without_step_histories(v) for v in records]
    return records


def average_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean (weights normalised to sum 1) of every trained floating tensor, in float32 and cast back to
    the first state's dtype. Integer tensors (buffers) and the frozen parts (`FROZEN_PREFIXES`, equal in every
    source) are copied from the first state: a mean of equal tensors is not always equal to them in floating point
    (x / 3 + x / 3 + x / 3 can differ from x in the last bit)."""
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point() or key.startswith(FROZEN_PREFIXES):
            out[key] = first.clone()
            continue
        mean = sum(state[key].float() * (w / total) for state, w in zip(states, weights))
        out[key] = mean.to(first.dtype)
    return out


def average_checkpoints(sources: Sequence[tuple[Path, float]], out: Path) -> Path:
    """Write the weighted mean of `sources` ((directory, weight) pairs, at least two) as `out/stage3`, with its
    training record; returns that stage directory. Nothing is written when a check fails."""
    if len(sources) < 2:
        raise InvalidInputError.make(f"{len(sources)} source(s)", "at least two checkpoint directories",
                                     "Pass --from DIR_A DIR_B [...] (DIR:WEIGHT to weight one).")
    directories = [Path(d) for d, _ in sources]
    weights = [float(w) for _, w in sources]
    if len(set(map(os.path.realpath, directories))) != len(directories):
        raise InvalidInputError.make(f"sources {[str(d) for d in directories]}", "distinct directories",
                                     "Give each run once and weight it with DIR:WEIGHT instead of repeating it.")
    target = Path(out) / AVERAGED_STAGE
    if Path(out).exists():
        raise CheckpointError.make(f"output directory {str(out)!r}, which already exists", "a new directory",
                                   "Choose another --out directory, or remove the old one.")
    start = time.perf_counter()
    loaded = [load_model(d) for d in directories]  # ModelNotFoundError / CheckpointError: missing or damaged
    check_belong_together(directories, loaded)
    mean = average_state([m.model.state_dict() for m in loaded], weights)
    model = loaded[0].model
    model.load_state_dict(mean)
    model.config = _decoding_free(model.config)
    record = {
        "stage": int(AVERAGED_STAGE[-1]),
        "average_of": [{"path": str(d), "weight": w / sum(weights),
                        "records": without_step_histories(earlier_records(d))} for d, w in zip(directories, weights)],
        "seconds": 0.0,  # filled below: the averaging itself
        "device": "cpu",
    }
    # Written next to `out` and renamed into place: SIGTERM, SIGHUP or Ctrl-C part-way leaves no `out` behind.
    tmp = Path(out).with_name(f".{Path(out).name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with signals_raise():
        try:
            save_model(model, tmp / AVERAGED_STAGE, loaded[0].tokenizer, dtype=torch.float32,
                       source=f"weight average of {len(directories)} runs")
            if loaded[0].sentence_tokenizer is not None:
                loaded[0].sentence_tokenizer.save(tmp / AVERAGED_STAGE)
            record["seconds"] = round(time.perf_counter() - start, 1)
            (tmp / AVERAGED_STAGE / STAGE_INFO).write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
