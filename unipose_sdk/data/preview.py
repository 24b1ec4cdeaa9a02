"""Stick-figure contact sheets (matplotlib) for eyeballing sampled poses and archetypes.

Front view: the camera looks at the person's face, so the body's LEFT (blue) is on the image's right.
Side view: seen from the body's left, facing is to the right. Red = right limbs, grey = centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unipose_sdk.body.skeleton import JOINT_NAMES, PARENTS


def _bone_colour(j: int) -> str:
    name = JOINT_NAMES[j]
    return "tab:blue" if name.startswith("left") else "tab:red" if name.startswith("right") else "0.3"


def stick_figure_sheet(joints_m: np.ndarray, titles: list[str], path: str | Path, columns: int = 6) -> Path:
    """Write a PNG with a front and a side view of every [22, 3] joint set in joints_m [n, 22, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(joints_m)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns * 2, figsize=(columns * 2 * 1.3, rows * 2.0), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, joints in enumerate(joints_m):
        r, c = divmod(i, columns)
        for view, ax in enumerate((axes[r, 2 * c], axes[r, 2 * c + 1])):
            u = joints[:, 0] if view == 0 else joints[:, 2]  # front: x (left to the right); side: z forward
            v = joints[:, 1]
            for j in range(1, len(joints)):
                p = PARENTS[j]
                ax.plot([u[p], u[j]], [v[p], v[j]], color=_bone_colour(j), lw=2)
            ax.scatter(u[15], v[15], s=60, color="0.3")
            ax.axhline(0.0, color="0.8", lw=0.8)
            ax.set_xlim(-1.1, 1.1)
            ax.set_ylim(-0.1, 2.1)
            ax.set_aspect("equal")
            ax.set_title(f"{titles[i]} ({'front' if view == 0 else 'side'})", fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
