"""Pose tokenizer checkpoints: the official Lightning layout, the SDK directory format, the embedded default,
and every error path (missing path, wrong shapes, missing / extra keys, unreadable files)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from unipose_sdk.body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d
from unipose_sdk.checkpoint import pose_tokenizer as ckpt_mod
from unipose_sdk.checkpoint.pose_tokenizer import (
    embedded_tokenizer_dir,
    infer_config,
    load_official_checkpoint,
    load_pose_tokenizer,
    load_sdk_directory,
    random_tiny_tokenizer,
    save_pose_tokenizer,
)
from unipose_sdk.errors import CheckpointError, ModelNotFoundError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.pose_tokenizer import PoseTokenizer

TINY = get_preset("unipose-tiny").pose_tokenizer


@pytest.fixture(scope="module")
def model() -> PoseTokenizer:
    return random_tiny_tokenizer(seed=3)


@pytest.fixture(scope="module")
def poses() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return matrix_to_rotation_6d(axis_angle_to_matrix(torch.randn(4, 22, 3, generator=g) * 0.4))


_SETSTATE_CALLS: list = []


@dataclasses.dataclass
class HyperParameters:
    """Stands for the training config a Lightning checkpoint pickles next to the weights."""

    lr: float = 2e-4

    def __setstate__(self, state: dict) -> None:  # would run if the loader resolved this class
        _SETSTATE_CALLS.append(state)


def _write_lightning(path: Path, state_dict: dict, **extra: object) -> Path:
    """A checkpoint in exactly the released layout: Lightning's top-level entries, the module's state_dict with
    the tokenizer keys plus the loss module's keys (which the official loader drops)."""
    state = dict(state_dict)
    state["loss.rotmat_loss.weight"] = torch.ones(3)
    state["loss.vertex_loss.area_weights"] = torch.rand(10)
    torch.save({"epoch": 12, "global_step": 40000, "pytorch-lightning_version": "2.1.0", "state_dict": state,
                "optimizer_states": [], "lr_schedulers": [], **extra}, path)
    return path


# ------------------------------------------------------------------------------------------------ official layout


def test_official_checkpoint_round_trip(tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor, caplog) -> None:
    path = _write_lightning(tmp_path / "best_MPJPE.ckpt", model.state_dict())
    with caplog.at_level(logging.INFO):
        loaded = load_pose_tokenizer(path)
    assert "dropped 2 training-only keys" in caplog.text
    assert loaded.config == TINY  # sizes read off the tensor shapes
    assert not loaded.training and loaded.source.startswith("official checkpoint")
    codes = model.encode(poses)
    assert torch.equal(loaded.encode(poses), codes)
    assert torch.equal(loaded.decode_6d(codes), model.decode_6d(codes))


def test_official_checkpoint_with_foreign_objects_loads_without_running_them(
    tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor
) -> None:
    _SETSTATE_CALLS.clear()
    path = _write_lightning(tmp_path / "hp.ckpt", model.state_dict(), hyper_parameters=HyperParameters())
    with pytest.raises(pickle.UnpicklingError):  # the plain weights-only loader refuses it ...
        torch.load(path, weights_only=True)
    loaded = load_official_checkpoint(path)  # ... ours stubs the object out
    assert _SETSTATE_CALLS == []
    assert torch.equal(loaded.encode(poses), model.encode(poses))


def test_bare_state_dict_file_also_loads(tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor) -> None:
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    assert torch.equal(load_pose_tokenizer(path).encode(poses), model.encode(poses))


def test_explicit_config_overrides_inference(tmp_path: Path, model: PoseTokenizer) -> None:
    path = _write_lightning(tmp_path / "c.ckpt", model.state_dict())
    wrong = dataclasses.replace(TINY, width=64)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_pose_tokenizer(path, config=wrong)


def test_infer_config_reads_7b_sizes() -> None:
    state = PoseTokenizer(get_preset("unipose-7b").pose_tokenizer).state_dict()
    assert infer_config(state) == get_preset("unipose-7b").pose_tokenizer
    assert infer_config({}) == get_preset("unipose-7b").pose_tokenizer


def test_wrong_shape_is_listed(tmp_path: Path, model: PoseTokenizer) -> None:
    state = model.state_dict()
    state["decoder.decoder.16.weight"] = torch.zeros(6, 128, 5)
    path = _write_lightning(tmp_path / "shape.ckpt", state)
    with pytest.raises(CheckpointError, match=r"decoder\.decoder\.16\.weight \(checkpoint \(6, 128, 5\)"):
        load_pose_tokenizer(path)


def test_missing_and_extra_keys_are_listed(tmp_path: Path, model: PoseTokenizer) -> None:
    state = model.state_dict()
    del state["encoder.encoder.13.bias"]
    state["encoder.encoder.14.weight"] = torch.zeros(1)
    path = _write_lightning(tmp_path / "keys.ckpt", state)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(path)
    message = str(info.value)
    assert "1 missing keys: encoder.encoder.13.bias" in message
    assert "1 unexpected keys: encoder.encoder.14.weight" in message


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pose_tokenizer(tmp_path / "nope.ckpt")
    with pytest.raises(ModelNotFoundError):
        load_official_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError):  # ModelNotFoundError is a FileNotFoundError too
        load_pose_tokenizer(str(tmp_path / "nope"))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_unreadable_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="received"):
        load_pose_tokenizer(path)


def test_checkpoint_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"epoch": 3, "model": "x"}, path)
    with pytest.raises(CheckpointError, match="'state_dict'"):
        load_pose_tokenizer(path)


# ------------------------------------------------------------------------------------------------ SDK directory


def test_sdk_directory_round_trip(tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor) -> None:
    out = save_pose_tokenizer(model, tmp_path / "tok", extra_files={"metrics.json": {"mpjpe_mm": 1.5}})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    data = json.loads((out / "config.json").read_text())
    assert data["format"] == "unipose-sdk/pose-tokenizer" and data["config"]["codebook_size"] == 512
    mode = stat.S_IMODE(os.stat(out / "model.safetensors").st_mode)
    assert mode & stat.S_IRGRP  # not the 0600 of a temp file
    loaded = load_pose_tokenizer(out)
    assert loaded.config == TINY and loaded.source.startswith("SDK directory")
    codes = model.encode(poses)
    assert torch.equal(loaded.encode(poses), codes)
    assert torch.equal(loaded.decode_6d(codes), model.decode_6d(codes))


def test_sdk_directory_fp16(tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor) -> None:
    out = save_pose_tokenizer(model, tmp_path / "half", dtype=torch.float16)
    assert (out / "model.safetensors").stat().st_size < 0.6 * 4 * sum(v.numel() for v in model.state_dict().values())
    loaded = load_pose_tokenizer(out)  # loaded back as float32
    assert loaded.quantizer.codebook.dtype == torch.float32
    codes = model.encode(poses)
    assert (loaded.encode(poses) == codes).float().mean() > 0.95
    torch.testing.assert_close(loaded.decode_6d(codes), model.decode_6d(codes), atol=2e-3, rtol=2e-2)
    half = load_pose_tokenizer(out, dtype=torch.float16)
    assert half.quantizer.codebook.dtype == torch.float16


def test_sdk_directory_missing_files(tmp_path: Path, model: PoseTokenizer) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without config.json, model.safetensors"):
        load_pose_tokenizer(tmp_path / "empty")
    out = save_pose_tokenizer(model, tmp_path / "tok")
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        load_sdk_directory(out)


def test_sdk_directory_bad_config(tmp_path: Path, model: PoseTokenizer) -> None:
    out = save_pose_tokenizer(model, tmp_path / "tok")
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_pose_tokenizer(out)
    (out / "config.json").write_text(json.dumps({"format": "something-else", "config": {}}))
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        load_pose_tokenizer(out)
    (out / "config.json").write_text(json.dumps({"format": "unipose-sdk/pose-tokenizer", "config": {"depth": 3}}))
    with pytest.raises(CheckpointError, match="depth"):
        load_pose_tokenizer(out)


def test_sdk_directory_config_weights_mismatch(tmp_path: Path, model: PoseTokenizer) -> None:
    out = save_pose_tokenizer(model, tmp_path / "tok")
    data = json.loads((out / "config.json").read_text())
    data["config"]["codebook_size"] = 1024
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"quantizer\.codebook \(checkpoint \(512, 64\) vs model \(1024, 64\)\)"):
        load_pose_tokenizer(out)


def test_sdk_directory_corrupt_weights(tmp_path: Path, model: PoseTokenizer) -> None:
    out = save_pose_tokenizer(model, tmp_path / "tok")
    (out / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors cannot read"):
        load_pose_tokenizer(out)


def test_atomic_save_leaves_no_temporary_files(tmp_path: Path, model: PoseTokenizer, monkeypatch) -> None:
    out = save_pose_tokenizer(model, tmp_path / "tok")
    before = (out / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_pose_tokenizer(random_tiny_tokenizer(seed=9), out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == before


# ------------------------------------------------------------------------------------------------ embedded default


def test_default_is_the_embedded_tokenizer() -> None:
    if not (embedded_tokenizer_dir() / "model.safetensors").is_file():
        pytest.skip("embedded tokenizer not shipped in this checkout")
    loaded = load_pose_tokenizer()
    assert loaded.config == TINY
    assert loaded.source.startswith("embedded unipose-tiny")
    metrics = json.loads((embedded_tokenizer_dir() / "metrics.json").read_text())
    assert metrics["held_out"]["mpjpe_mm_mean"] > 0


def test_missing_embedded_tokenizer_falls_back_loudly(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(ckpt_mod, "embedded_tokenizer_dir", lambda: tmp_path / "absent")
    with caplog.at_level(logging.WARNING), pytest.warns(RuntimeWarning, match="RANDOM"):
        loaded = load_pose_tokenizer()
    assert "embedded pose tokenizer is missing" in caplog.text
    assert loaded.source.startswith("RANDOM")
    # Seeded: two fallbacks are the same model, and the global RNG is left alone.
    state = torch.random.get_rng_state()
    with pytest.warns(RuntimeWarning):
        second = load_pose_tokenizer()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(second.quantizer.codebook, loaded.quantizer.codebook)


# ------------------------------------------------------------------------------------------------ extra modules


def test_keys_of_other_modules_are_ignored_with_one_note(tmp_path: Path, model: PoseTokenizer, poses: torch.Tensor,
                                                         caplog) -> None:
    """A released checkpoint may carry a training loss's buffers, metric states or a discriminator: the official
    non-strict loader ignores them, so must we (in one logged note), while the tokenizer's own keys stay strict."""
    extra = {"loss.vertex_loss.smpl_faces": torch.zeros(10, 3, dtype=torch.long), "metric.mpjpe.total": torch.ones(()),
             "discriminator.fc.weight": torch.randn(4, 4), "perceptual.vgg.0.weight": torch.randn(2, 2),
             "encoder.aux_loss_weight": torch.ones(1)}
    path = _write_lightning(tmp_path / "extra.ckpt", {**model.state_dict(), **extra})
    with caplog.at_level(logging.INFO):
        loaded = load_pose_tokenizer(path)
    assert torch.equal(loaded.encode(poses), model.encode(poses))
    notes = [r.getMessage() for r in caplog.records if "training-only keys" in r.getMessage()]
    assert len(notes) == 1
    for key in ("discriminator.fc.weight", "metric.mpjpe.total", "perceptual.vgg.0.weight", "encoder.aux_loss_weight"):
        assert key in notes[0]
    # Still refused: a missing key, a mis-shaped key, an unknown key inside the tokenizer's own parts.
    for change, expected in (("missing", "1 missing keys: quantizer.codebook"),
                             ("shape", r"decoder.decoder.16.bias (checkpoint (5,)"),
                             ("inside", "1 unexpected keys: decoder.extra_head.weight")):
        state = {**model.state_dict(), **extra}
        if change == "missing":
            del state["quantizer.codebook"]
        elif change == "shape":
            state["decoder.decoder.16.bias"] = torch.zeros(5)
        else:
            state["decoder.extra_head.weight"] = torch.zeros(3)
        with pytest.raises(CheckpointError) as info:
            load_pose_tokenizer(_write_lightning(tmp_path / f"{change}.ckpt", state))
        assert expected in str(info.value) and f"{change}.ckpt" in str(info.value)


def test_the_kept_prefixes_are_the_tokenizer_modules() -> None:
    assert {k.split(".")[0] + "." for k in PoseTokenizer(TINY).state_dict()} == set(ckpt_mod.TOKENIZER_PREFIXES)
