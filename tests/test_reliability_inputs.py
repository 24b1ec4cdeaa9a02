"""Adversarial inputs to the SDK: every case gives a typed error naming the value, checked before any work.

Special files (FIFOs, devices, directories) must not hang; texts must encode; pose values must be finite and in
range; pose files must be well-formed (JSON depth and field types, damaged npz members); options must have the
right names and types; `num_threads` stays with the task object; a result's stem cannot leave its directory.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHORT

from unipose_sdk.body.examples import example_pose_path, load_example_pose
from unipose_sdk.body.io import MAX_JSON_DEPTH, load_pose, read_pose_file
from unipose_sdk.body.pose import MAX_AXIS_ANGLE_RAD, Pose
from unipose_sdk.errors import (
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPoseError,
    InvalidTextError,
    PoseFormatError,
    UniPoseError,
    UniPoseFileNotFoundError,
)
from unipose_sdk.options import EstimatorOptions, GeneratorOptions
from unipose_sdk.tasks import Describer, Estimator, Generator
from unipose_sdk.tasks import generator as generator_module


def _special(kind: str, tmp_path: Path, suffix: str) -> str:
    if kind == "fifo":
        path = tmp_path / f"pipe{suffix}"
        os.mkfifo(path)
        return str(path)
    if kind == "device":
        return "/dev/null"
    if kind == "zero-device":
        return "/dev/zero"
    path = tmp_path / f"folder{suffix}"
    path.mkdir()
    return str(path)


KINDS = {"fifo": "FIFO", "device": "character device", "zero-device": "character device", "directory": "directory"}

# ---------------------------------------------------------------------------------------------- special files


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("call", ["Pose.load", "read_pose_file", "edit", "describe_pose", "describe_poses"])
def test_special_pose_files_are_refused_without_blocking(kind, call, tmp_path, no_hang, editor, describer) -> None:
    path = _special(kind, tmp_path, ".npz")
    runs = {
        "Pose.load": lambda: Pose.load(path),
        "read_pose_file": lambda: read_pose_file(path),
        "edit": lambda: editor.edit(path, "raise your left arm"),
        "describe_pose": lambda: describer.describe(pose=path),
        "describe_poses": lambda: describer.describe(poses=(str(example_pose_path()), path)),
    }
    with pytest.raises(PoseFormatError) as info:
        runs[call]()
    assert KINDS[kind] in str(info.value) and path in str(info.value) and "regular file" in str(info.value)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("call", ["estimate", "estimate_batch", "describe_image", "describe_images"])
def test_special_image_files_are_refused_without_blocking(kind, call, tmp_path, no_hang, estimator,
                                                           describer) -> None:
    path = _special(kind, tmp_path, ".png")
    image = np.zeros((16, 16, 3), np.uint8)
    runs = {
        "estimate": lambda: estimator.estimate(path),
        "estimate_batch": lambda: estimator.estimate([image, path]),
        "describe_image": lambda: describer.describe(image=path),
        "describe_images": lambda: describer.describe(images=(image, path)),
    }
    with pytest.raises(InvalidImageError) as info:
        runs[call]()
    assert KINDS[kind] in str(info.value) and path in str(info.value)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_image_loader_refuses_special_files_itself(kind, tmp_path, no_hang) -> None:
    """load_image, below the tasks' checks: the same refusal, without blocking."""
    from unipose_sdk.preprocess.views import load_image

    path = _special(kind, tmp_path, ".png")
    with pytest.raises(InvalidImageError) as info:
        load_image(path)
    assert KINDS[kind] in str(info.value) and path in str(info.value)


def test_an_image_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path, no_hang, monkeypatch) -> None:
    """The file is opened without blocking and examined again once open: a FIFO put in place between the check
    and the open (simulated by a check that lets everything through) is refused, not read."""
    from unipose_sdk import fileio
    from unipose_sdk.preprocess.views import load_image

    path = tmp_path / "swapped.png"
    os.mkfifo(path)
    monkeypatch.setattr(fileio, "check_regular_file", lambda p, *args, **kwargs: Path(p))
    with pytest.raises(InvalidImageError, match="became a FIFO"):
        load_image(path)


def test_the_shipped_example_image_works_from_the_package(estimator) -> None:
    """The README's estimation example runs outside a checkout: the image comes from the installed package, as a
    path or decoded, and both give the same pose."""
    import unipose_sdk

    path = unipose_sdk.example_image_path("person")
    assert path.is_file() and path.parent.parent == Path(unipose_sdk.__file__).parent / "assets"
    image = unipose_sdk.load_example_image()
    assert image.mode == "RGB" and image.size[0] > 0
    assert estimator.estimate(path).pose_codes == estimator.estimate(image).pose_codes
    with pytest.raises(InvalidInputError, match="Did you mean 'person'"):
        unipose_sdk.example_image_path("persn")


@pytest.mark.parametrize("call", ["pose", "image"])
def test_missing_files_are_file_not_found(call, tmp_path, editor, estimator) -> None:
    missing = str(tmp_path / "nowhere" / "x.png")
    with pytest.raises(UniPoseFileNotFoundError, match="does not exist") as info:
        editor.edit(missing, "raise your arm") if call == "pose" else estimator.estimate(missing)
    assert isinstance(info.value, FileNotFoundError) and "nowhere" in str(info.value)


# ---------------------------------------------------------------------------------------------- texts

SURROGATES = ["\ud800", "a person \udcff squatting", "raise \udfff", "\ud83d alone"]


@pytest.mark.parametrize("text", SURROGATES)
def test_lone_surrogates_in_prompts_are_typed(text, generator, editor) -> None:
    with pytest.raises(InvalidTextError, match="UTF-8") as info:
        generator.generate(text)
    assert "surrogate" in str(info.value) and "index" in str(info.value)
    with pytest.raises(InvalidTextError, match="UTF-8"):
        editor.edit(load_example_pose(), text)
    with pytest.raises(InvalidTextError, match="UTF-8"):
        generator.generate(["a person standing", text])  # one bad item in a batch refuses the batch


@pytest.mark.parametrize("text", SURROGATES)
def test_tokenizer_refuses_lone_surrogates_with_a_typed_error(text, generator) -> None:
    with pytest.raises(InvalidTextError, match="surrogate"):
        generator.session.tokenizer.encode(text)


@pytest.mark.parametrize("value", [5, None, b"a person", ["a", 3], 2.5])
def test_non_text_prompts(value, generator) -> None:
    with pytest.raises(InvalidTextError, match="expected a string"):
        generator.generate(value if not isinstance(value, list) else value)


def test_unusual_but_valid_text_still_runs(generator) -> None:
    for text in ["a person \u00e9tir\u00e9 \U0001f600", "x\x00y", "</s> <pose_id_3> [INST]"]:
        assert len(generator.generate(text).pose_codes) == 80


# ---------------------------------------------------------------------------------------------- pose values


@pytest.mark.parametrize("value", [1e200, -1e200, 1e30, 1e8, -2e4, float(MAX_AXIS_ANGLE_RAD) * 1.01])
def test_out_of_range_axis_angle_is_refused_never_nan(value, editor) -> None:
    aa = np.zeros((1, 66))
    aa[0, 7] = value
    for make in (Pose.from_axis_angle, Pose.from_any, lambda x: Pose.from_smpl(x[:, :3], x[:, 3:])):
        with pytest.raises(InvalidPoseError, match="rad") as info:
            make(aa)
        assert f"at most {MAX_AXIS_ANGLE_RAD:g} rad" in str(info.value) and "pose 0" in str(info.value)
    with pytest.raises(InvalidPoseError, match="at most"):
        editor.edit(aa, "raise your arm")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pose_values(bad, describer) -> None:
    for shape in ((1, 66), (1, 22, 6), (1, 22, 3, 3)):
        x = np.ones(shape) if len(shape) < 4 else np.tile(np.eye(3), (1, 22, 1, 1))
        x.reshape(-1)[5] = bad
        with pytest.raises(InvalidPoseError, match="NaN or infinite"):
            Pose.from_any(x)
    with pytest.raises(InvalidPoseError, match="NaN or infinite"):
        describer.describe(pose=np.full((1, 66), bad))


def test_large_angles_inside_the_limit_and_huge_6d_values_give_finite_rotations() -> None:
    aa = np.zeros((1, 66))
    aa[0, 3] = 0.9 * MAX_AXIS_ANGLE_RAD
    assert torch.isfinite(Pose.from_axis_angle(aa).rotmat).all()
    for scale in (1e-200, 1e-3, 1e150, 1e300):
        sixd = np.tile(np.array([1.0, 0.2, 0.0, 0.1, 1.0, 0.3]) * scale, (1, 22, 1))
        pose = Pose.from_6d(sixd)
        assert torch.isfinite(pose.rotmat).all()
        assert pose.allclose(Pose.from_6d(sixd / scale), atol=1e-6)  # the scale of a 6D input does not matter


@pytest.mark.parametrize("value", [1e3, 1e200])
@pytest.mark.parametrize("pattern", ["diagonal", "mixed"])
def test_huge_rotation_matrices_are_not_rotations(value, pattern) -> None:
    unit = np.eye(3) if pattern == "diagonal" else np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    mats = np.tile(unit, (1, 22, 1, 1)) * value  # "mixed" at 1e200 makes inf - inf = NaN inside the check
    with pytest.raises(InvalidPoseError, match="not all rotations"):
        Pose.from_rotmat(mats)


# ---------------------------------------------------------------------------------------------- pose files

def _pose_doc(**changes: object) -> dict:
    doc = {"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle",
           "poses": [[[0.1, 0.0, 0.0]] * 22]}
    doc.update(changes)
    return doc


JSON_CASES = [
    ({"version": True}, PoseFormatError, "version True"),
    ({"version": 1.0}, PoseFormatError, "version 1.0"),
    ({"version": None}, PoseFormatError, "version None"),
    ({"rotation_format": ["axis_angle"]}, PoseFormatError, "rotation_format ['axis_angle']"),
    ({"rotation_format": 3}, PoseFormatError, "rotation_format 3"),
    ({"joint_names": 7}, PoseFormatError, "joint_names 7"),
    ({"joint_names": "pelvis"}, PoseFormatError, "joint_names pelvis"),
    ({"joint_names": {"a": 1}}, PoseFormatError, "joint_names"),
    ({"poses": [[[True, False, True]] * 22]}, PoseFormatError, "not a rectangular array of numbers"),
    ({"poses": [[["0.1", "0", "0"]] * 22]}, PoseFormatError, "not a rectangular array of numbers"),
    ({"poses": [[[None, 0, 0]] * 22]}, PoseFormatError, "not a rectangular array of numbers"),
    ({"poses": [[[{"x": 1}, 0, 0]] * 22]}, PoseFormatError, "not a rectangular array of numbers"),
    ({"poses": "zeros"}, PoseFormatError, "not a rectangular array of numbers"),
    ({"poses": [[[0.1, 0.0]] * 22]}, PoseFormatError, "shape [1, 22, 2]"),
    ({"poses": [[[1e200, 0.0, 0.0]] * 22]}, InvalidPoseError, "rad"),
    ({"poses": [[[10 ** 400, 0, 0]] * 22]}, InvalidPoseError, "beyond float64"),
    ({"transl_m": [["1", 2, 3]]}, PoseFormatError, '"transl_m" is not an array of numbers'),
    ({"transl_m": [[True, 2, 3]]}, PoseFormatError, '"transl_m" is not an array of numbers'),
    ({"transl_m": [[1e300, 0, 0]]}, InvalidPoseError, "float32"),
    ({"betas": {"a": 1}}, PoseFormatError, '"betas" is not an array of numbers'),
    ({"betas": [[[[[1.0]]]]]}, PoseFormatError, "'betas' has shape"),
]


@pytest.mark.parametrize("changes, error, fragment", JSON_CASES)
def test_json_pose_field_types(changes, error, fragment, tmp_path) -> None:
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(_pose_doc(**changes)))
    with pytest.raises(error) as info:
        load_pose(path)
    assert fragment in str(info.value) and "pose.json" in str(info.value)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 50, 1000, 200_000])
def test_deeply_nested_json_is_refused_before_parsing(depth, tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"format": "unipose-pose", "poses": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(PoseFormatError, match=f"nested {depth + 1} levels deep") as info:
        load_pose(path)
    assert f"at most {MAX_JSON_DEPTH} levels" in str(info.value)


def test_brackets_inside_strings_do_not_count_as_depth(tmp_path) -> None:
    doc = _pose_doc(note="[[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{ \\\" [[[[[[")
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert len(load_pose(tmp_path / "p.json")) == 1


@pytest.mark.parametrize("content, fragment", [
    (b'{"format": "\xff\xfe not utf8"}', "not valid JSON"),
    (b"{\"format\": \"unipose-pose\", \"poses\": [NaN", "not valid JSON"),
    (b"[" + b"1," * 10 + b"1", "not valid JSON"),
])
def test_broken_json_pose_files(content, fragment, tmp_path) -> None:
    (tmp_path / "b.json").write_bytes(content)
    with pytest.raises(PoseFormatError, match=fragment):
        load_pose(tmp_path / "b.json")


def _saved_npz(tmp_path: Path) -> bytes:
    Pose.from_axis_angle(np.full((2, 66), 0.1)).save(tmp_path / "good.npz")
    return (tmp_path / "good.npz").read_bytes()


def _damage(data: bytes, how: str) -> bytes:
    raw = bytearray(data)
    if how == "member-bytes":
        start = raw.find(b"body_pose.npy") + 80  # inside the member's data: its CRC no longer matches
        raw[start:start + 24] = b"\x55" * 24
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "npy-header":
        start = raw.find(b"\x93NUMPY", raw.find(b"body_pose.npy"))
        raw[start + 10:start + 40] = b"{'descr': 'zz', 'bogus': 1, }"[:30]
    elif how == "central-directory":
        start = raw.rfind(b"PK\x01\x02")
        raw[start + 4:start + 30] = b"\xff" * 26
    return bytes(raw)


@pytest.mark.parametrize("how", ["member-bytes", "truncated", "npy-header", "central-directory"])
def test_damaged_npz_is_a_format_error_naming_the_file(how, tmp_path) -> None:
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(_damage(_saved_npz(tmp_path), how))
    with pytest.raises(PoseFormatError) as info:
        load_pose(bad)
    assert "damaged.npz" in str(info.value) and ("damaged" in str(info.value) or "cannot be read" in str(info.value))


def test_npz_member_that_is_not_an_npy(tmp_path) -> None:
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as archive:
        archive.writestr("global_orient.npy", b"not an array at all")
        archive.writestr("body_pose.npy", b"neither")
    with pytest.raises(PoseFormatError, match="odd.npz"):
        load_pose(tmp_path / "odd.npz")


@pytest.mark.parametrize("ext", [".npz", ".npy"])
def test_values_beyond_float32_are_refused(ext, tmp_path) -> None:
    if ext == ".npz":
        body = np.zeros((1, 63))
        np.savez(tmp_path / f"big{ext}", global_orient=np.zeros((1, 3)), body_pose=body,
                 transl=np.array([[1e300, 0.0, 0.0]]))
    else:
        np.save(tmp_path / f"big{ext}", np.tile(np.eye(3), (22, 1, 1)) * 1e300)
    with pytest.raises(InvalidPoseError, match="float32") as info:
        read_pose_file(tmp_path / f"big{ext}")
    assert f"big{ext}" in str(info.value)


def test_truncated_npy(tmp_path) -> None:
    Pose.identity().save(tmp_path / "p.npy")
    data = (tmp_path / "p.npy").read_bytes()
    (tmp_path / "p.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(PoseFormatError, match="p.npy"):
        load_pose(tmp_path / "p.npy")


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("name, value, fragment", [
    ("max_new_tokens", True, "max_new_tokens=True (bool)"),
    ("max_new_tokens", False, "max_new_tokens=False (bool)"),
    ("max_new_tokens", 1.5, "max_new_tokens=1.5 (float)"),
    ("max_new_tokens", "8", "max_new_tokens='8' (str)"),
    ("max_new_tokens", 0, "max_new_tokens=0"),
    ("max_new_tokens", -3, "max_new_tokens=-3"),
    ("max_new_tokens", 10 ** 9, "max_new_tokens=1000000000"),
    ("num_threads", True, "num_threads=True (bool)"),
    ("num_threads", 0, "num_threads=0"),
    ("num_threads", "2", "num_threads='2' (str)"),
    ("num_threads", 2.0, "num_threads=2.0 (float)"),
    ("pose_only", 1, "pose_only=1 (int)"),
    ("one_pass", "yes", "one_pass='yes' (str)"),
    ("compile", "auto", "compile='auto' (str)"),
    ("compile", 0, "compile=0 (int)"),
])
def test_option_types(name, value, fragment) -> None:
    with pytest.raises(InvalidOptionError) as info:
        GeneratorOptions(**{name: value})
    assert fragment in str(info.value) and "expected" in str(info.value)
    with pytest.raises(InvalidOptionError):
        Generator.from_pretrained(**{name: value})


@pytest.mark.parametrize("margin", [True, float("nan"), 0.5, 3.5, "1.2", None])
def test_bbox_margin_type_and_range(margin) -> None:
    with pytest.raises(InvalidOptionError, match="bbox_margin"):
        EstimatorOptions(bbox_margin=margin)


def test_numpy_integers_are_ints() -> None:
    assert GeneratorOptions(max_new_tokens=np.int64(12), num_threads=np.int32(1)).max_new_tokens == 12


@pytest.mark.parametrize("cls, options, suggestion", [
    (Generator, {"max_new_token": 5}, "'max_new_token' -> 'max_new_tokens'"),
    (Generator, {"numthreads": 2}, "'numthreads' -> 'num_threads'"),
    (Generator, {"bbox_margin": 1.2}, None),  # an Estimator option, not a Generator one
    (Estimator, {"bbox_margn": 1.3}, "'bbox_margn' -> 'bbox_margin'"),
    (Describer, {"temperature": 0.7, "top_p": 0.9}, None),
])
def test_unknown_option_names_list_the_valid_ones(cls, options, suggestion) -> None:
    with pytest.raises(InvalidOptionError) as info:
        cls.from_pretrained(**options)
    message = str(info.value)
    assert all(repr(name) in message for name in options)
    assert "max_new_tokens" in message and "num_threads" in message  # the valid names are listed
    assert not isinstance(info.value, TypeError)
    if suggestion:
        assert suggestion in message


# ---------------------------------------------------------------------------------------------- threads


def test_num_threads_applies_to_the_calls_only(monkeypatch) -> None:
    torch.set_num_threads(2)
    seen: list[int] = []
    real = generator_module.answer

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(generator_module, "answer", spy)
    try:
        with Generator.from_pretrained(num_threads=1, **SHORT) as one:
            assert torch.get_num_threads() == 2  # loading does not change the process
            one.generate("a person standing")
            assert torch.get_num_threads() == 2  # nor does a call
        with Generator.from_pretrained(**SHORT) as default:  # the same loaded model, no thread count
            default.generate("a person standing")
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(1)


def test_a_failing_call_restores_the_thread_count() -> None:
    torch.set_num_threads(2)
    try:
        with Generator.from_pretrained(num_threads=1, **SHORT) as one:
            with pytest.raises(InvalidTextError):
                one.generate("raise your arms " * 400)  # fails inside the call, after the threads were set
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- boxes and stems


@pytest.mark.parametrize("box", [(float("nan"), 0, 10, 10), (0, 0, float("inf"), 10), ("0", 0, 10, 10),
                                 (0, 0, 10), (1, 2, 3, 4, 5)])
def test_bad_boxes(box, estimator) -> None:
    with pytest.raises(InvalidInputError, match="four numbers"):
        estimator.estimate(np.zeros((32, 32, 3), np.uint8), bbox=box)


def test_one_box_per_image_in_a_batch(estimator) -> None:
    images = [np.zeros((32, 32, 3), np.uint8)] * 2
    with pytest.raises(InvalidInputError, match="one box"):
        estimator.estimate(images, bbox=[(0, 0, 10, 10)])
    with pytest.raises(InvalidInputError, match="bbox 1"):
        estimator.estimate(images, bbox=[None, (0, 0, float("nan"), 5)])


@pytest.mark.parametrize("stem", ["../x", "a/b", "/tmp/abs", "..", ".", ".hidden", "", " padded", "x\x00y",
                                  "a\\b" if os.sep == "\\" else "trailing ", "x" * 300, 5, None])
def test_result_stems_cannot_leave_the_directory(stem, generator, tmp_path) -> None:
    result = generator.generate("a person standing")
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidInputError, match="stem"):
        result.save(out, stem=stem)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even the directory
    assert not (tmp_path.parent / "x.json").exists()


def test_every_error_above_is_a_unipose_error() -> None:
    # The typed errors subclass the built-in categories callers already catch.
    assert issubclass(InvalidOptionError, (UniPoseError, ValueError))
    assert issubclass(PoseFormatError, ValueError) and issubclass(InvalidTextError, ValueError)


def test_exported_models_refuse_a_conflicting_thread_count() -> None:
    from types import SimpleNamespace

    from unipose_sdk.tasks.base import _check_loaded_threads

    class Session:  # what the check reads of a loaded session
        runtime = SimpleNamespace(backend="onnxruntime")
        model_name = "exported-dir"

    session = Session()
    _check_loaded_threads(session, GeneratorOptions(num_threads=2))  # the first task object loads it with 2
    _check_loaded_threads(session, GeneratorOptions(num_threads=2))
    _check_loaded_threads(session, GeneratorOptions())  # no request: uses what is loaded
    with pytest.raises(InvalidOptionError, match="already loaded on onnxruntime with num_threads=2") as info:
        _check_loaded_threads(session, GeneratorOptions(num_threads=1))
    assert "Pass num_threads=2" in str(info.value)
