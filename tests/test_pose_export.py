"""BVH and glTF through the API and the CLI: `Pose.save` by suffix, `unipose pose export`, task `--formats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unipose_sdk.body.examples import example_pose_names, example_pose_path, load_example_pose
from unipose_sdk.body.io import read_pose_file
from unipose_sdk.body.pose import Pose
from unipose_sdk.cli import main
from unipose_sdk.errors import InvalidInputError, PoseFormatError

pygltflib = pytest.importorskip("pygltflib")


def _examples() -> Pose:
    return Pose.cat([load_example_pose(name) for name in example_pose_names()])


def test_pose_save_picks_bvh_and_glb_by_suffix(tmp_path: Path) -> None:
    pose = _examples()
    pose.save(tmp_path / "clip.bvh", transl_m=[0.0, 0.9, 0.0])
    pose.save(tmp_path / "clip.GLB")
    assert (tmp_path / "clip.bvh").read_text().startswith("HIERARCHY")
    assert (tmp_path / "clip.GLB").read_bytes()[:4] == b"glTF"
    back = read_pose_file(tmp_path / "clip.bvh")  # recognised by content, like the other layouts
    assert back.layout == "bvh" and len(back.pose) == len(pose)
    np.testing.assert_allclose(back.transl_m, np.tile([0.0, 0.9, 0.0], (len(pose), 1)), atol=1e-6)
    np.testing.assert_allclose(back.pose.joints().numpy(), pose.joints().numpy(), atol=1e-5)
    assert len(pygltflib.GLTF2().load(str(tmp_path / "clip.GLB")).animations) == 1
    with pytest.raises(PoseFormatError, match="betas"):
        pose.save(tmp_path / "b.bvh", betas=np.zeros(10))
    assert not (tmp_path / "b.bvh").exists()


def test_cli_export_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = str(example_pose_path("squatting"))
    expected = Pose.load(source).joints().numpy()
    for fmt in ("bvh", "glb", "npz", "npy", "json"):
        out = tmp_path / f"pose.{fmt}"
        assert main(["pose", "export", source, "--format", fmt, "-o", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["format"] == fmt and summary["poses"] == 1 and out.is_file()
        if fmt != "glb":
            np.testing.assert_allclose(Pose.load(out).joints().numpy(), expected, atol=1e-5)
    # the format from the extension; an existing output needs --overwrite; a mismatch is a usage error
    assert main(["pose", "export", source, "-o", str(tmp_path / "other.bvh"), "--quiet"]) == 0
    assert main(["pose", "export", source, "-o", str(tmp_path / "other.bvh"), "--quiet"]) == 2
    assert main(["pose", "export", source, "--format", "bvh", "-o", str(tmp_path / "x.glb"), "--quiet"]) == 2
    assert main(["pose", "export", source, "-o", str(tmp_path / "x.txt"), "--quiet"]) == 2
    assert not (tmp_path / "x.glb").exists() and not (tmp_path / "x.txt").exists()


def test_task_formats_choose_the_pose_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "a person squatting", "-o", str(tmp_path), "--formats", "bvh", "glb", "--json",
                 "--max-new-tokens", "6"])
    assert code == 0
    files = json.loads(capsys.readouterr().out)["results"][0]["files"]
    assert [Path(f).name for f in files] == ["generate_000.bvh", "generate_000.glb", "generate_000.json"]
    assert Pose.load(tmp_path / "generate_000.bvh").rotmat.shape == (1, 22, 3, 3)
    with pytest.raises(SystemExit) as usage_error:  # an unknown format is an argparse usage error
        main(["generate", "a person", "-o", str(tmp_path), "--formats", "fbx", "--quiet"])
    assert usage_error.value.code == 2


def test_save_results_rejects_unknown_formats(tmp_path: Path) -> None:
    from unipose_sdk.results import check_formats

    assert check_formats(["png", "bvh", "npz"]) == ("npz", "png", "bvh")
    with pytest.raises(InvalidInputError, match="fbx"):
        check_formats(["fbx"])
