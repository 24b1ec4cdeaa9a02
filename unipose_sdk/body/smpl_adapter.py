"""Optional bridge to real SMPL / SMPL-H / SMPL-X body models (meshes and exact joints) through `smplx`.

The core SDK never needs this: poses, forward kinematics and rendering use the built-in skeleton. Meshes and the
paper's metrics need a body model, and both the `smplx` package and the SMPL-family model files come under
their own NON-COMMERCIAL licences, so they are an extra (`pip install "unipose-sdk[smpl]"`) and the model files
are never shipped or downloaded: the user passes the path of files they obtained themselves.

`smplx` is imported only when an `SMPLBody` is built; no other module of the SDK imports this one.

UniPose's 22 joints are the first 22 joints of all three models (same order, same parents), so the adapter passes
the Pose's global orientation and 21 body joints and leaves the hands (SMPL's two hand joints, SMPL-H / SMPL-X
fingers) and the SMPL-X face at rest.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import NUM_JOINTS, PARENTS
from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError, ModelNotFoundError

MODEL_TYPES = ("smpl", "smplh", "smplx")
GENDERS = ("neutral", "male", "female")
_FILE_PREFIX = {"smpl": "SMPL", "smplh": "SMPLH", "smplx": "SMPLX"}
_EXTENSIONS = (".pkl", ".npz")
_INSTALL_HINT = (
    'Install it with `pip install "unipose-sdk[smpl]"` (the smplx package). Note that smplx and the SMPL / SMPL-H / '
    "SMPL-X model files are distributed under their own non-commercial licences: check they fit your use, and "
    "download the model files yourself from their official sites."
)


def _import_smplx() -> Any:
    try:
        return importlib.import_module("smplx")
    except ImportError as exc:
        raise BackendUnavailableError(f"received a request for an SMPL body model, but the optional package smplx "
                                      f"cannot be imported ({exc}); expected smplx to be installed. "
                                      f"{_INSTALL_HINT}") from None


def _resolve_model_file(model_path: str | os.PathLike, model_type: str, gender: str) -> Path:
    """A model file path as given, or the standard file name inside a directory (or its `<model_type>/` folder)."""
    path = Path(model_path).expanduser()
    if path.is_file():
        return path
    stem = f"{_FILE_PREFIX[model_type]}_{gender.upper()}"
    tried = [folder / f"{stem}{ext}" for folder in (path, path / model_type) for ext in _EXTENSIONS]
    if path.is_dir():
        for candidate in tried:
            if candidate.is_file():
                return candidate
        raise ModelNotFoundError(f"received the model directory {str(path)!r}, which holds none of "
                                 f"{[str(c.relative_to(path)) for c in tried]}; expected an {model_type.upper()} "
                                 f"model file for gender {gender!r} there. Pass the model file's path directly, "
                                 f"or check model_type and gender.")
    raise ModelNotFoundError(f"received the model path {str(path)!r}, which does not exist; expected an "
                             f"{model_type.upper()} model file ({stem}.pkl / .npz) or a directory holding one. "
                             f"Check the path; the files are not shipped with unipose-sdk (licence).")


class SMPLBody:
    """An SMPL-family body model: Pose (+ betas, translation) -> 22 joints and mesh vertices, in metres.

    model_path: a model file (e.g. SMPL_NEUTRAL.pkl, SMPLH_NEUTRAL.npz, SMPLX_NEUTRAL.npz) or a directory holding
    `<TYPE>_<GENDER>.pkl|npz` directly or in a `<model_type>/` folder (smplx's layout).
    """

    def __init__(self, model_path: str | os.PathLike, model_type: str = "smpl", gender: str = "neutral",
                 num_betas: int = 10, device: str | torch.device = "cpu") -> None:
        if model_type not in MODEL_TYPES:
            raise InvalidInputError(f"received model_type={model_type!r}; expected one of {list(MODEL_TYPES)}. "
                                    f"Pick the type matching your model file.")
        if gender not in GENDERS:
            raise InvalidInputError(f"received gender={gender!r}; expected one of {list(GENDERS)}.")
        if not isinstance(num_betas, int) or num_betas < 1:
            raise InvalidInputError(f"received num_betas={num_betas!r}; expected an int >= 1 (usually 10).")
        smplx = _import_smplx()
        self.model_type, self.gender = model_type, gender
        self.model_file = _resolve_model_file(model_path, model_type, gender)
        ext = self.model_file.suffix.lstrip(".") or "pkl"
        common = {"model_path": str(self.model_file), "gender": gender, "num_betas": num_betas, "batch_size": 1}
        try:
            if model_type == "smpl":
                model = smplx.SMPL(**common)
            elif model_type == "smplh":
                model = smplx.SMPLH(**common, ext=ext, use_pca=False, flat_hand_mean=True)
            else:
                model = smplx.SMPLX(**common, ext=ext, use_pca=False, flat_hand_mean=True)
        except (KeyError, AttributeError, ValueError, TypeError, EOFError, OSError, RuntimeError, IndexError,
                ImportError) as exc:
            raise CheckpointError(f"received {str(self.model_file)!r}, which smplx could not load as an "
                                  f"{model_type.upper()} model ({type(exc).__name__}: {exc}); expected an official "
                                  f"{model_type.upper()} model file. Check model_type, or re-download the file."
                                  ) from None
        if model.J_regressor.shape[0] < NUM_JOINTS or tuple(model.parents[:NUM_JOINTS].tolist()) != PARENTS:
            raise CheckpointError(f"received {str(self.model_file)!r} with {model.J_regressor.shape[0]} joints and "
                                  f"parents {model.parents[:NUM_JOINTS].tolist()}; expected the SMPL kinematic tree "
                                  f"(first 22 parents {list(PARENTS)}). Use an SMPL-family model file.")
        self._model = model.to(device).eval()
        self.num_betas = int(model.num_betas)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self._model.v_template.device

    @property
    def num_vertices(self) -> int:
        return int(self._model.v_template.shape[0])

    @property
    def faces(self) -> np.ndarray:
        """[F, 3] int64 vertex indices of the mesh triangles."""
        return np.asarray(self._model.faces, dtype=np.int64)

    def to(self, device: str | torch.device) -> SMPLBody:
        self._model.to(device)
        return self

    # ------------------------------------------------------------------ inputs
    def _betas(self, betas: Any, batch: int) -> Tensor:
        if betas is None:
            return torch.zeros(batch, self.num_betas, device=self.device)
        b = torch.as_tensor(np.asarray(betas) if not isinstance(betas, Tensor) else betas)
        if not b.is_floating_point() or b.ndim not in (1, 2) or b.shape[-1] > self.num_betas or (
                b.ndim == 2 and b.shape[0] not in (1, batch)) or not bool(torch.isfinite(b).all()):
            raise InvalidInputError(f"received betas of shape {list(b.shape)} and dtype {b.dtype}; expected finite "
                                    f"floats [K] or [{batch}, K] with K <= {self.num_betas} (the model's shape "
                                    f"coefficients). Build the SMPLBody with a larger num_betas, or trim betas.")
        b = b.to(device=self.device, dtype=torch.float32).reshape(-1, b.shape[-1]).expand(batch, -1)
        return torch.nn.functional.pad(b, (0, self.num_betas - b.shape[-1]))

    def _transl(self, transl_m: Any, batch: int) -> Tensor:
        if transl_m is None:
            return torch.zeros(batch, 3, device=self.device)
        t = torch.as_tensor(np.asarray(transl_m) if not isinstance(transl_m, Tensor) else transl_m)
        if not t.is_floating_point() or not (t.shape == (3,) or (t.ndim == 2 and t.shape[1] == 3
                                                                 and t.shape[0] in (1, batch))):
            raise InvalidInputError(f"received transl_m of shape {list(t.shape)} and dtype {t.dtype}; expected "
                                    f"floats [3] or [{batch}, 3] in metres.")
        return t.to(device=self.device, dtype=torch.float32).reshape(-1, 3).expand(batch, 3)

    # ------------------------------------------------------------------ outputs
    def forward(self, pose: Any, betas: Any = None, transl_m: Any = None) -> tuple[Tensor, Tensor]:
        """(joints_m [B, 22, 3], vertices_m [B, V, 3]) float32 for a Pose (or anything `Pose.from_any` takes)."""
        pose = Pose.from_any(pose)
        batch = len(pose)
        smpl = {k: v.to(self.device) for k, v in pose.to_smpl().items()}
        zeros = lambda n: torch.zeros(batch, n, device=self.device)
        kwargs: dict[str, Tensor] = {"global_orient": smpl["global_orient"], "betas": self._betas(betas, batch),
                                     "transl": self._transl(transl_m, batch)}
        if self.model_type == "smpl":
            kwargs["body_pose"] = torch.cat([smpl["body_pose"], zeros(6)], dim=1)  # SMPL's two hand joints at rest
        else:
            kwargs["body_pose"] = smpl["body_pose"]
            kwargs["left_hand_pose"], kwargs["right_hand_pose"] = zeros(45), zeros(45)
        if self.model_type == "smplx":
            kwargs.update(jaw_pose=zeros(3), leye_pose=zeros(3), reye_pose=zeros(3),
                          expression=zeros(int(self._model.num_expression_coeffs)))
        output = self._model(**kwargs, return_verts=True)
        return output.joints[:, :NUM_JOINTS], output.vertices

    __call__ = forward

    def rest_joints_m(self, betas: Any = None) -> Tensor:
        """[B, 22, 3] joint positions of the rest pose for the given shape (B = 1 without betas), as smplx
        regresses them from the shaped template; the pelvis is where the model puts it, not at the origin."""
        batch = 1 if betas is None or np.ndim(betas) == 1 else int(np.shape(betas)[0])
        b = self._betas(betas, batch)
        with torch.no_grad():
            v_shaped = self._model.v_template + torch.einsum("bl,mkl->bmk", b, self._model.shapedirs)
            joints = torch.einsum("bik,ji->bjk", v_shaped, self._model.J_regressor)
        return joints[:, :NUM_JOINTS]

    def rest_offsets_m(self, betas: Any = None) -> Tensor:
        """[B, 22, 3] bone offsets (child minus parent) of the rest joints, for `forward_kinematics(offsets_m=)`:
        FK with these offsets plus the rest pelvis position reproduces the model's 22 joints exactly."""
        joints = self.rest_joints_m(betas)
        parents = torch.tensor([0, *PARENTS[1:]], device=joints.device)
        offsets = joints - joints[:, parents]
        offsets[:, 0] = 0.0
        return offsets
