"""Renderer: shapes, ranges, the person inside the crop, joints where the body is drawn, determinism."""

import numpy as np

from unipose_sdk.data.archetypes import ARCHETYPES
from unipose_sdk.data.poses import euler_deg_to_axis_angle, joints_from_axis_angle, sample_poses
from unipose_sdk.data.render import DEFAULT_VIEWS, random_scene, render_views
from unipose_sdk.models.config import get_preset


def test_views_match_the_tiny_model_towers():
    cfg = get_preset("unipose-tiny")
    assert DEFAULT_VIEWS["clip"] == (cfg.clip.image_size, cfg.clip.image_size)
    assert DEFAULT_VIEWS["pose"] == (cfg.pose_vit.image_height, cfg.pose_vit.image_width)


def test_shapes_ranges_and_person_in_crop():
    aa, _ = sample_poses(12, seed=4, global_orient="random")
    rng = np.random.default_rng(0)
    for joints in joints_from_axis_angle(aa):
        out = render_views(joints, rng)
        for name, (h, w) in DEFAULT_VIEWS.items():
            view = out[name]
            assert view["image"].shape == (h, w, 3) and view["image"].dtype == np.uint8
            j2d = view["joints_2d"]
            assert j2d.shape == (22, 2) and view["visible"].shape == (22,)
            # Every joint projects inside the crop, and the body spans a good part of it.
            assert (j2d >= 0).all() and (j2d[:, 0] <= w - 1).all() and (j2d[:, 1] <= h - 1).all()
            extent = j2d.max(0) - j2d.min(0)
            assert max(extent[0] / w, extent[1] / h) > 0.5
            assert view["visible"].sum() >= 8  # self-occlusion hides some joints, never most


def test_body_is_drawn_where_the_joints_project():
    joints = joints_from_axis_angle(euler_deg_to_axis_angle(ARCHETYPES["t_pose"][None]))[0]
    scene = random_scene(np.random.default_rng(1))
    scene.yaw_deg, scene.pitch_deg, scene.background = 0.0, 0.0, "flat"
    scene.background_colours[0] = (0.0, 0.0, 0.0)
    out = render_views(joints, np.random.default_rng(0), scene=scene)["clip"]
    image, j2d = out["image"].astype(int), np.round(out["joints_2d"]).astype(int)
    painted = image.sum(-1) > 0
    assert painted[j2d[:, 1], j2d[:, 0]].mean() > 0.9
    assert out["visible"].all()  # a T-pose seen from the front hides nothing
    # Facing the camera, the body's left hand appears on the image's right.
    assert j2d[20, 0] > j2d[21, 0]
    assert 0.05 < painted.mean() < 0.6


def test_rendering_is_deterministic_given_the_rng():
    joints = joints_from_axis_angle(euler_deg_to_axis_angle(ARCHETYPES["running"][None]))[0]
    a = render_views(joints, np.random.default_rng(9))
    b = render_views(joints, np.random.default_rng(9))
    for name in DEFAULT_VIEWS:
        np.testing.assert_array_equal(a[name]["image"], b[name]["image"])
