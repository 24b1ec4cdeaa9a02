"""Skeleton rendering: geometry of each view (not mirrored), colours, layout, errors, atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from unipose_sdk.body import render
from unipose_sdk.body.examples import example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.render import LEFT_COLOUR, RIGHT_COLOUR, render_poses_figure, render_poses_png
from unipose_sdk.errors import InvalidInputError


def _lines_by_colour(ax, colour: str) -> np.ndarray:
    """[N, 2, 2] segment end points (h, v) of the bones drawn in `colour` on one view."""
    segments = [np.column_stack(line.get_data()) for line in ax.get_lines()
                if line.get_color() == colour and len(line.get_xdata()) == 2]
    return np.asarray(segments)


def _view_axes(fig: Figure, item: int = 0) -> dict[str, object]:
    axes = [ax for sub in fig.subfigs for ax in sub.axes]
    return {ax.get_title(): ax for ax in axes[3 * item:3 * item + 3]}


def test_front_view_is_not_mirrored_and_upright() -> None:
    """Front view: the person faces the viewer, so their left (blue) is on the image's right; head on top."""
    views = _view_axes(render_poses_figure(Pose.identity()))
    left, right = _lines_by_colour(views["front"], LEFT_COLOUR), _lines_by_colour(views["front"], RIGHT_COLOUR)
    assert len(left) == 8 and len(right) == 8  # 4 leg bones + collar + 3 arm bones per side
    assert left[..., 0].min() >= 0 and left[..., 0].mean() > 0.1 and right[..., 0].max() <= 0 and right[..., 0].mean() < -0.1
    head_h, head_v = next(c.get_offsets()[0] for c in views["front"].collections if len(c.get_offsets()) == 1)
    assert head_v > left[..., 1].max() - 0.1 and abs(head_h) < 0.05


def test_side_and_top_views_show_which_way_the_person_faces() -> None:
    """Side view: the feet point to the image's right. Top view: left on the right, front towards the bottom."""
    views = _view_axes(render_poses_figure(example_pose("walking_stride")))
    left_side = _lines_by_colour(views["side"], LEFT_COLOUR)
    right_side = _lines_by_colour(views["side"], RIGHT_COLOUR)
    # the left leg strides forward: its lowest point (the foot) is further right than the right foot
    assert left_side.reshape(-1, 2)[left_side.reshape(-1, 2)[:, 1].argmin(), 0] > \
        right_side.reshape(-1, 2)[right_side.reshape(-1, 2)[:, 1].argmin(), 0] + 0.3
    top_left = _lines_by_colour(views["top"], LEFT_COLOUR).reshape(-1, 2)
    top_right = _lines_by_colour(views["top"], RIGHT_COLOUR).reshape(-1, 2)
    assert top_left[:, 0].mean() > 0 > top_right[:, 0].mean()
    assert top_left[:, 1].min() < top_right[:, 1].min() - 0.1  # the forward (left) foot is lower in the image


def test_png_pixels_put_left_limbs_on_the_right_of_the_front_view(tmp_path) -> None:
    path = render_poses_png(Pose.identity(), tmp_path / "rest.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    front = image[:, : image.shape[1] // 3]

    def columns_of(colour: str) -> np.ndarray:
        target = np.array(to_rgb(colour)) * 255
        return np.nonzero(np.abs(front - target).sum(-1) < 40)[1]

    blue, orange = columns_of(LEFT_COLOUR), columns_of(RIGHT_COLOUR)
    assert len(blue) > 200 and len(orange) > 200
    assert blue.mean() > front.shape[1] / 2 > orange.mean()


def test_single_pose_batch_and_side_by_side_layouts(tmp_path) -> None:
    batch = Pose.cat([example_pose("sitting"), example_pose("squatting")])
    one_row = render_poses_png(batch, tmp_path / "row.png", titles=["a", "b"], dpi=40)
    width, height = Image.open(one_row).size
    assert width > 3 * height  # two items side by side, three views each
    fig = render_poses_figure([batch, batch], titles=["source", "edited"])
    assert len(fig.subfigs) == 4 and len(fig.axes) == 12  # 2 rows x 2 columns of sub-figures, 3 views each
    assert [sub._suptitle.get_text() for sub in fig.subfigs[:2]] == ["source", "edited"]
    grid = render_poses_png([batch, batch], tmp_path / "grid.png", titles=["source", "edited"], dpi=40)
    assert Image.open(grid).size[1] > Image.open(grid).size[0] * 0.35  # two rows make it taller
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "row.png"]


def test_panels_share_one_scale() -> None:
    fig = render_poses_figure([example_pose("sitting"), example_pose("standing_relaxed")])
    front_a, front_b = _view_axes(fig, 0)["front"], _view_axes(fig, 1)["front"]
    assert np.isclose(np.ptp(front_a.get_xlim()), np.ptp(front_b.get_xlim()))
    assert np.isclose(np.ptp(front_a.get_ylim()), np.ptp(front_b.get_ylim()))


@pytest.mark.parametrize(
    "poses, titles, message",
    [
        (Pose.identity(0), None, "empty"),
        ([], None, "non-empty list of Poses"),
        ([Pose.identity(), np.zeros((1, 66))], None, "ndarray"),
        (np.zeros((1, 66)), None, "expected a Pose"),
        ([Pose.identity(2), Pose.identity(3)], None, r"batch sizes \[2, 3\]"),
        (Pose.identity(2), ["one"], "1 titles; expected a list of 2"),
        (Pose.identity(1), "title", "single string"),
        (Pose.identity(render.MAX_ITEMS + 1), None, "at most 64"),
    ],
)
def test_bad_inputs(tmp_path, poses, titles, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        render_poses_png(poses, tmp_path / "x.png", titles=titles)
    assert list(tmp_path.iterdir()) == []


def test_bad_path_and_dpi(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match=r"\.png"):
        render_poses_png(Pose.identity(), tmp_path / "x.jpg")
    with pytest.raises(InvalidInputError, match="dpi"):
        render_poses_png(Pose.identity(), tmp_path / "x.png", dpi=5)


def test_failed_render_leaves_no_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "old.png").write_bytes(b"old")

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="crashed"):
        render_poses_png(Pose.identity(), tmp_path / "old.png")
    with pytest.raises(RuntimeError, match="crashed"):
        render_poses_png(Pose.identity(), tmp_path / "new.png")
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"

# That rendering never imports pyplot nor changes the global backend is checked in a fresh interpreter by
# tests/test_smpl_adapter.py::test_core_imports_never_import_smplx_and_rendering_stays_headless (one subprocess
# for all import side effects: importing torch dominates its cost).
