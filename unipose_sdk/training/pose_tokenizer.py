"""Train the embedded unipose-tiny pose tokenizer (stage 0 of the embedded model).

    python -m unipose_sdk.training.pose_tokenizer --out runs/pose_tokenizer --steps 2400 --seed 0

Resumable: `OUT/train_state.pt` holds model, EMA codebook statistics, optimiser, step, elapsed time and the
random-number state; running the same command again continues where it stopped. `--time-budget-min` bounds
the training time: the run then finishes early, with its learning-rate decay completed. At the end it evaluates
on held-out poses and writes the shippable tokenizer (fp16 safetensors + config.json + metrics.json) to
`OUT/pose_tokenizer/`.

Training poses come from `sample_plausible_rotmat` below: a built-in sampler with per-joint rotation limits
(no motion-capture data is available here). The root is placed like the official training data (AMASS,
z-up: a +90 degree x rotation) and then perturbed like the official training: z +-45, x/y +-20 degrees.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d
from unipose_sdk.body.skeleton import JOINT_NAMES, NUM_JOINTS
from unipose_sdk.checkpoint.pose_tokenizer import save_pose_tokenizer
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.pose_tokenizer import PoseTokenizer, code_perplexity, mpjpe_mm

logger = logging.getLogger(__name__)

SAMPLER_NAME = "builtin-joint-limits-v1"
HELD_OUT_SEED_OFFSET = 1_000_003  # held-out poses come from a stream the training stream never reaches

# Local rotation limits in degrees, (x, y, z) Euler ranges, for the LEFT side and the centre line; the right side
# mirrors the left (y and z ranges negated). SMPL frame: +x to the body's left, +y up, +z forward.
# Knees flex only backwards (+x), elbows only forwards (-y on the left arm), spine rotations stay small.
_LIMITS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "left_hip": ((-110, 30), (-35, 35), (-15, 45)),
    "spine1": ((-10, 30), (-15, 15), (-10, 10)),
    "left_knee": ((0, 140), (-5, 5), (-5, 5)),
    "spine2": ((-10, 20), (-15, 15), (-8, 8)),
    "left_ankle": ((-25, 40), (-15, 15), (-15, 15)),
    "spine3": ((-10, 20), (-15, 15), (-8, 8)),
    "left_foot": ((-10, 20), (-5, 5), (-5, 5)),
    "neck": ((-25, 35), (-30, 30), (-15, 15)),
    "left_collar": ((-10, 10), (-15, 15), (-10, 20)),
    "head": ((-20, 25), (-40, 40), (-15, 15)),
    "left_shoulder": ((-45, 45), (-90, 40), (-80, 45)),
    "left_elbow": ((-10, 10), (-145, 0), (-5, 5)),
    "left_wrist": ((-30, 30), (-20, 20), (-45, 45)),
}
_ROOT_BASE_JITTER_DEG = (10.0, 10.0, 10.0)  # natural lean of the sampled body before the official perturbation
_ROOT_PERTURB_DEG = (20.0, 20.0, 45.0)  # official augmentation: x/y +-20, z +-45 (world axes, z up)


def _limit_table() -> tuple[Tensor, Tensor]:
    """[22, 3] lower and upper Euler limits in radians (joint 0, the root, is handled separately: zeros)."""
    lo, hi = torch.zeros(NUM_JOINTS, 3), torch.zeros(NUM_JOINTS, 3)
    for j, name in enumerate(JOINT_NAMES[1:], start=1):
        mirrored = name.startswith("right_")
        limits = _LIMITS_DEG[name.replace("right_", "left_")]
        for axis, (a, b) in enumerate(limits):
            if mirrored and axis > 0:  # mirroring across the x=0 plane negates y and z rotations
                a, b = -b, -a
            lo[j, axis], hi[j, axis] = math.radians(a), math.radians(b)
    return lo, hi


def _euler_xyz_to_matrix(angles: Tensor) -> Tensor:
    """[..., 3] intrinsic x-then-y-then-z angles (radians) -> [..., 3, 3] = Rx @ Ry @ Rz."""
    eye = torch.eye(3, dtype=angles.dtype)
    mats = [axis_angle_to_matrix(eye[i] * angles[..., i:i + 1]) for i in range(3)]
    return mats[0] @ mats[1] @ mats[2]


def _uniform(shape: tuple[int, ...], low: Tensor | float, high: Tensor | float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def perturb_root(rotmat: Tensor, generator: torch.Generator) -> Tensor:
    """Left-multiply the global orientation by a random world rotation: z +-45 deg, x/y +-20 deg (official)."""
    limit = torch.tensor([math.radians(d) for d in _ROOT_PERTURB_DEG])
    angles = _uniform((rotmat.shape[0], 3), -limit, limit, generator)
    out = rotmat.clone()
    out[:, 0] = _euler_xyz_to_matrix(angles.flip(-1)).to(rotmat.dtype) @ rotmat[:, 0]  # z, then x/y tilt
    return out


def sample_plausible_rotmat(n: int, generator: torch.Generator) -> Tensor:
    """[n, 22, 3, 3] random but anatomically plausible local rotations (float32), root in the AMASS z-up frame.

    Each pose draws an intensity in [0.25, 1] that scales all its joint angles, so near-rest poses and extreme
    ones both occur; within a pose every angle is uniform inside its (scaled) limit range, which contains 0.
    """
    lo, hi = _limit_table()
    intensity = _uniform((n, 1, 1), 0.25, 1.0, generator)
    angles = intensity * _uniform((n, NUM_JOINTS, 3), lo, hi, generator)
    rotmat = _euler_xyz_to_matrix(angles)
    jitter = torch.tensor([math.radians(d) for d in _ROOT_BASE_JITTER_DEG])
    body_lean = _euler_xyz_to_matrix(_uniform((n, 3), -jitter, jitter, generator))
    z_up = axis_angle_to_matrix(torch.tensor([math.pi / 2, 0.0, 0.0]))  # SMPL y-up body -> AMASS z-up world
    rotmat[:, 0] = z_up @ body_lean
    return rotmat.float()


def sample_training_batch(n: int, generator: torch.Generator) -> Tensor:
    """[n, 22, 6]: plausible poses with the official root perturbation, as 6D."""
    return matrix_to_rotation_6d(perturb_root(sample_plausible_rotmat(n, generator), generator))


def held_out_rotmat(n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + HELD_OUT_SEED_OFFSET)
    return perturb_root(sample_plausible_rotmat(n, generator), generator)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: PoseTokenizer, rotmat: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Encode + decode held-out poses: MPJPE in mm (FK joints, root aligned) and codebook usage."""
    was_training = model.training
    model.eval()
    errors, codes = [], []
    for start in range(0, rotmat.shape[0], batch_size):
        chunk = rotmat[start:start + batch_size]
        c = model.encode(matrix_to_rotation_6d(chunk))
        errors.append(mpjpe_mm(model.decode_rotmat(c), chunk))
        codes.append(c)
    model.train(was_training)
    err, all_codes = torch.cat(errors), torch.cat(codes)
    return {
        "mpjpe_mm_mean": round(float(err.mean()), 2),
        "mpjpe_mm_median": round(float(err.median()), 2),
        "mpjpe_mm_p90": round(float(err.quantile(0.9)), 2),
        "codes_used": int(all_codes.unique().numel()),
        "codebook_size": model.config.codebook_size,
        "perplexity": round(float(code_perplexity(all_codes, model.config.codebook_size)), 1),
        "num_poses": int(rotmat.shape[0]),
    }


# ----------------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------------


def learning_rate(step: int, progress: float, peak: float, warmup: int = 100, final_ratio: float = 0.05) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to final_ratio * peak as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, max(0.0, progress))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_state(path: Path, model: PoseTokenizer, optimizer: torch.optim.Optimizer, step: int, elapsed_s: float,
                generator: torch.Generator, args: dict[str, Any]) -> None:
    state = {
        "model": model.state_dict(),
        "ema": {"code_sum": model.quantizer.code_sum, "code_count": model.quantizer.code_count,
                "initialized": model.quantizer.initialized},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "data_rng": generator.get_state(),
        "torch_rng": torch.random.get_rng_state(),
        "args": args,
    }
    fd, tmp = tempfile.mkstemp(prefix=".train_state.", dir=path.parent)
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(out_dir: str | os.PathLike, steps: int, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
          weight_decay: float = 1e-4, time_budget_min: float | None = None, eval_every: int = 500,
          save_every: int = 200, num_eval_poses: int = 2048, threads: int = 1) -> dict[str, Any]:
    """Train (or resume) the unipose-tiny tokenizer; returns the metrics dict (also written to disk).

    Training ends after `steps` steps or, when `time_budget_min` is given, once that much training time has
    passed, whichever comes first; the learning-rate schedule follows whichever of the two is further along, so
    a time-bounded run on a busy machine still finishes its decay. Kill it any time: rerunning resumes.
    """
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    args = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay}

    torch.manual_seed(seed)
    model = PoseTokenizer(get_preset("unipose-tiny").pose_tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, elapsed_s = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        for name, value in state["ema"].items():
            getattr(model.quantizer, name).copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["data_rng"])
        torch.random.set_rng_state(state["torch_rng"])
        step, elapsed_s = int(state["step"]), float(state["elapsed_s"])
        logger.info("resumed from %s at step %d (%.0f s trained)", state_path, step, elapsed_s)

    held_out = held_out_rotmat(num_eval_poses, seed)
    started = time.perf_counter() - elapsed_s
    budget_s = None if time_budget_min is None else 60.0 * time_budget_min

    def progress() -> float:
        by_time = 0.0 if budget_s is None else (time.perf_counter() - started) / budget_s
        return max(step / steps, by_time)

    history: list[dict[str, Any]] = []
    while progress() < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress(), lr)
        out_step = model(sample_training_batch(batch_size, generator))
        optimizer.zero_grad(set_to_none=True)
        out_step.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            terms = " ".join(f"{k} {v.item():.4f}" for k, v in out_step.losses.items())
            logger.info("step %d loss %.4f (%s) perplexity %.0f lr %.2e %.0f s", step, out_step.loss.item(), terms,
                        float(out_step.perplexity), optimizer.param_groups[0]["lr"], time.perf_counter() - started)
        if step % eval_every == 0:
            metrics = evaluate(model, held_out[:512])
            history.append({"step": step, **metrics})
            logger.info("eval step %d: %s", step, metrics)
        if step % save_every == 0:
            _save_state(state_path, model, optimizer, step, time.perf_counter() - started, generator, args)
    _save_state(state_path, model, optimizer, step, time.perf_counter() - started, generator, args)

    train_time_s = time.perf_counter() - started
    final = evaluate(model, held_out)
    metrics = {
        "model": "unipose-tiny pose tokenizer",
        "held_out": final,
        "steps": step,
        "max_steps": steps,
        "time_budget_min": time_budget_min,
        "batch_size": batch_size,
        "train_time_s": round(train_time_s, 1),
        "threads": threads,
        "seed": seed,
        "sampler": SAMPLER_NAME,
        "sampler_note": "built-in per-joint rotation limits; root in AMASS z-up frame, perturbed z+-45 x/y+-20 deg",
        "losses": "rotmat MSE x20 + FK joint MSE x100 (built-in skeleton) + commitment x1; no vertex loss",
        "mpjpe_note": "FK joints of the built-in skeleton, pelvis aligned, millimetres",
        "history": history,
        "torch": torch.__version__,
    }
    model.eval()
    save_pose_tokenizer(model, out / "pose_tokenizer", dtype=torch.float16, extra_files={"metrics.json": metrics})
    logger.info("done: %s", final)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run directory (train_state.pt, pose_tokenizer/)")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--time-budget-min", type=float, default=None,
                        help="finish (schedule, evaluation, export) after this much training time")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    result = train(args.out, args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                   time_budget_min=args.time_budget_min, eval_every=args.eval_every, threads=args.threads)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
