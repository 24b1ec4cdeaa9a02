"""Mannequin renderer: a posed body as shaded capsules, in person-centred crops for both image towers.

Vectorised numpy, no OpenGL: for every pixel and every primitive (capsule between two points, or a sphere)
the distance from the pixel to the projected segment gives coverage, a depth (the segment's depth minus the
capsule's bulge towards the camera) and an approximate surface normal; the nearest primitive per pixel wins
(a depth buffer over primitives). Lambert shading with a random light, clothing colours per body region
(top, bottom, skin, shoes, hair), backgrounds that are flat, gradients or smooth noise.

`render_views(joints_m, rng)` renders the same body and camera into two crops:
  "clip"  112 x 112, square, the CLIP-like tower's view       (unipose-tiny's `clip.image_size`)
  "pose"  128 x 96 (H x W), the Pose-ViT person crop           (unipose-tiny's `pose_vit` height x width)
and returns uint8 images plus every joint's pixel position (x right, y down) and visibility in each crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unipose_sdk.body.skeleton import JOINT_INDEX as J

DEFAULT_VIEWS: dict[str, tuple[int, int]] = {"clip": (112, 112), "pose": (128, 96)}  # name -> (H, W)

# Extra points built per pose after the 22 joints: head centre, hair, nose, hands.
_HEAD, _HAIR, _NOSE, _LHAND, _RHAND = 22, 23, 24, 25, 26
_TOP, _BOTTOM, _SKIN, _SHOES, _HAIR_C = 0, 1, 2, 3, 4


def _primitives() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a [S], b [S], radius_m [S], region [S], long_sleeve_or_leg flag [S]) of the mannequin."""
    rows = [  # (a, b, radius_m, region, is a forearm / shank whose colour depends on sleeve length)
        ("pelvis", "spine1", 0.125, _BOTTOM, 0), ("spine1", "spine2", 0.125, _TOP, 0),
        ("spine2", "spine3", 0.13, _TOP, 0), ("left_collar", "right_collar", 0.08, _TOP, 0),
        ("left_hip", "right_hip", 0.10, _BOTTOM, 0), ("spine3", "neck", 0.055, _SKIN, 0),
        ("left_collar", "left_shoulder", 0.065, _TOP, 0), ("right_collar", "right_shoulder", 0.065, _TOP, 0),
        ("left_shoulder", "left_elbow", 0.052, _TOP, 0), ("right_shoulder", "right_elbow", 0.052, _TOP, 0),
        ("left_elbow", "left_wrist", 0.042, _TOP, 1), ("right_elbow", "right_wrist", 0.042, _TOP, 1),
        ("left_hip", "left_knee", 0.078, _BOTTOM, 0), ("right_hip", "right_knee", 0.078, _BOTTOM, 0),
        ("left_knee", "left_ankle", 0.056, _BOTTOM, 1), ("right_knee", "right_ankle", 0.056, _BOTTOM, 1),
        ("left_ankle", "left_foot", 0.042, _SHOES, 0), ("right_ankle", "right_foot", 0.042, _SHOES, 0),
        (_HEAD, _HEAD, 0.098, _SKIN, 0), (_HAIR, _HAIR, 0.096, _HAIR_C, 0), (_NOSE, _NOSE, 0.022, _SKIN, 0),
        (_LHAND, _LHAND, 0.048, _SKIN, 0), (_RHAND, _RHAND, 0.048, _SKIN, 0),
    ]
    idx = lambda k: k if isinstance(k, int) else J[k]
    a = np.array([idx(r[0]) for r in rows])
    b = np.array([idx(r[1]) for r in rows])
    return a, b, np.array([r[2] for r in rows], np.float32), np.array([r[3] for r in rows]), \
        np.array([r[4] for r in rows], bool)


PRIM_A, PRIM_B, PRIM_RADIUS_M, PRIM_REGION, PRIM_SLEEVE = _primitives()


def _visibility_tolerance_m() -> np.ndarray:
    """[22] how far a joint's own body surface may sit in front of it: its thickest capsule plus a margin."""
    tol = np.full(22, 0.05, np.float32)
    for a, b, r in zip(PRIM_A, PRIM_B, PRIM_RADIUS_M):
        for j in (a, b):
            if j < 22:
                tol[j] = max(tol[j], r + 0.05)
    tol[J["head"]] = 0.2  # inside the head sphere
    return tol


VISIBILITY_TOLERANCE_M = _visibility_tolerance_m()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _extra_points(p: np.ndarray) -> np.ndarray:
    """[22, 3] joints -> [27, 3] with head centre, hair, nose and hand centres appended."""
    up = _unit(p[J["head"]] - p[J["neck"]])
    left = p[J["left_shoulder"]] - p[J["right_shoulder"]]
    forward = _unit(np.cross(left, up))
    head = p[J["head"]] + 0.06 * up + 0.01 * forward
    hands = [p[J[f"{s}_wrist"]] + 0.065 * _unit(p[J[f"{s}_wrist"]] - p[J[f"{s}_elbow"]]) for s in ("left", "right")]
    extra = [head, head - 0.025 * forward + 0.015 * up, head + 0.095 * forward - 0.01 * up, *hands]
    return np.concatenate([p, np.stack(extra)], axis=0)


@dataclass
class Scene:
    """Everything random about one image besides the pose."""

    yaw_deg: float
    pitch_deg: float
    distance_m: float
    light_dir: np.ndarray  # [3] towards the light, camera coordinates (x right, y down, z forward)
    colours: np.ndarray  # [5, 3] float in [0, 1]: top, bottom, skin, shoes, hair
    long_sleeves: bool
    long_legs: bool
    background: str  # "flat" | "gradient" | "noise"
    background_colours: np.ndarray  # [2, 3]
    background_seed: int
    zoom: float  # crop size / person size
    shift: np.ndarray  # [2] crop centre jitter, fraction of the crop


_SKIN_TONES = np.array([[0.98, 0.84, 0.72], [0.90, 0.72, 0.58], [0.76, 0.56, 0.42], [0.55, 0.38, 0.26],
                        [0.36, 0.24, 0.16]])


def random_scene(rng: np.random.Generator) -> Scene:
    colours = rng.uniform(0.05, 0.95, size=(5, 3))
    colours[_SKIN] = np.clip(_SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 0.03, 3), 0, 1)
    colours[_HAIR_C] = rng.uniform(0.02, 0.35) * np.array([1.0, 0.8, 0.6]) if rng.random() < 0.85 else colours[4]
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-1.0, -0.1), -1.0])
    return Scene(
        yaw_deg=float(rng.uniform(-180, 180)), pitch_deg=float(rng.uniform(-8, 25)),
        distance_m=float(rng.uniform(3.0, 7.0)), light_dir=light / np.linalg.norm(light),
        colours=colours.astype(np.float32), long_sleeves=bool(rng.random() < 0.5), long_legs=bool(rng.random() < 0.7),
        background=["flat", "gradient", "noise"][rng.integers(3)],
        background_colours=rng.uniform(0, 1, size=(2, 3)).astype(np.float32),
        background_seed=int(rng.integers(2**31)), zoom=float(rng.uniform(1.08, 1.3)),
        shift=rng.uniform(-0.05, 0.05, size=2),
    )


def _camera(points: np.ndarray, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> camera coordinates [N, 3] (x right, y down, z depth) and the focal-free image
    plane positions [N, 2] = (x / z, y / z)."""
    target = 0.5 * (points.min(axis=0) + points.max(axis=0))
    yaw, pitch = np.radians(scene.yaw_deg), np.radians(scene.pitch_deg)
    eye = target + scene.distance_m * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    forward = _unit(target - eye)
    right = _unit(np.cross(forward, [0.0, 1.0, 0.0]))
    down = np.cross(forward, right)  # image y grows downwards
    cam = (points - eye) @ np.stack([right, down, forward]).T
    return cam, cam[:, :2] / cam[:, 2:3]


def _background(h: int, w: int, scene: Scene) -> np.ndarray:
    c0, c1 = scene.background_colours
    if scene.background == "flat":
        return np.broadcast_to(c0, (h, w, 3)).copy()
    if scene.background == "gradient":
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        return np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).copy()
    grid = np.random.default_rng(scene.background_seed).uniform(0, 1, size=(6, 6)).astype(np.float32)
    ys, xs = np.linspace(0, 5, h, dtype=np.float32), np.linspace(0, 5, w, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), 4), np.minimum(xs.astype(int), 4)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    smooth = lambda t: t * t * (3 - 2 * t)
    fy, fx = smooth(fy), smooth(fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    t = (top * (1 - fy) + bottom * fy)[..., None]
    return c0 * (1 - t) + c1 * t


def _rasterise(h: int, w: int, ends_px: np.ndarray, depth_m: np.ndarray, radius_px: np.ndarray,
               radius_m: np.ndarray, colour: np.ndarray, light_dir: np.ndarray, background: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Draw S capsules. ends_px [S, 2, 2] (x, y), depth_m [S, 2], radius_px [S, 2], radius_m [S], colour [S, 3].
    Returns (image [h, w, 3] float in [0, 1], depth buffer [h, w] with inf where empty).

    Each primitive is evaluated only inside its own bounding box (limbs cover a few percent of the crop, so
    this is ~10x less work than every pixel against every primitive), updating a depth buffer in place.
    """
    zbuf = np.full((h, w), np.inf, np.float32)
    prim = np.full((h, w), -1, np.int32)
    nx, ny, nz_buf, edge = (np.zeros((h, w), np.float32) for _ in range(4))  # normal; pixels inside the edge
    for s in range(len(ends_px)):
        (ax, ay), (bx, by) = ends_px[s]
        r_max = float(radius_px[s].max())
        x0, x1 = max(int(min(ax, bx) - r_max) - 1, 0), min(int(max(ax, bx) + r_max) + 2, w)
        y0, y1 = max(int(min(ay, by) - r_max) - 1, 0), min(int(max(ay, by) + r_max) + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = _PIXEL_X[:y1 - y0, x0:x1] - ax
        dy = _PIXEL_Y[y0:y1, :x1 - x0] - ay
        abx, aby = bx - ax, by - ay
        t = (dx * abx + dy * aby) * (1.0 / max(abx * abx + aby * aby, 1e-6))
        np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
        offx = dx - t * abx
        offy = dy - t * aby
        dist = np.sqrt(offx * offx + offy * offy)
        r_px = radius_px[s, 0] + t * (radius_px[s, 1] - radius_px[s, 0])
        rel = dist / r_px
        nz = np.sqrt(np.maximum(1.0 - rel * rel, 0.0))
        depth = depth_m[s, 0] + t * (depth_m[s, 1] - depth_m[s, 0]) - radius_m[s] * nz
        zb = zbuf[y0:y1, x0:x1]
        win = (rel < 1.0) & (depth < zb)
        np.copyto(zb, depth, where=win)
        np.copyto(prim[y0:y1, x0:x1], s, where=win)
        scale = np.minimum(rel, 1.0) / np.maximum(dist, 1e-6)
        np.copyto(nx[y0:y1, x0:x1], offx * scale, where=win)
        np.copyto(ny[y0:y1, x0:x1], offy * scale, where=win)
        np.copyto(nz_buf[y0:y1, x0:x1], nz, where=win)
        np.copyto(edge[y0:y1, x0:x1], r_px - dist, where=win)
    hit = prim >= 0
    lambert = np.maximum(nx * light_dir[0] + ny * light_dir[1] - nz_buf * light_dir[2], 0.0)
    shade = (0.38 + 0.62 * lambert)[..., None] * colour[np.maximum(prim, 0)]
    # One pixel of soft edge against the background, so silhouettes are not jagged.
    alpha = (np.minimum(np.maximum(edge + 0.5, 0.0), 1.0) * hit)[..., None]
    return alpha * shade + (1 - alpha) * background, zbuf


_PIXEL_Y, _PIXEL_X = np.mgrid[0:512, 0:512].astype(np.float32)  # pixel centres, sliced per bounding box


def render_views(
    joints_m: np.ndarray, rng: np.random.Generator, views: dict[str, tuple[int, int]] | None = None,
    scene: Scene | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Render one posed body into each view's person-centred crop.

    Returns {view: {"image": uint8 [H, W, 3], "joints_2d": float32 [22, 2] (x, y pixels), "visible": bool [22]}}.
    """
    views = DEFAULT_VIEWS if views is None else views
    scene = random_scene(rng) if scene is None else scene
    points = _extra_points(np.asarray(joints_m, dtype=np.float64))
    cam, plane = _camera(points, scene)
    # The person's extent on the image plane, widened by the thickest limbs (~0.13 m at the torso).
    pad = 0.13 / cam[:, 2].min()
    lo, hi = plane.min(axis=0) - pad, plane.max(axis=0) + pad
    centre, size = 0.5 * (lo + hi), hi - lo
    colours = scene.colours[PRIM_REGION].copy()
    colours[PRIM_SLEEVE & (PRIM_REGION == _TOP) & (not scene.long_sleeves)] = scene.colours[_SKIN]
    colours[PRIM_SLEEVE & (PRIM_REGION == _BOTTOM) & (not scene.long_legs)] = scene.colours[_SKIN]
    out = {}
    for name, (h, w) in views.items():
        # Crop on the image plane with the view's aspect, fitting the person with `zoom` margin.
        span_y = max(size[1], size[0] * h / w) * scene.zoom
        px_per_unit = h / span_y
        crop_centre = centre + scene.shift * np.array([w, h]) / px_per_unit
        pix = ((plane - crop_centre) * px_per_unit + np.array([w / 2 - 0.5, h / 2 - 0.5])).astype(np.float32)
        depth = cam[:, 2].astype(np.float32)
        ends = np.stack([pix[PRIM_A], pix[PRIM_B]], axis=1)
        depth_ends = np.stack([depth[PRIM_A], depth[PRIM_B]], axis=1)
        radius_px = PRIM_RADIUS_M[:, None] * px_per_unit / depth_ends
        image, zbuf = _rasterise(h, w, ends, depth_ends, radius_px.astype(np.float32), PRIM_RADIUS_M, colours,
                                 scene.light_dir.astype(np.float32), _background(h, w, scene))
        joints_2d = pix[:22]
        xi = np.clip(np.round(joints_2d[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(joints_2d[:, 1]).astype(int), 0, h - 1)
        inside = (joints_2d[:, 0] >= 0) & (joints_2d[:, 0] <= w - 1) & (joints_2d[:, 1] >= 0) & (joints_2d[:, 1] <= h - 1)
        # Visible unless something sits clearly in front of the joint (its own limb's skin is ~radius ahead).
        visible = inside & (zbuf[yi, xi] > depth[:22] - VISIBILITY_TOLERANCE_M)
        out[name] = {"image": (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), "joints_2d": joints_2d,
                     "visible": visible}
    return out


def contact_sheet(images: list[np.ndarray], columns: int = 8, joints_2d: list[np.ndarray] | None = None) -> np.ndarray:
    """Tile same-sized uint8 images into one array (optionally with joint dots drawn in red)."""
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, img in enumerate(images):
        img = img.copy()
        if joints_2d is not None:
            for x, y in np.round(joints_2d[i]).astype(int):
                img[max(y - 1, 0):y + 1, max(x - 1, 0):x + 1] = (255, 0, 0)
        r, c = divmod(i, columns)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = img
    return sheet
