"""Optional bridge to real SMPL / SMPL-H / SMPL-X body models (meshes and exact joints) through `smplx`.

The core SDK never needs this: poses, forward kinematics and rendering use the built-in skeleton. Meshes and the
paper's metrics need a body model, and both the `smplx` package and the SMPL-family model files come under
their own NON-COMMERCIAL licences, so they are an extra (`pip install "unipose-sdk[smpl]"`) and the model files
are never shipped or downloaded: the user passes the path of files they obtained themselves.

`smplx` is imported only when an `SMPLBody` is built; no other module of the SDK imports this one.

UniPose's 22 joints are the first 22 joints of all three models (same order, same parents), so the adapter passes
the Pose's global orientation and 21 body joints and leaves the hands (SMPL's two hand joints, SMPL-H / SMPL-X
fingers) and the SMPL-X face at rest.

Model files are read as `.npz` only, with NumPy's pickle support off, and their arrays handed to smplx; a `.pkl`
model file is refused. Unpickling a file runs whatever code it names, so a `.pkl` from anywhere but the official
site is a program, not data (and smplx also unpickles object members of an `.npz`). To use an official `.pkl`,
convert it once yourself, knowingly, in an environment you trust (it needs the packages the file was pickled with,
such as chumpy and scipy):

    import pickle, numpy as np
    with open("SMPL_NEUTRAL.pkl", "rb") as f:
        data = pickle.load(f, encoding="latin1")  # runs the file's code: only for a file you trust
    arrays = {k: v.toarray() if hasattr(v, "toarray") else np.asarray(v) for k, v in data.items()}
    np.savez("SMPL_NEUTRAL.npz", **{k: v for k, v in arrays.items() if v.dtype != object})
"""

from __future__ import annotations

import importlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import NUM_JOINTS, PARENTS
from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError, ModelNotFoundError
from unipose_sdk.fileio import open_regular_file

MODEL_TYPES = ("smpl", "smplh", "smplx")
GENDERS = ("neutral", "male", "female")
_FILE_PREFIX = {"smpl": "SMPL", "smplh": "SMPLH", "smplx": "SMPLX"}
# Looked up in a directory in this order; a .pkl is found only to be refused with the conversion hint.
_EXTENSIONS = (".npz", ".pkl")
# The arrays every SMPL-family model file holds (smplx reads more for SMPL-H hands and the SMPL-X face).
REQUIRED_ARRAYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
_CONVERT_HINT = (
    "Convert the official .pkl once to .npz yourself, in an environment you trust: load it with "
    "pickle.load(f, encoding='latin1'), turn sparse matrices into arrays (.toarray()) and the rest with "
    "np.asarray, drop entries of dtype object, and np.savez the arrays (the snippet is in the docstring of "
    "unipose_sdk.body.smpl_adapter); smplx reads the resulting .npz, and so does the SDK."
)
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
    if path.exists() and not path.is_dir():
        return path  # a file, or something else that the reader refuses by name (a FIFO, a device)
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
                             f"{model_type.upper()} model file ({stem}.npz) or a directory holding one. "
                             f"Check the path; the files are not shipped with unipose-sdk (licence).")


def read_model_arrays(path: Path, model_type: str) -> dict[str, np.ndarray]:
    """The arrays of an SMPL-family `.npz` model file, read without unpickling anything; a `.pkl` file, a pickled
    or object member and a file that is not an npz archive are CheckpointErrors naming the file."""
    what = f"{model_type.upper()} model file"
    if path.suffix.lower() == ".pkl":
        raise CheckpointError.make(
            f"the {what} {str(path)!r}, a Python pickle: loading it would run any code the file names, so the SDK "
            "never unpickles a model file", f"the {what} as .npz (plain arrays, read with pickle support off)",
            _CONVERT_HINT)
    handle = open_regular_file(path, what, CheckpointError, "Pass the path of the .npz model file.")
    with handle:
        magic = handle.read(4)
        handle.seek(0)
        try:
            if magic[:1] == b"\x80":  # a pickle (protocol 2+), whatever the file is named
                raise ValueError("pickled data")
            if not magic.startswith(b"PK"):
                raise zipfile.BadZipFile(f"starts with {magic!r}, not a zip archive's 'PK'")
            with np.load(handle, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            pickled = "pickle" in str(exc).lower() or "object arrays" in str(exc).lower()
            found = ("pickled data (a pickle file or object arrays), which is never loaded" if pickled
                     else f"not a readable .npz archive ({type(exc).__name__}: {exc})")
            raise CheckpointError.make(f"the {what} {str(path)!r}, holding {found}",
                                       f"the {what} as .npz of plain numeric arrays", _CONVERT_HINT) from None
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise CheckpointError.make(f"the {what} {str(path)!r} without the arrays {missing}",
                                   f"an {what} holding {list(REQUIRED_ARRAYS)}",
                                   "Check model_type, or convert the official file again.")
    return arrays


def _build_smplx_model(smplx: Any, model_type: str, arrays: dict[str, np.ndarray], common: dict[str, Any]) -> Any:
    """The smplx module over arrays already read safely. SMPL and SMPL-H take them as `data_struct`; SMPL-X always
    reads a file itself (with np.load(allow_pickle=True)), so it is handed a private copy that the SDK wrote from
    the plain arrays, never the user's file."""
    from smplx.utils import Struct

    if model_type == "smpl":
        return smplx.SMPL(**common, data_struct=Struct(**arrays))
    if model_type == "smplh":
        return smplx.SMPLH(**common, data_struct=Struct(**arrays), ext="npz", use_pca=False, flat_hand_mean=True)
    with tempfile.TemporaryDirectory(prefix="unipose-smplx-") as private:
        copy = Path(private) / f"SMPLX_{common['gender'].upper()}.npz"
        np.savez(copy, **arrays)
        return smplx.SMPLX(**{**common, "model_path": str(copy)}, ext="npz", use_pca=False, flat_hand_mean=True)


class SMPLBody:
    """An SMPL-family body model: Pose (+ betas, translation) -> 22 joints and mesh vertices, in metres.

    model_path: a model file (e.g. SMPL_NEUTRAL.npz, SMPLH_NEUTRAL.npz, SMPLX_NEUTRAL.npz) or a directory holding
    `<TYPE>_<GENDER>.npz` directly or in a `<model_type>/` folder (smplx's layout). `.pkl` files are refused (see
    the module docstring for the one-time conversion).
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
        arrays = read_model_arrays(self.model_file, model_type)
        common = {"model_path": str(self.model_file), "gender": gender, "num_betas": num_betas, "batch_size": 1}
        try:
            model = _build_smplx_model(smplx, model_type, arrays, common)
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

        def zeros(n: int) -> Tensor:
            return torch.zeros(batch, n, device=self.device)

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
