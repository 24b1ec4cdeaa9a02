"""Train the embedded unipose-tiny pose tokenizer (stage 0 of the embedded model).

    python -m unipose_sdk.training.pose_tokenizer --out runs/pose_tokenizer --steps 2400 --seed 0

Resumable: `OUT/train_state.pt` holds model, EMA codebook statistics, optimiser, step, elapsed time and the
random-number state; running the same command again continues where it stopped. `--time-budget-min` bounds
the training time: the run then finishes early, with its learning-rate decay completed. At the end it evaluates
on held-out poses and writes the shippable tokenizer (fp16 safetensors + config.json + metrics.json) to
`OUT/pose_tokenizer/`.

Training poses come from the project's pose sampler (`unipose_sdk.data.poses.sample_poses`: archetypes, blends
and coupled free poses within per-joint limits; no motion-capture data is available here). Half keep their
upright root, half get a random yaw; all roots are then perturbed like the official training (see
`perturb_root`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d
from unipose_sdk.body.skeleton import NUM_JOINTS
from unipose_sdk.checkpoint.pose_tokenizer import save_pose_tokenizer
from unipose_sdk.data.poses import sample_poses
from unipose_sdk.fileio import atomic_write
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.pose_tokenizer import PoseTokenizer, code_perplexity, mpjpe_mm

logger = logging.getLogger(__name__)

SAMPLER_NAME = "unipose_sdk.data.poses.sample_poses (half upright, half random yaw) + official-style root perturbation"
HELD_OUT_SEED_OFFSET = 1_000_003  # held-out poses come from a stream the training stream never reaches

# The official training perturbs the root by z +-45 and x/y +-20 degrees in its z-up (AMASS) world. The SDK's
# poses live in SMPL's y-up frame (identity root = upright, facing +z), so the same perturbation is
# vertical axis (y) +-45 degrees and the two horizontal axes (x, z) +-20 degrees.
ROOT_PERTURB_DEG = {"x": 20.0, "y": 45.0, "z": 20.0}


def _axis_rotation(axis: int, angle_rad: Tensor) -> Tensor:
    """[n] angles -> [n, 3, 3] rotations about one coordinate axis."""
    axis_angle = torch.zeros(angle_rad.shape[0], 3, dtype=angle_rad.dtype)
    axis_angle[:, axis] = angle_rad
    return axis_angle_to_matrix(axis_angle)


def perturb_root(rotmat: Tensor, rng: np.random.Generator) -> Tensor:
    """Left-multiply each global orientation by a random world rotation: a tilt about x and z within +-20 deg,
    then a turn about the vertical (y) within +-45 deg (the official augmentation, in the y-up frame)."""
    n = rotmat.shape[0]
    angles = {a: torch.from_numpy(rng.uniform(-lim, lim, size=n)).to(rotmat.dtype) * (math.pi / 180)
              for a, lim in ROOT_PERTURB_DEG.items()}
    world = _axis_rotation(1, angles["y"]) @ _axis_rotation(0, angles["x"]) @ _axis_rotation(2, angles["z"])
    out = rotmat.clone()
    out[:, 0] = world @ rotmat[:, 0]
    return out


def sample_rotmat(n: int, rng: np.random.Generator) -> Tensor:
    """[n, 22, 3, 3] float32 training poses: the project's pose sampler (archetypes, blends, coupled free poses),
    half with each archetype's own upright root and half with a random yaw and tilt, then root-perturbed."""
    n_upright = n // 2
    upright, _ = sample_poses(n_upright, rng, global_orient="upright")
    turned, _ = sample_poses(n - n_upright, rng, global_orient="random")
    axis_angle = torch.from_numpy(np.concatenate([upright, turned])).reshape(n, NUM_JOINTS, 3)
    return perturb_root(axis_angle_to_matrix(axis_angle), rng).float()


def sample_training_batch(n: int, rng: np.random.Generator) -> Tensor:
    """[n, 22, 6] training poses as 6D."""
    return matrix_to_rotation_6d(sample_rotmat(n, rng))


def held_out_rotmat(n: int, seed: int) -> Tensor:
    return sample_rotmat(n, np.random.default_rng(seed + HELD_OUT_SEED_OFFSET))


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
                rng: np.random.Generator, args: dict[str, Any]) -> None:
    state = {
        "model": model.state_dict(),
        "ema": {"code_sum": model.quantizer.code_sum, "code_count": model.quantizer.code_count,
                "initialized": model.quantizer.initialized},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "data_rng": json.dumps(rng.bit_generator.state),  # a JSON string: loadable with weights_only=True
        "torch_rng": torch.random.get_rng_state(),
        "args": args,
    }
    atomic_write(path, lambda handle: torch.save(state, handle))  # no temporary file survives a failure


def train(out_dir: str | os.PathLike, steps: int, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
          weight_decay: float = 1e-4, time_budget_min: float | None = None, eval_every: int = 500,
          save_every: int = 200, num_eval_poses: int = 2048, threads: int = 1) -> dict[str, Any]:
    """Train (or resume) the unipose-tiny tokenizer; returns the metrics dict (also written to disk).

    Training ends after `steps` steps or, when `time_budget_min` is given, once that much training time has
    passed, whichever comes first; the learning-rate schedule follows whichever of the two is further along, so
    a time-bounded run on a busy machine still finishes its decay. Kill it any time: rerunning resumes.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(Path(out_dir), steps, seed, batch_size, lr, weight_decay, time_budget_min, eval_every,
                      save_every, num_eval_poses, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _train(out: Path, steps: int, seed: int, batch_size: int, lr: float, weight_decay: float,
           time_budget_min: float | None, eval_every: int, save_every: int, num_eval_poses: int,
           threads: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    args = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay}

    torch.manual_seed(seed)
    model = PoseTokenizer(get_preset("unipose-tiny").pose_tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    step, elapsed_s = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        for name, value in state["ema"].items():
            getattr(model.quantizer, name).copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["data_rng"])
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
        out_step = model(sample_training_batch(batch_size, rng))
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
            _save_state(state_path, model, optimizer, step, time.perf_counter() - started, rng, args)
    _save_state(state_path, model, optimizer, step, time.perf_counter() - started, rng, args)

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
        "root_perturbation_deg": ROOT_PERTURB_DEG,
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
