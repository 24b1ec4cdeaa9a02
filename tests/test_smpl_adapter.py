"""The optional smplx adapter, against synthetic SMPL / SMPL-H model files written here (no licensed files needed),
and the guarantee that the core never imports smplx."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import PARENTS, forward_kinematics, rest_joints_m
from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError, ModelNotFoundError

smplx = pytest.importorskip("smplx")
from unipose_sdk.body.smpl_adapter import SMPLBody

NUM_VERTICES = 6890  # smplx picks extra keypoints by SMPL vertex ids (up to 6787), so the topology size is real
SMPL_PARENTS = list(PARENTS) + [20, 21]  # + left_hand, right_hand


def _smplh_parents() -> list[int]:
    parents = list(PARENTS)
    for wrist in (20, 21):
        for _finger in range(5):
            parents += [wrist, len(parents), len(parents) + 1]
    return parents


def _synthetic_model(parents: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A body model in the official file layout: vertices clustered around a human-like rest skeleton, a
    J_regressor averaging each joint's cluster, random shape / pose blend shapes and skinning weights."""
    rng = np.random.default_rng(seed)
    n_joints = len(parents)
    rest = rest_joints_m().numpy()
    joint_pos = np.zeros((n_joints, 3))
    joint_pos[:22] = rest + np.array([0.0, -0.25, 0.02])  # SMPL's pelvis is not at the origin
    for j in range(22, n_joints):  # hand joints continue along their parent's bone
        joint_pos[j] = joint_pos[parents[j]] + np.array([np.sign(joint_pos[parents[j]][0]) * 0.03, 0, 0.01])
    owner = rng.integers(0, n_joints, size=NUM_VERTICES)
    owner[:n_joints] = np.arange(n_joints)  # every joint owns vertices
    v_template = joint_pos[owner] + rng.normal(scale=0.03, size=(NUM_VERTICES, 3))
    j_regressor = np.zeros((n_joints, NUM_VERTICES))
    for j in range(n_joints):
        members = np.nonzero(owner == j)[0]
        j_regressor[j, members] = 1.0 / len(members)
    weights = rng.random((NUM_VERTICES, n_joints)) ** 8
    weights[np.arange(NUM_VERTICES), owner] += 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    kintree = np.array([[4294967295] + parents[1:], list(range(n_joints))], dtype=np.int64)
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(NUM_VERTICES, 3, 10)),
        "posedirs": rng.normal(scale=0.01, size=(NUM_VERTICES, 3, 9 * (n_joints - 1))).astype(np.float32),
        "J_regressor": j_regressor,
        "kintree_table": kintree,
        "weights": weights,
        "f": rng.integers(0, NUM_VERTICES, size=(2000, 3)).astype(np.uint32),
    }


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.npz"
    np.savez(path, **_synthetic_model(SMPL_PARENTS))
    return path


@pytest.fixture(scope="module")
def smpl_body(smpl_file) -> SMPLBody:
    return SMPLBody(smpl_file)


@pytest.fixture
def poses() -> Pose:
    rng = np.random.default_rng(3)
    return Pose.from_axis_angle(rng.normal(scale=0.5, size=(3, 66)))


def test_joints_and_vertices_match_smplx(smpl_file, smpl_body, poses) -> None:
    betas = torch.linspace(-1, 1, 10).expand(3, 10)
    transl = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [-1.0, 0.5, 2.0]])
    joints_m, vertices_m = smpl_body.forward(poses, betas=betas, transl_m=transl)
    assert joints_m.shape == (3, 22, 3) and vertices_m.shape == (3, NUM_VERTICES, 3)
    reference = smplx.SMPL(model_path=str(smpl_file), batch_size=3,
                           data_struct=smplx.utils.Struct(**np.load(smpl_file)))
    full_pose = poses.axis_angle()
    out = reference(global_orient=full_pose[:, :3], body_pose=torch.cat([full_pose[:, 3:], torch.zeros(3, 6)], 1),
                    betas=betas, transl=transl)
    torch.testing.assert_close(joints_m, out.joints[:, :22])
    torch.testing.assert_close(vertices_m, out.vertices)
    assert smpl_body.faces.shape == (2000, 3) and smpl_body.faces.dtype == np.int64
    assert smpl_body.num_vertices == NUM_VERTICES and smpl_body.device.type == "cpu"


def test_identity_pose_gives_the_regressed_rest_joints(smpl_file, smpl_body) -> None:
    data = dict(np.load(smpl_file))
    joints_m, vertices_m = smpl_body(Pose.identity())
    expected = data["J_regressor"] @ data["v_template"]
    np.testing.assert_allclose(joints_m[0].numpy(), expected[:22], atol=1e-5)
    np.testing.assert_allclose(vertices_m[0].numpy(), data["v_template"], atol=1e-5)  # no pose blend shapes at rest
    np.testing.assert_allclose(smpl_body.rest_joints_m()[0].numpy(), expected[:22], atol=1e-5)


def test_the_22_joints_follow_our_forward_kinematics(smpl_body, poses) -> None:
    """Same tree, same order: our FK on the model's rest offsets reproduces the model's joints exactly."""
    betas = np.linspace(0.5, -0.5, 10, dtype=np.float32)
    transl = np.array([0.3, -0.1, 0.7], dtype=np.float32)
    joints_m, _ = smpl_body.forward(poses, betas=betas, transl_m=transl)
    offsets = smpl_body.rest_offsets_m(betas)[0].double()
    pelvis = smpl_body.rest_joints_m(betas)[0, 0].double()
    fk_joints, _ = forward_kinematics(poses.rotmat.double(), offsets_m=offsets)
    expected = fk_joints + pelvis + torch.from_numpy(transl).double()
    torch.testing.assert_close(joints_m.double(), expected, atol=2e-5, rtol=0)
    # and the same pose on the built-in skeleton keeps the same bone directions
    ours = poses.joints()
    bone_ours = ours[:, 4] - ours[:, 1]
    bone_smpl = joints_m[:, 4] - joints_m[:, 1]
    cosine = torch.nn.functional.cosine_similarity(bone_ours, bone_smpl, dim=-1)
    assert torch.all(cosine > 0.98)


def test_short_betas_are_padded_and_inputs_validated(smpl_body) -> None:
    a, _ = smpl_body(Pose.identity(), betas=[1.0, 2.0])
    b, _ = smpl_body(Pose.identity(), betas=[1.0, 2.0] + [0.0] * 8)
    torch.testing.assert_close(a, b)
    with pytest.raises(InvalidInputError, match=r"betas of shape \[11\].*K <= 10"):
        smpl_body(Pose.identity(), betas=np.zeros(11, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="betas"):
        smpl_body(Pose.identity(2), betas=np.zeros((3, 10), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="betas"):
        smpl_body(Pose.identity(), betas=np.array([np.nan]))
    with pytest.raises(InvalidInputError, match=r"transl_m of shape \[2\]"):
        smpl_body(Pose.identity(), transl_m=np.zeros(2))
    joints_m, _ = smpl_body(np.zeros((2, 66), dtype=np.float32))  # anything Pose.from_any takes
    assert joints_m.shape == (2, 22, 3)


def test_smplh_npz_model(tmp_path, poses) -> None:
    """SMPL-H files (npz, 52 joints, hand PCA keys): the adapter leaves the fingers flat and returns 22 joints."""
    parents = _smplh_parents()
    data = _synthetic_model(parents, seed=1)
    data.update(hands_componentsl=np.eye(45), hands_componentsr=np.eye(45), hands_meanl=np.zeros(45),
                hands_meanr=np.zeros(45))
    folder = tmp_path / "models" / "smplh"
    folder.mkdir(parents=True)
    np.savez(folder / "SMPLH_NEUTRAL.npz", **data)
    body = SMPLBody(tmp_path / "models", model_type="smplh")  # found in the <model_type>/ folder
    assert body.model_file == folder / "SMPLH_NEUTRAL.npz"
    joints_m, vertices_m = body(poses)
    assert joints_m.shape == (3, 22, 3) and vertices_m.shape == (3, NUM_VERTICES, 3)
    offsets = body.rest_offsets_m()[0].double()
    fk_joints, _ = forward_kinematics(poses.rotmat.double(), offsets_m=offsets)
    torch.testing.assert_close(joints_m.double(), fk_joints + body.rest_joints_m()[0, 0].double(), atol=2e-5,
                               rtol=0)


def test_directory_lookup_and_missing_files(smpl_file, tmp_path) -> None:
    assert SMPLBody(smpl_file.parent).model_file == smpl_file
    with pytest.raises(ModelNotFoundError, match="SMPL_FEMALE.npz") as info:
        SMPLBody(smpl_file.parent, gender="female")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match="does not exist.*not shipped"):
        SMPLBody(tmp_path / "nowhere")


def test_bad_arguments_and_bad_files(smpl_file, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="model_type='smpl-x'"):
        SMPLBody(smpl_file, model_type="smpl-x")
    with pytest.raises(InvalidInputError, match="gender='other'"):
        SMPLBody(smpl_file, gender="other")
    with pytest.raises(InvalidInputError, match="num_betas"):
        SMPLBody(smpl_file, num_betas=0)
    partial = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(partial, v_template=np.zeros((10, 3)))
    with pytest.raises(CheckpointError, match=r"without the arrays \['shapedirs'"):
        SMPLBody(partial)
    broken = tmp_path / "broken.npz"
    data = _synthetic_model(SMPL_PARENTS)
    np.savez(broken, **{**data, "kintree_table": np.zeros(3)})  # smplx itself fails on it
    with pytest.raises(CheckpointError, match="could not load as an SMPL model"):
        SMPLBody(broken)
    wrong_tree = tmp_path / "wrong.npz"
    data["kintree_table"][0, 5] = 1  # right_knee hanging off the left hip
    np.savez(wrong_tree, **data)
    with pytest.raises(CheckpointError, match="kinematic tree"):
        SMPLBody(wrong_tree)
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(CheckpointError, match="not a readable .npz archive"):
        SMPLBody(tmp_path / "text.npz")
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(CheckpointError, match="FIFO"):  # refused, not read (a FIFO would block)
        SMPLBody(tmp_path / "pipe.npz")


class _Payload:
    """Unpickling this creates a file: the proof that a pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickle_model_files_are_refused_without_running_them(tmp_path) -> None:
    marker = tmp_path / "pwned"
    data = {**_synthetic_model(SMPL_PARENTS), "hook": _Payload(marker)}
    for name in ("SMPL_NEUTRAL.pkl", "disguised.npz"):  # by suffix, and by content whatever the name says
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(data, handle, protocol=2)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "SMPL_NEUTRAL.pkl").write_bytes((tmp_path / "SMPL_NEUTRAL.pkl").read_bytes())
    for path in (tmp_path / "SMPL_NEUTRAL.pkl", folder, tmp_path / "disguised.npz"):
        with pytest.raises(CheckpointError) as info:
            SMPLBody(path)
        message = str(info.value)
        assert "pickle" in message and ".npz" in message and "np.savez" in message, message
    assert "run any code" in _refusal(tmp_path / "SMPL_NEUTRAL.pkl")  # the risk, said
    # An npz whose member is an object array (which smplx itself would unpickle) is refused too.
    np.savez(tmp_path / "object.npz", **{**_synthetic_model(SMPL_PARENTS), "hook": np.array([_Payload(marker)])})
    with pytest.raises(CheckpointError, match="pickled data"):
        SMPLBody(tmp_path / "object.npz")
    assert not marker.exists()


def _refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        SMPLBody(path)
    return str(info.value)


def test_smplx_npz_model_is_read_from_a_private_copy(tmp_path, poses, monkeypatch) -> None:
    """SMPL-X reads its file itself with pickle support on; it must only ever see the SDK's copy of the arrays."""
    seen: list[str] = []
    real_load = np.load

    def spy(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("allow_pickle"):
            seen.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(smplx.body_models.np, "load", spy)
    user_file = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(user_file, **_synthetic_model(SMPL_PARENTS))  # lacks the SMPL-X face arrays: smplx fails on it
    with pytest.raises(CheckpointError, match="could not load as an SMPLX model"):
        SMPLBody(user_file, model_type="smplx")
    assert seen and all(path != str(user_file) and "unipose-smplx-" in path for path in seen), seen
    assert not any(Path(path).exists() for path in seen)  # the private copy is gone


def test_without_smplx_the_error_says_how_to_install(smpl_file, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "smplx", None)  # makes `import smplx` raise ImportError
    with pytest.raises(BackendUnavailableError) as info:
        SMPLBody(smpl_file)
    message = str(info.value)
    assert 'pip install "unipose-sdk[smpl]"' in message and "non-commercial" in message


def test_core_imports_never_import_smplx_and_rendering_stays_headless(tmp_path) -> None:
    """One interpreter for every import-side-effect check (importing torch is the slow part): the core never
    imports smplx; unipose_sdk.body defers matplotlib until a renderer is asked for; rendering neither imports
    pyplot nor changes the process's matplotlib backend."""
    png = tmp_path / "p.png"
    code = (
        "import sys\n"
        "import unipose_sdk, unipose_sdk.body, unipose_sdk.body.pose, unipose_sdk.body.io\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported by unipose_sdk.body'\n"
        "import matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "from unipose_sdk.body import render_poses_png, load_example_pose, Pose\n"
        "import unipose_sdk.body.render, unipose_sdk.body.examples\n"
        f"render_poses_png(load_example_pose(), {str(png)!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "bad = sorted(m for m in sys.modules if m == 'smplx' or m.startswith('smplx.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
