"""Outputs are all or nothing: a result's files appear together or not at all, whatever fails and wherever.

Existing results are replaced only with overwrite=True (and then completely: no file of the old result survives
beside the new one); concurrent writers into one directory cannot mix files; every JSON records its input;
permissions follow the umask; no temporary file or staging directory is ever left behind.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SHORT

from unipose_sdk import fileio
from unipose_sdk import results as results_module
from unipose_sdk.body.examples import example_pose_path
from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import InvalidInputError, OutputExistsError, UniPoseFileNotFoundError
from unipose_sdk.fileio import OutputSet, check_output_directory, check_output_file, open_regular_file
from unipose_sdk.results import RESULT_SUFFIXES, save_results
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

TEXTS = ["a person squatting", "a person kneeling on one knee", "a person with both arms raised",
         "a person bending forward", "a person standing on the left leg", "a person sitting cross-legged",
         "a person lunging forward", "a person stretching to the right"]


@pytest.fixture(scope="module")
def generated(generator: Generator) -> list:
    return generator.generate(TEXTS)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _no_temporaries(root: Path) -> None:
    leftovers = [name for name in _listing(root) if name.endswith(".tmp") or ".unipose-" in name
                 or "/." in f"/{name}"]
    assert leftovers == [], leftovers


def _set_of(directory: Path, stem: str) -> list[str]:
    return sorted(p.name for p in directory.glob(f"{stem}.*"))


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


# ---------------------------------------------------------------------------------------------- complete sets


@pytest.mark.parametrize("task", ["generate", "edit", "estimate", "describe_pose", "describe_image"])
def test_each_result_is_a_complete_set_recording_its_input(task, tmp_path) -> None:
    pose_path = str(example_pose_path("squatting"))
    image = tmp_path / "person.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 48, 3)) * 255).astype(np.uint8)).save(image)
    if task == "generate":
        result, expect = Generator.from_pretrained(**SHORT).generate("a person squatting"), {
            "task": "generate", "prompt": "a person squatting"}
    elif task == "edit":
        result, expect = Editor.from_pretrained(**SHORT).edit(pose_path, "raise your left arm"), {
            "task": "edit", "pose": pose_path, "instruction": "raise your left arm"}
    elif task == "estimate":
        result, expect = Estimator.from_pretrained(**SHORT).estimate(str(image), bbox=(1, 2, 40, 60)), {
            "task": "estimate", "image": str(image), "bbox": [1.0, 2.0, 40.0, 60.0]}
    elif task == "describe_pose":
        result, expect = Describer.from_pretrained(**SHORT).describe(pose=pose_path), {
            "task": "describe_pose", "pose": pose_path}
    else:
        result, expect = Describer.from_pretrained(**SHORT).describe(image=np.zeros((8, 8, 3), np.uint8)), {
            "task": "describe_image", "image": "<numpy.ndarray of shape [8, 8, 3]>"}
    out = tmp_path / "out"
    written = result.save(out, stem="r")
    names = [p.name for p in written]
    has_pose = task not in ("describe_pose", "describe_image")
    assert names == (["r.npz", "r.npy", "r.png", "r.json"] if has_pose else ["r.json"])
    assert _set_of(out, "r") == sorted(names)
    assert json.loads((out / "r.json").read_text())["input"] == expect
    _no_temporaries(out)


def test_several_results_save_as_one_set(generated, tmp_path) -> None:
    stems = ["g0", "g1", "g2"]
    paths = save_results(generated[:3], tmp_path / "out", stems)
    assert len(paths) == 3 and all(len(p) == 4 for p in paths)
    for result, stem in zip(generated, stems):
        assert json.loads((tmp_path / "out" / f"{stem}.json").read_text())["input"]["prompt"] == result.prompt
        assert Pose.load(tmp_path / "out" / f"{stem}.npz").allclose(result.pose, atol=1e-5)


# ---------------------------------------------------------------------------------------------- no replacement


def test_existing_results_are_not_replaced_without_overwrite(generated, tmp_path) -> None:
    out = tmp_path / "out"
    generated[0].save(out, stem="r")
    before = {name: (out / name).read_bytes() for name in _set_of(out, "r")}
    with pytest.raises(OutputExistsError, match="overwrite=True") as info:
        generated[1].save(out, stem="r")
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, InvalidInputError)
    assert {name: (out / name).read_bytes() for name in _set_of(out, "r")} == before
    _no_temporaries(out)


def test_one_existing_file_of_a_set_blocks_the_set(generated, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.png").write_bytes(b"someone else's picture")
    with pytest.raises(OutputExistsError, match="r.png"):
        generated[0].save(out, stem="r")
    assert _listing(out) == ["r.png"] and (out / "r.png").read_bytes() == b"someone else's picture"


def test_overwrite_replaces_the_whole_set(generated, describer, tmp_path) -> None:
    out = tmp_path / "out"
    generated[0].save(out, stem="r")
    generated[1].save(out, stem="r", overwrite=True)
    assert json.loads((out / "r.json").read_text())["input"]["prompt"] == TEXTS[1]
    assert Pose.load(out / "r.npz").allclose(generated[1].pose, atol=1e-5)
    # A text result saved over a pose result removes the pose files: no stale .npz beside the new JSON.
    describer.describe(pose=generated[1].pose).save(out, stem="r", overwrite=True)
    assert _set_of(out, "r") == ["r.json"]
    _no_temporaries(out)


def test_a_directory_in_the_way_is_refused(generated, tmp_path) -> None:
    (tmp_path / "r.json").mkdir()
    with pytest.raises(InvalidInputError, match="directory"):
        generated[0].save(tmp_path, stem="r", overwrite=True)
    assert _listing(tmp_path) == ["r.json"]


# ---------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt(), RuntimeError("renderer broke")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_while_writing_leaves_nothing_new(failure, existing, generated, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    if existing:
        generated[0].save(out, stem="r")
    before = {name: (out / name).read_bytes() for name in _set_of(out, "r")} if existing else None

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise failure

    import unipose_sdk.body.render as render

    monkeypatch.setattr(render, "render_poses_png", broken)
    with pytest.raises(type(failure)):
        generated[1].save(out, stem="r", overwrite=True)
    if existing:
        assert {name: (out / name).read_bytes() for name in _set_of(out, "r")} == before
        _no_temporaries(out)
    else:
        assert not out.exists()  # the directory the save created is removed again


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_failure_inside_the_commit_rolls_back(fail_at, generated, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    generated[0].save(out, stem="r")
    before = {name: (out / name).read_bytes() for name in _set_of(out, "r")}
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src, dst):  # type: ignore[no-untyped-def]
        if ".unipose-" in str(src) + str(dst):  # only the commit's renames, not the rollback's
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        generated[1].save(out, stem="r", overwrite=True)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert {name: (out / name).read_bytes() for name in _set_of(out, "r")} == before
    _no_temporaries(out)


def test_a_result_that_cannot_be_serialised_writes_nothing(generated, tmp_path, monkeypatch) -> None:
    broken = generated[1]
    monkeypatch.setattr(type(broken), "to_dict", lambda self: {"bad": object()})
    with pytest.raises(TypeError):
        save_results([generated[0], broken], tmp_path / "out", ["a", "b"])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- concurrency


def test_concurrent_overwriting_writers_never_mix_a_set(generated, tmp_path) -> None:
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(2):
                generated[i].save(out, stem="shared", overwrite=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    winner = json.loads((out / "shared.json").read_text())["input"]["prompt"]
    result = generated[TEXTS.index(winner)]
    # Every file of the set comes from the same run as the JSON.
    assert Pose.load(out / "shared.npz").allclose(result.pose, atol=1e-5)
    assert Pose.load(out / "shared.npy").allclose(result.pose, atol=1e-5)
    assert json.loads((out / "shared.json").read_text())["pose_codes"] == result.pose_codes
    _no_temporaries(out)


def test_concurrent_writers_without_overwrite_exactly_one_wins(generated, tmp_path) -> None:
    out = tmp_path / "out"
    outcomes: list[str] = []
    writers = 4
    barrier = threading.Barrier(writers)

    def write(i: int) -> None:
        barrier.wait()
        try:
            generated[i].save(out, stem="only")
            outcomes.append("saved")
        except OutputExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * (writers - 1) + ["saved"]
    winner = json.loads((out / "only.json").read_text())["input"]["prompt"]
    assert Pose.load(out / "only.npz").allclose(generated[TEXTS.index(winner)].pose, atol=1e-5)
    _no_temporaries(out)


def test_dead_runs_staging_directories_are_swept(generated, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    host = fileio._HOST_TAG
    dead = out / f".unipose-{host}-{2 ** 22 + 12345}-0123abcd.tmp"  # beyond pid_max: no such process
    alive = out / f".unipose-{host}-{os.getppid()}-0123abcd.tmp"
    other_host = out / f".unipose-{'0' * 8 if host != '0' * 8 else '1' * 8}-{2 ** 22 + 1}-0123abcd.tmp"
    for d in (dead, alive, other_host):
        d.mkdir()
        (d / "r.npz").write_bytes(b"partial")
    generated[0].save(out, stem="r")
    assert not dead.exists() and alive.exists() and other_host.exists()
    assert socket.gethostname()  # the tag is derived from it


# ---------------------------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_permissions_follow_the_umask(mask, generated, tmp_path, umask) -> None:
    os.umask(mask)
    out = tmp_path / "fresh" / "out"
    generated[0].save(out, stem="r")
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    Pose.identity().save(tmp_path / "single.npz")
    assert stat.S_IMODE((tmp_path / "single.npz").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_sdk_format_saves_follow_the_umask(mask, tmp_path, umask) -> None:
    """The model directory is written under a temporary name and renamed into place: its own mode and its files'
    are the umask's (0755 / 0644 under 022), as for any directory the user creates, also when replacing one."""
    import unipose_sdk
    from unipose_sdk.checkpoint.sdk_format import load_model, save_model

    loaded = load_model(Path(unipose_sdk.__file__).parent / "assets" / "unipose-tiny")
    os.umask(mask)
    out = tmp_path / "models" / "tiny"
    for overwrite in (False, True):
        save_model(loaded.model, out, loaded.tokenizer, overwrite=overwrite)
        assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
        files = sorted(p for p in out.rglob("*") if p.is_file())
        assert {p.name for p in files} >= {"config.json", "model.safetensors", "tokenizer.json"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
        assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no temporary or set-aside directory


def test_a_replaced_single_file_keeps_its_mode(tmp_path) -> None:
    target = tmp_path / "p.npz"
    Pose.identity().save(target)
    os.chmod(target, 0o640)
    Pose.identity(2).save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and len(Pose.load(target)) == 2


# ---------------------------------------------------------------------------------------------- output checks


def test_output_directory_checks(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="which is a file"):
        check_output_directory(tmp_path / "file")
    with pytest.raises(InvalidInputError, match="inside"):
        check_output_directory(tmp_path / "file" / "sub")
    with pytest.raises(InvalidInputError, match="not writable"):
        check_output_directory("/proc/unipose-output")
    assert check_output_directory(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    _no_temporaries(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_directory(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(InvalidInputError, match="not writable"):
        check_output_directory(locked / "out")


def test_output_file_checks(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="FIFO"):
        check_output_file(tmp_path / "pipe.json", overwrite=True)
    with pytest.raises(InvalidInputError, match="broken symbolic link"):
        check_output_file(tmp_path / "dangling.json", overwrite=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output_file(tmp_path / "old.json")
    assert check_output_file(tmp_path / "old.json", overwrite=True) == tmp_path / "old.json"
    with pytest.raises(UniPoseFileNotFoundError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "x.json")
    with pytest.raises(InvalidInputError, match="is a directory"):
        check_output_file(tmp_path)


def test_output_set_refuses_unclaimed_and_duplicate_names(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="distinct"):
        OutputSet(tmp_path, ["a.json", "a.json"])
    with pytest.raises(InvalidInputError, match="file name"):
        OutputSet(tmp_path, ["../a.json"])
    with OutputSet(tmp_path / "o", ["a.json"]) as out:
        with pytest.raises(InvalidInputError, match="claimed"):
            out.path("b.json")
        out.path("a.json").write_text("{}")
    assert _listing(tmp_path / "o") == ["a.json"]


def test_open_regular_file_never_blocks(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InvalidInputError, match="FIFO"):
        open_regular_file(tmp_path / "pipe", "input")
    (tmp_path / "real").write_bytes(b"data")
    with open_regular_file(tmp_path / "real", "input") as handle:
        assert handle.read() == b"data"
    with pytest.raises(InvalidInputError, match="cannot be examined"):
        open_regular_file(str(tmp_path / "nul\x00byte"), "input")


def test_result_suffixes_are_what_save_writes(generated, tmp_path) -> None:
    assert tuple(p.suffix for p in generated[0].save(tmp_path, stem="s")) == RESULT_SUFFIXES
    assert results_module.describe_input(Path("a/b.png")) == "a/b.png"
