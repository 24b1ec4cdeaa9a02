"""No pickle payload runs through any loader of user-supplied files.

Every loader path that reads a torch `.ckpt` / `.bin` (the pose tokenizer, each piece of the official release,
the `unipose pose tokenize --tokenizer` command) gets files whose unpickling would create a marker file, in the
zip format, the legacy format and as a bare pickle, with the payload as the whole file or hidden next to valid
weights. Each is refused with a CheckpointError naming the file, and the marker never appears. The data-pool
cache of training is never unpickled. Metadata objects that real Lightning checkpoints carry still load."""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import logging
import os
import pathlib
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint_formats import _write_release, config, tokenizer, truth  # noqa: F401 - fixtures

from unipose_sdk.checkpoint.official import OfficialPaths, load_official_state
from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer, random_tiny_tokenizer
from unipose_sdk.checkpoint.safe_pickle import Placeholder, load_torch_file
from unipose_sdk.cli import main as cli_main
from unipose_sdk.errors import CheckpointError
from unipose_sdk.training import pools


class SystemPayload:
    """Unpickles as os.system("touch MARKER")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


class OpenPayload:
    """Unpickles as builtins.open(MARKER, "w"), which creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.open, (self.marker, "w"))


PAYLOADS: dict[str, Callable[[Path], object]] = {"os.system": SystemPayload, "builtins.open": OpenPayload}
FORMATS = ("zip", "legacy", "bare-pickle")


def write_payload(path: Path, fmt: str, payload: object, weights: dict[str, torch.Tensor] | None) -> Path:
    """The payload alone (weights None) or hidden as Lightning-style hyper-parameters next to `weights`."""
    obj = payload if weights is None else {"state_dict": weights, "epoch": 1, "hyper_parameters": payload}
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_the_payloads_are_live(tmp_path: Path, kind: str) -> None:
    """Plain pickle.load of the same bytes does create the marker: the refusals below are not vacuous."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(PAYLOADS[kind](marker), protocol=2))
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ pose tokenizer


@pytest.mark.parametrize("hidden", [False, True], ids=["whole-file", "hidden-in-hparams"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_pose_tokenizer_refuses_payloads(tmp_path: Path, fmt: str, kind: str, hidden: bool) -> None:
    marker = tmp_path / "marker"
    weights = random_tiny_tokenizer(seed=1).state_dict() if hidden else None
    path = write_payload(tmp_path / "evil.ckpt", fmt, PAYLOADS[kind](marker), weights)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_zip_refusal_names_the_called_global(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_payload(tmp_path / "evil.ckpt", "zip", SystemPayload(marker),
                         random_tiny_tokenizer(seed=1).state_dict())
    with pytest.raises(CheckpointError, match=r"asks to call (posix|os|nt)\.system .*nothing from the file was run"):
        load_torch_file(path, "a checkpoint")
    assert not marker.exists()


def test_legacy_refusal_gives_the_conversion(tmp_path: Path) -> None:
    path = write_payload(tmp_path / "evil.bin", "legacy", OpenPayload(tmp_path / "m"), None)
    with pytest.raises(CheckpointError, match=r"legacy-format \(non-zip\).*re-save only its tensors in the zip"):
        load_torch_file(path, "a checkpoint")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------ official release


def _pytorch_model_bin(paths: OfficialPaths, fmt: str, payload: object, with_weights: bool) -> Path:
    """Swap the base's safetensors shards for one pytorch_model.bin holding the payload."""
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(paths.base.glob("model-*.safetensors")):
        weights.update(load_file(str(shard)))
        shard.unlink()
    (paths.base / "model.safetensors.index.json").unlink()
    return write_payload(paths.base / "pytorch_model.bin", fmt, payload, weights if with_weights else None)


def _sharded_bin(paths: OfficialPaths, fmt: str, payload: object, with_weights: bool) -> Path:
    """The base as pytorch_model-0000x.bin shards with an index; the second shard holds the payload."""
    import json

    from safetensors.torch import load_file

    weight_map, shards = {}, sorted(paths.base.glob("model-*.safetensors"))
    for i, shard in enumerate(shards):
        tensors = load_file(str(shard))
        name = f"pytorch_model-0000{i + 1}-of-0000{len(shards)}.bin"
        weight_map.update({k: name for k in tensors})
        if i == len(shards) - 1:
            target = write_payload(paths.base / name, fmt, payload, tensors if with_weights else None)
        else:
            torch.save(tensors, paths.base / name)
        shard.unlink()
    (paths.base / "model.safetensors.index.json").unlink()
    (paths.base / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return target


def _replace_torch_file(path: Path, fmt: str, payload: object, with_weights: bool) -> Path:
    data = torch.load(path, weights_only=True)
    return write_payload(path, fmt, payload, data.get("state_dict", data) if with_weights else None)


OFFICIAL_PIECES: dict[str, Callable[[OfficialPaths, str, object, bool], Path]] = {
    "--tokenhmr": lambda p, *a: _replace_torch_file(p.tokenhmr, *a),
    "--pose-vqvae": lambda p, *a: _replace_torch_file(p.pose_vqvae, *a),
    "non_lora_trainables.bin": lambda p, *a: _replace_torch_file(p.unipose / "non_lora_trainables.bin", *a),
    "adapter_model.bin": lambda p, *a: _replace_torch_file(p.unipose / "adapter_model.bin", *a),
    "pytorch_model.bin": _pytorch_model_bin,
    "pytorch_model shard": _sharded_bin,
}


@pytest.fixture(scope="module")
def release(tmp_path_factory, truth, tokenizer) -> OfficialPaths:  # noqa: F811 - fixtures from the import
    paths, _ = _write_release(tmp_path_factory.mktemp("release"), truth, tokenizer, adapter_format="bin")
    return paths


def _copy_release(release: OfficialPaths, root: Path) -> OfficialPaths:
    source_root = release.base.parent
    shutil.copytree(source_root, root / "release")
    return OfficialPaths(**{k: None if v is None else root / "release" / v.relative_to(source_root)
                            for k, v in vars(release).items()})


def test_the_synthesised_release_loads(tmp_path: Path, release: OfficialPaths, truth) -> None:  # noqa: F811
    """The unmodified copy loads, so each refusal below comes from the payload alone."""
    state, _ = load_official_state(_copy_release(release, tmp_path), truth.config)
    assert set(state) == set(truth.state_dict())


@pytest.mark.parametrize(("fmt", "kind", "hidden"), [
    ("zip", "os.system", True), ("zip", "builtins.open", False), ("legacy", "builtins.open", True),
    ("legacy", "os.system", False), ("bare-pickle", "os.system", False)])
@pytest.mark.parametrize("piece", sorted(OFFICIAL_PIECES))
def test_official_release_refuses_payloads(tmp_path: Path, release: OfficialPaths, truth, piece: str,  # noqa: F811
                                           fmt: str, kind: str, hidden: bool) -> None:
    paths = _copy_release(release, tmp_path)
    marker = tmp_path / "marker"
    evil = OFFICIAL_PIECES[piece](paths, fmt, PAYLOADS[kind](marker), hidden)
    with pytest.raises(CheckpointError) as info:
        load_official_state(paths, truth.config)
    assert str(evil) in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_pose_tokenize_refuses_payload(tmp_path: Path, monkeypatch, capsys, fmt: str) -> None:
    from unipose_sdk.body.examples import example_pose_path

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    write_payload(tmp_path / "EVIL.ckpt", fmt, SystemPayload(marker), random_tiny_tokenizer(seed=2).state_dict())
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli_main(["pose", "tokenize", str(example_pose_path()), "-o", "t.json", "--tokenizer", "EVIL.ckpt"])
    assert code == 2
    assert "EVIL.ckpt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no marker, no tokens file


# ------------------------------------------------------------------------------------------------ what still loads


class AttributeDict(dict):
    """Like Lightning's AttributeDict: a dict subclass pickled with NEWOBJ + SETITEMS."""


@dataclasses.dataclass
class TrainConfig:
    lr: float = 2e-4
    milestones: tuple = (10, 20)


def _metadata() -> dict[str, object]:
    return {
        "hyper_parameters": AttributeDict(cfg=TrainConfig(), name="vqvae", dims=[1, 2]),
        "namespace": argparse.Namespace(batch_size=256, data=pathlib.PurePosixPath("/data/amass")),
        "numpy_score": np.float64(32.5), "numpy_array": np.arange(3), "bytes": b"\x00\x01",
        "callbacks": {"ModelCheckpoint{'monitor': 'MPJPE'}": {"best_model_score": torch.tensor(31.2)}},
    }


def test_lightning_metadata_loads_as_inert_placeholders(tmp_path: Path, caplog) -> None:
    model = random_tiny_tokenizer(seed=4)
    path = tmp_path / "best_MPJPE.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 7, **_metadata()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the weights-only reader refuses these objects ...
    with caplog.at_level(logging.INFO, logger="unipose_sdk"):
        data = load_torch_file(path, "a checkpoint")  # ... ours keeps them as placeholders
    assert isinstance(data["hyper_parameters"], Placeholder) and isinstance(data["namespace"], Placeholder)
    assert isinstance(data["numpy_score"], Placeholder)
    assert data["bytes"] == b"\x00\x01" and data["epoch"] == 7
    assert float(data["callbacks"]["ModelCheckpoint{'monitor': 'MPJPE'}"]["best_model_score"]) == pytest.approx(31.2)
    assert "inert placeholders" in caplog.text and "AttributeDict" in caplog.text
    for key, tensor in model.state_dict().items():
        assert torch.equal(data["state_dict"][key], tensor), key
    with pytest.raises(TypeError):  # a placeholder instance cannot be called
        data["hyper_parameters"]()
    encoded = load_pose_tokenizer(path).encode(torch.zeros(1, 22, 6))
    assert torch.equal(encoded, model.encode(torch.zeros(1, 22, 6)))


def test_shared_storages_and_views_are_rebuilt(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32)
    path = tmp_path / "views.ckpt"
    torch.save({"a": base, "b": base[4:10].view(2, 3), "c": base.view(4, 6).t(), "half": base.half(),
                "meta": TrainConfig()}, path)
    data = load_torch_file(path, "a checkpoint")
    assert torch.equal(data["b"], base[4:10].view(2, 3)) and torch.equal(data["c"], base.view(4, 6).t())
    assert data["half"].dtype == torch.float16 and torch.equal(data["half"].float(), base)


def test_a_truncated_archive_with_metadata_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "meta": TrainConfig()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_torch_file(path, "a checkpoint")


# ------------------------------------------------------------------------------------------------ the unpickler itself


class Calls:
    """Pickles as a call of `func(*args)` (what every code-running payload is)."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.func, self.args)


def _calls(marker: Path) -> dict[str, object]:
    import functools
    import subprocess

    return {
        "eval": Calls(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "exec": Calls(builtins.exec, f"open({str(marker)!r}, 'w')"),
        "getattr": Calls(builtins.getattr, Calls(builtins.__import__, "os"), "system"),
        "__import__": Calls(builtins.__import__, "os"),
        "subprocess.Popen": Calls(subprocess.Popen, ["touch", str(marker)]),
        "torch.load": Calls(torch.load, str(marker)),
        "functools.partial": Calls(functools.partial, os.system, f"touch '{marker}'"),
        "pathlib.Path.touch": Calls(pathlib.Path.touch, pathlib.Path(marker)),
        "bytearray": Calls(bytearray, 10**12),  # a size, not data: refused, nothing is allocated
    }


@pytest.mark.parametrize("name", sorted(_calls(Path("x"))))
def test_calls_outside_tensor_rebuild_are_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": TrainConfig(), "x": _calls(marker)[name]}, path)
    with pytest.raises(CheckpointError, match="asks to call") as info:
        load_torch_file(path, "a checkpoint")
    assert str(path) in str(info.value)
    assert not marker.exists()


# A protocol-0 pickle of torch.ones(4) as torch.save writes it: _rebuild_tensor_v2(storage, offset 0, size (4,),
# stride (1,), requires_grad False, hooks OrderedDict()), the storage as persistent id ('storage', FloatStorage,
# key '0', 'cpu', 4 elements).
TENSOR = (b"ctorch._utils\n_rebuild_tensor_v2\n((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI4\ntQI0\n"
          b"(I4\nt(I1\ntI00\nccollections\nOrderedDict\n)RtR")


def test_hand_made_tensor_pickle_loads(tmp_path: Path) -> None:
    """The pickle the refusals below start from is a correct one: with placeholder metadata it loads."""
    path = tmp_path / "ok.ckpt"
    torch.save({"w": torch.ones(4)}, path)
    _with_data_pkl(path, b"(dS'w'\n" + TENSOR + b"sS'meta'\ncmy.module\nConfig\n)\x81s.")
    data = load_torch_file(path, "a checkpoint")
    assert torch.equal(data["w"], torch.ones(4)) and isinstance(data["meta"], Placeholder)


def _with_data_pkl(path: Path, data_pkl: bytes) -> Path:
    """Replace the pickle of a torch zip archive, keeping its storage records."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data_pkl if name.endswith("/data.pkl") else data)
    return path


@pytest.mark.parametrize(("data_pkl", "expected"), [
    (b"cos\nsystem\n(S'touch MARKER'\ntR.", "asks to call os.system"),  # protocol 0 GLOBAL + REDUCE
    (b"(S'touch MARKER'\nios\nsystem\n.", "asks to call os.system"),  # protocol 0 INST
    (b"cbuiltins\nopen\n(S'MARKER'\nS'w'\ntR.", "asks to call builtins.open"),
    (b"ctorch\nload\n(S'MARKER'\ntR.", "asks to call torch.load"),
    (TENSOR.replace(b"I4\n", b"I99\n") + b".", "holds 16 bytes, not 99 x 4"),
    (TENSOR.replace(b"(I4\nt(I1", b"(I2\nt(I4") + b".", "reaches element 4 of a storage of 4"),
    (TENSOR + b"(I01\nNccollections\nOrderedDict\n)Rtb.", "modifies tensors after rebuilding them"),
    (b"ctorch\nFloatStorage\n(I1\ntR.", "cannot be read"),  # a storage type called like a function
], ids=["reduce", "inst", "open", "torch.load", "storage-size-lie", "view-out-of-bounds", "tensor-setstate",
        "call-storage-kind"])
def test_hand_made_archives(tmp_path: Path, data_pkl: bytes, expected: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(4)}, path)
    _with_data_pkl(path, data_pkl.replace(b"MARKER", str(marker).encode()))
    with pytest.raises(CheckpointError, match=expected):
        load_torch_file(path, "a checkpoint")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ training pools


def test_pool_cache_is_never_unpickled(tmp_path: Path, caplog) -> None:
    marker = tmp_path / "marker"
    sizes = pools.PoolSizes(poses=6, pairs=2, pose_images=2, pair_images=1, texts_per_pair=1)
    (tmp_path / "pool-seed5.pkl").write_bytes(pickle.dumps({"version": pools.POOL_VERSION,
                                                            "pool": SystemPayload(marker)}, protocol=2))
    pose_tokenizer = random_tiny_tokenizer(seed=0)
    with caplog.at_level(logging.WARNING, logger="unipose_sdk.training"):
        pool = pools.load_or_build_pool(tmp_path, 5, sizes, pose_tokenizer)
    assert not marker.exists()
    assert "pool-seed5.pkl" in caplog.text and pool.num_poses == 6
    cache = pools.cache_path(tmp_path, 5)
    with np.load(cache, allow_pickle=False) as data:  # plain arrays only
        assert data["axis_angle"].shape == (6, 66)
    again = pools.load_or_build_pool(tmp_path, 5, sizes, pose_tokenizer)
    assert np.array_equal(again.images, pool.images) and np.array_equal(again.codes, pool.codes)
    assert [[f.key for f in fs] for fs in again.facts] == [[f.key for f in fs] for fs in pool.facts]
    assert [[t for t, _ in ts] for ts in again.pair_texts] == [[t for t, _ in ts] for ts in pool.pair_texts]


@pytest.mark.parametrize("damage", ["truncated", "not-a-zip", "other-sizes", "other-archetypes", "other-mix"])
def test_damaged_pool_cache_is_rebuilt(tmp_path: Path, damage: str, caplog) -> None:
    sizes = pools.PoolSizes(poses=4, pairs=2, pose_images=1, pair_images=1, texts_per_pair=1)
    pose_tokenizer = random_tiny_tokenizer(seed=0)
    first = pools.load_or_build_pool(tmp_path, 2, sizes, pose_tokenizer)
    cache = pools.cache_path(tmp_path, 2)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:200])
    elif damage == "not-a-zip":
        cache.write_bytes(b"garbage")
    archetypes = ("standing", "handstand") if damage == "other-archetypes" else pools.ARCHETYPE_NAMES
    mix = {"archetype": 0.5, "compose": 0.5} if damage == "other-mix" else None
    with caplog.at_level(logging.INFO, logger="unipose_sdk.training"):
        other = sizes if damage != "other-sizes" else dataclasses.replace(sizes, poses=5)
        pool = pools.load_or_build_pool(tmp_path, 2, other, pose_tokenizer, archetypes, mix)
    assert pool.archetypes == tuple(archetypes) and pool.mix == (mix or first.mix)
    assert "rebuilding" in caplog.text and str(cache) in caplog.text
    assert pool.num_poses == other.poses
    if other == sizes and damage not in ("other-archetypes", "other-mix"):
        assert np.array_equal(pool.axis_angle, first.axis_angle)
