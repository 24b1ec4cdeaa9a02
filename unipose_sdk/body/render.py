"""Skeleton pictures of poses: front, side and top views, written as a PNG.

Headless and side-effect free: the figure is built with matplotlib's object API (`Figure` + `FigureCanvasAgg`),
so nothing here calls `matplotlib.use` or touches pyplot's global state, and other users of matplotlib in the
same process keep their backend.

Views (SMPL body frame: +x = the body's left, +y up, +z forward, the way the rest pose faces):
- front: the camera looks at the person's face (from +z), so the person's LEFT appears on the image's RIGHT;
- side: the camera looks at the person's right side (from -x), so the person faces the image's right;
- top: the camera looks down (from +y) with the person's front towards the bottom of the image; left on the right,
  as in the front view.
Left limbs are blue, right limbs orange, the spine and head grey; a line (front, side) or a grid (top) marks the
floor under the lowest joint; a short tick from the head shows which way the face points.
"""

from __future__ import annotations

import io as _bytes_io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unipose_sdk.fileio import atomic_write
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS
from unipose_sdk.errors import InvalidInputError

LEFT_COLOUR = "#1f6fd1"  # blue
RIGHT_COLOUR = "#f07d12"  # orange: distinct from blue for the common colour-vision deficiencies too
CENTRE_COLOUR = "#4a4a4a"
MAX_ITEMS = 64  # more panels than this make an unreadable picture

# (name, horizontal axis, vertical axis, depth axis): each as (coordinate index, sign). Depth grows towards the
# camera, so bones are drawn far to near and the near limb covers the far one.
_VIEWS = (
    ("front", (0, +1), (1, +1), (2, +1)),
    ("side", (2, +1), (1, +1), (0, -1)),
    ("top", (0, +1), (2, -1), (1, +1)),
)
_FACE_TICK_M = 0.09


def _side_colour(joint: int) -> str:
    name = JOINT_NAMES[joint]
    return LEFT_COLOUR if name.startswith("left_") else RIGHT_COLOUR if name.startswith("right_") else CENTRE_COLOUR


def _grid(poses: Pose | Sequence[Pose], titles: Sequence[str] | None) -> tuple[list[list[Pose]], list[str | None]]:
    """Arrange the input as rows x columns of single poses, with one title per column.

    A Pose gives one row with a column per batch item. A list of Poses gives a column per list entry and, when
    each holds B > 1 poses (say B originals and B reconstructions), a row per batch item.
    """
    if isinstance(poses, Pose):
        columns = [poses[i] for i in range(len(poses))]
        rows = [columns]
    elif isinstance(poses, (list, tuple)) and poses and all(isinstance(p, Pose) for p in poses):
        sizes = sorted({len(p) for p in poses})
        if len(sizes) != 1:
            raise InvalidInputError(f"received a list of Poses with batch sizes {[len(p) for p in poses]}; expected "
                                    f"the same batch size in each (rows are batch items, columns list entries). "
                                    f"Slice them to equal lengths.")
        rows = [[p[i] for p in poses] for i in range(sizes[0])]
    else:
        kinds = sorted({type(p).__name__ for p in poses}) if isinstance(poses, (list, tuple)) else []
        received = f"a list of {', '.join(kinds) or 'nothing'}" if isinstance(poses, (list, tuple)) \
            else type(poses).__name__
        raise InvalidInputError(f"received {received}; expected a Pose or a non-empty list of Poses. Build them "
                                f"with `Pose.from_any(x)`.")
    n_columns = len(rows[0]) if rows else 0
    if not rows or n_columns == 0:
        raise InvalidInputError("received an empty Pose (batch size 0); expected at least one pose to render.")
    if len(rows) * n_columns > MAX_ITEMS:
        raise InvalidInputError(f"received {len(rows) * n_columns} poses to render; expected at most {MAX_ITEMS} "
                                f"in one picture. Slice the batch, e.g. `pose[:16]`, or render several files.")
    if titles is None:
        return rows, [None] * n_columns
    if isinstance(titles, str) or len(titles) != n_columns:
        got = "a single string" if isinstance(titles, str) else f"{len(titles)} titles"
        raise InvalidInputError(f"received {got}; expected a list of {n_columns} titles (one per column). Pass "
                                f"`titles=[...]` with one string per column, or None.")
    return rows, [str(t) for t in titles]


def _project(points: np.ndarray, axis: tuple[int, int]) -> np.ndarray:
    index, sign = axis
    return sign * points[..., index]


def _draw_view(ax, joints_m: np.ndarray, face_dir: np.ndarray, view: tuple, floor_y: float, half_m: float) -> None:
    name, h_axis, v_axis, d_axis = view
    h, v, depth = _project(joints_m, h_axis), _project(joints_m, v_axis), _project(joints_m, d_axis)
    bones = sorted(range(1, NUM_JOINTS), key=lambda j: depth[j] + depth[PARENTS[j]])  # far to near
    for j in bones:
        p = PARENTS[j]
        ax.plot([h[p], h[j]], [v[p], v[j]], color=_side_colour(j), lw=3.2, solid_capstyle="round", zorder=2)
    ax.scatter(h, v, s=12, c=[_side_colour(j) for j in range(NUM_JOINTS)], edgecolors="white", linewidths=0.6,
               zorder=3)
    head = joints_m[JOINT_INDEX["head"]]
    ax.scatter([h[JOINT_INDEX["head"]]], [v[JOINT_INDEX["head"]]], s=160, facecolors="none",
               edgecolors=CENTRE_COLOUR, linewidths=1.5, zorder=3)
    nose = head + _FACE_TICK_M * face_dir
    ax.plot([h[JOINT_INDEX["head"]], _project(nose, h_axis)], [v[JOINT_INDEX["head"]], _project(nose, v_axis)],
            color=CENTRE_COLOUR, lw=1.5, zorder=3)

    centre_h = 0.0
    if name == "top":
        ticks = np.arange(-2.0, 2.01, 0.25)
        for t in ticks:
            ax.axvline(t, color="#d9d9d9", lw=0.6, zorder=0)
            ax.axhline(t, color="#d9d9d9", lw=0.6, zorder=0)
        ax.set_ylim(-half_m * 0.7, half_m * 0.7)
        ax.set_xlim(centre_h - half_m, centre_h + half_m)
    else:
        ax.axhline(floor_y, color="#8c8c8c", lw=1.2, zorder=1)
        ax.axhspan(floor_y - 0.5, floor_y, color="#efefef", zorder=0)
        ax.set_ylim(floor_y - 0.08, floor_y + 2 * half_m - 0.08)
        ax.set_xlim(centre_h - half_m, centre_h + half_m)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(name, fontsize=8, color="#555555", pad=2)


def render_poses_figure(poses: Pose | Sequence[Pose], titles: Sequence[str] | None = None) -> Figure:
    """The picture `render_poses_png` writes, as a matplotlib Figure (for notebooks and further drawing)."""
    rows, column_titles = _grid(poses, titles)
    joints = np.stack([[pose.joints()[0].detach().cpu().numpy() for pose in row] for row in rows])  # [R, C, 22, 3]
    # every panel shares one scale, so sizes compare across columns
    half_m = max(0.95, float(np.abs(joints[..., [0, 2]]).max()) + 0.15,
                 float(np.ptp(joints[..., 1], axis=-1).max()) / 2 + 0.15)
    n_rows, n_columns = joints.shape[:2]
    fig = Figure(figsize=(3 * 1.9 * n_columns, 2.35 * n_rows + 0.3), dpi=100, layout="constrained")
    subfigs = np.asarray(fig.subfigures(n_rows, n_columns, squeeze=False))
    for r, row in enumerate(rows):
        for c, pose in enumerate(row):
            sub = subfigs[r, c]
            if column_titles[c] is not None and r == 0:
                sub.suptitle(column_titles[c], fontsize=10)
            elif n_rows > 1:
                sub.suptitle(f"#{r}" if column_titles[c] is None else "", fontsize=9)
            face_dir = _head_forward(pose)
            floor_y = float(joints[r, c, :, 1].min()) - 0.03
            axes = sub.subplots(1, 3)
            for ax, view in zip(axes, _VIEWS):
                _draw_view(ax, joints[r, c], face_dir, view, floor_y, half_m)
    handles = [Line2D([], [], color=LEFT_COLOUR, lw=3, label="left"),
               Line2D([], [], color=RIGHT_COLOUR, lw=3, label="right"),
               Line2D([], [], color=CENTRE_COLOUR, lw=3, label="centre")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def _head_forward(pose: Pose) -> np.ndarray:
    """World direction of the head's +z (the face) for the facing tick, from the global rotation chain."""
    rot = np.eye(3)
    chain = []
    j = JOINT_INDEX["head"]
    while j >= 0:
        chain.append(j)
        j = PARENTS[j]
    local = pose.rotmat[0].detach().cpu().double().numpy()
    for j in reversed(chain):
        rot = rot @ local[j]
    return rot @ np.array([0.0, 0.0, 1.0])


def render_poses_png(poses: Pose | Sequence[Pose], path: str | os.PathLike,
                     titles: Sequence[str] | None = None, dpi: int = 100) -> Path:
    """Draw each pose from the front, side and top and write one PNG atomically; returns the path.

    `poses`: a Pose (one column per batch item) or a list of Poses side by side (e.g. source and edited; with
    B > 1 poses each, one row per batch item). `titles`: one per column.
    """
    target = Path(path).expanduser()
    if target.suffix.lower() != ".png":
        raise InvalidInputError(f"received the output path {str(target)!r}; expected a file name ending in .png. "
                                f"Change the extension.")
    if not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise InvalidInputError(f"received dpi={dpi!r}; expected an int between 20 and 600. Use e.g. 100.")
    fig = render_poses_figure(poses, titles)
    buffer = _bytes_io.BytesIO()  # render fully before touching the target, so a failure leaves no file
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure: no global backend involved
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return atomic_write(target, lambda handle: handle.write(buffer.getvalue()))
