"""The UniPose pose tokenizer: a 1-D convolutional VQ-VAE (TokenHMR style) over 22 joints x 6D rotations.

The 22 joints are treated as a length-22 sequence with 6 channels. The encoder stretches that sequence
(nearest-neighbour resampling) to 40, 80, 160 positions, halves it with a strided conv to `num_tokens` (80)
and projects to `code_dim`; every position is snapped to its nearest codebook entry (L2). The decoder resamples
the 80 code vectors down through 65, 51, 36 to 22 positions and projects back to 6 channels per joint.

Module and parameter names are the compatibility contract with the released Lightning checkpoint
(`state_dict` keys `encoder.encoder.<i>.*`, `decoder.decoder.<i>.*`, `quantizer.codebook`): the conv stacks are
plain `nn.Sequential`s whose indices count the parameter-free layers (ReLU, Upsample) too, exactly like the
official model. Do not insert, remove or reorder layers without a checkpoint remap.

Shapes: B batch, J joints (22), K codes (codebook_size), T tokens (80), C channels.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix
from unipose_sdk.body.skeleton import forward_kinematics
from unipose_sdk.errors import InvalidInputError, InvalidPoseError
from unipose_sdk.models.config import PoseTokenizerConfig

# Loss weights of the official training (reference note). The area-weighted vertex MSE (x100) needs a licensed
# body model and is left out here; the FK joint term on the built-in skeleton stands in for the geometry.
LOSS_WEIGHTS: dict[str, float] = {"rotmat": 20.0, "joints": 100.0, "commit": 1.0}


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class ResConv1DBlock(nn.Module):
    """ReLU -> dilated conv k3 -> ReLU -> conv k1, plus the input (pre-activation residual, no normalisation)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=3, stride=1, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T] -> [B, C, T]
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Resnet1D(nn.Module):
    """`depth` residual blocks with dilations growth**d, applied LARGEST dilation first.

    The official model builds the blocks with growing dilation and then reverses them (its default, used by both
    encoder and decoder), so with depth 2 and growth 3 the order is dilation 3, then 1. The weights do not
    depend on the order, the outputs do: keep it.
    """

    def __init__(self, channels: int, depth: int, dilation_growth_rate: int) -> None:
        super().__init__()
        dilations = [dilation_growth_rate**d for d in range(depth)][::-1]
        self.model = nn.Sequential(*[ResConv1DBlock(channels, d) for d in dilations])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _conv3(c_in: int, c_out: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel_size=3, stride=1, padding=1)


def _num_downsamples(config: PoseTokenizerConfig) -> int:
    """How many stride-2 convs take the longest encoder sequence down to num_tokens (1 for 160 -> 80)."""
    ratio = config.encoder_lengths[-1] / config.num_tokens
    steps = round(math.log2(ratio)) if ratio >= 1 else -1
    if steps < 0 or 2**steps != ratio:
        raise InvalidInputError.make(
            f"encoder_lengths {config.encoder_lengths} with num_tokens {config.num_tokens}",
            "the last encoder length to be num_tokens times a power of two",
            "Fix the PoseTokenizerConfig (official: encoder_lengths (40, 80, 160), num_tokens 80).",
        )
    return steps


def validate_config(config: PoseTokenizerConfig) -> None:
    """Raise InvalidInputError when the lengths cannot form the official layer stack."""
    lengths = config.encoder_lengths
    if not lengths or any(b != 2 * a for a, b in itertools.pairwise(lengths)):
        raise InvalidInputError.make(
            f"encoder_lengths {lengths}", "a non-empty sequence where each length doubles the previous one",
            "Use e.g. (40, 80, 160): one resample to 40, then two x2 upsamples.",
        )
    _num_downsamples(config)
    if not config.decoder_lengths or config.decoder_lengths[-1] != config.num_joints:
        raise InvalidInputError.make(
            f"decoder_lengths {config.decoder_lengths}", f"a sequence ending at num_joints={config.num_joints}",
            "Use e.g. (65, 51, 36, 22).",
        )


class PoseEncoder(nn.Module):
    """[B, 22, 6] 6D rotations -> [B, code_dim, T] continuous latents. Parameters live in `self.encoder`."""

    def __init__(self, config: PoseTokenizerConfig) -> None:
        super().__init__()
        w = config.width
        layers: list[nn.Module] = [_conv3(config.rotation_dim, w), nn.ReLU()]
        # First resample: 22 joint positions -> encoder_lengths[0] (40), then x2 upsamples (40 -> 80 -> 160).
        for length in config.encoder_lengths:
            layers += [nn.Upsample(size=int(length), mode="nearest"), _conv3(w, w), nn.ReLU()]
        for _ in range(_num_downsamples(config)):  # 160 -> 80
            layers += [
                nn.Conv1d(w, w, kernel_size=4, stride=2, padding=1),
                Resnet1D(w, config.resnet_depth, config.dilation_growth_rate),
            ]
        layers.append(_conv3(w, config.code_dim))
        self.encoder = nn.Sequential(*layers)

    def forward(self, pose_6d: Tensor) -> Tensor:
        return self.encoder(pose_6d.transpose(1, 2))  # joints become the sequence axis


class PoseDecoder(nn.Module):
    """[B, code_dim, T] quantised latents -> [B, 22, 6] raw 6D (not yet orthonormalised). Params in `self.decoder`."""

    def __init__(self, config: PoseTokenizerConfig) -> None:
        super().__init__()
        w = config.width
        layers: list[nn.Module] = [_conv3(config.code_dim, w), nn.ReLU()]
        for length in config.decoder_lengths:  # 80 -> 65 -> 51 -> 36 -> 22
            layers += [nn.Upsample(size=int(length), mode="nearest"), _conv3(w, w), nn.ReLU()]
        for _ in range(_num_downsamples(config)):
            layers += [Resnet1D(w, config.resnet_depth, config.dilation_growth_rate), _conv3(w, w)]
        layers.append(_conv3(w, config.rotation_dim))
        self.decoder = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.decoder(latents).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Quantiser
# ----------------------------------------------------------------------------------------------------------------


class EMAQuantizer(nn.Module):
    """Codebook [K, code_dim] trained by exponential moving averages, with reset of dead codes.

    Only `codebook` is part of the checkpoint contract. The EMA statistics (`code_sum`, `code_count`) and the
    `initialized` flag are buffers too, but non-persistent: the training loop saves them in its own state.
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float) -> None:
        super().__init__()
        self.codebook_size, self.code_dim, self.decay = codebook_size, code_dim, decay
        self.register_buffer("codebook", torch.zeros(codebook_size, code_dim))
        self.register_buffer("code_sum", torch.zeros(codebook_size, code_dim), persistent=False)
        self.register_buffer("code_count", torch.zeros(codebook_size), persistent=False)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool), persistent=False)

    def nearest(self, latents: Tensor) -> Tensor:
        """[N, code_dim] -> [N] index of the nearest code (squared L2), computed in float32 so that a half-precision
        model picks the same codes as a float32 one except at near-ties."""
        x, book = latents.float(), self.codebook.float()
        distance = x.pow(2).sum(-1, keepdim=True) - 2 * x @ book.t() + book.pow(2).sum(-1)[None]
        return distance.argmin(dim=-1)

    def lookup(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook)

    def _random_rows(self, latents: Tensor) -> Tensor:
        """K rows drawn from the batch (tiled with a little noise when the batch has fewer rows than K)."""
        n = latents.shape[0]
        if n < self.codebook_size:
            repeats = -(-self.codebook_size // n)
            tiled = latents.repeat(repeats, 1)
            return (tiled + torch.randn_like(tiled) * (0.01 / math.sqrt(self.code_dim)))[: self.codebook_size]
        return latents[torch.randperm(n, device=latents.device)[: self.codebook_size]]

    @torch.no_grad()
    def _init_codebook(self, latents: Tensor) -> None:
        """Data-dependent start: the codebook begins at latents of the first training batch."""
        init = self._random_rows(latents)
        self.codebook.copy_(init)
        self.code_sum.copy_(init)
        self.code_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, latents: Tensor, codes: Tensor) -> None:
        onehot = F.one_hot(codes, self.codebook_size).to(latents.dtype)  # [N, K]
        self.code_sum.mul_(self.decay).add_(onehot.t() @ latents, alpha=1 - self.decay)
        self.code_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        # A code whose averaged use fell below one vector per step is dead: restart it at a random batch latent.
        alive = (self.code_count >= 1.0)[:, None]
        centres = self.code_sum / self.code_count.clamp_min(1e-8)[:, None]
        self.codebook.copy_(torch.where(alive, centres, self._random_rows(latents)))

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """[B, C, T] -> (quantised [B, C, T] with straight-through gradient, codes [B, T], commit loss, perplexity)."""
        b, c, t = latents.shape
        flat = latents.transpose(1, 2).reshape(b * t, c)
        if self.training and not bool(self.initialized):
            self._init_codebook(flat.detach())
        codes = self.nearest(flat)
        if self.training:
            self._ema_update(flat.detach(), codes)
        quantised = self.lookup(codes)
        commit = F.mse_loss(flat, quantised.detach())
        quantised = flat + (quantised - flat).detach()
        return quantised.reshape(b, t, c).transpose(1, 2), codes.reshape(b, t), commit, code_perplexity(
            codes, self.codebook_size
        )


def code_perplexity(codes: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the code histogram: 1 when one code is used, codebook_size when all are used equally."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    prob = counts / counts.sum().clamp_min(1)
    return torch.exp(-(prob * torch.log(prob + 1e-10)).sum())


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PoseTokenizerOutput:
    """Result of the training forward pass. Losses are already weighted; `loss` is their sum."""

    pose_6d: Tensor  # [B, 22, 6] raw decoder output
    rotmat: Tensor  # [B, 22, 3, 3] Gram-Schmidt of pose_6d
    codes: Tensor  # [B, T]
    loss: Tensor
    losses: dict[str, Tensor]  # weighted terms: rotmat, joints, commit
    perplexity: Tensor


class PoseTokenizer(nn.Module):
    """VQ-VAE pose tokenizer. `encode` poses -> codes, `decode` codes -> poses, `forward` for training."""

    def __init__(self, config: PoseTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or PoseTokenizerConfig()
        validate_config(self.config)
        self.encoder = PoseEncoder(self.config)
        self.decoder = PoseDecoder(self.config)
        self.quantizer = EMAQuantizer(self.config.codebook_size, self.config.code_dim, self.config.ema_decay)
        # Where the weights came from; loaders overwrite it ("RANDOM" marks an untrained model).
        self.source = "RANDOM: untrained weights"

    # ---------------------------------------------------------------- input checks

    def _as_pose_6d(self, pose: Any) -> Tensor:
        """Pose object, [B,22,6] 6D, or [B,22,3,3] rotation matrices (tensor or numpy) -> float [B,22,6] here."""
        j = self.config.num_joints
        if hasattr(pose, "rotation_6d") and callable(pose.rotation_6d):  # the SDK's Pose type (duck-typed)
            pose = pose.rotation_6d()
        if isinstance(pose, np.ndarray):
            pose = torch.from_numpy(np.asarray(pose))
        if not isinstance(pose, Tensor):
            raise InvalidPoseError.make(
                f"a {type(pose).__name__}", "a Pose, or a tensor/array of shape [B, 22, 6] (6D) or [B, 22, 3, 3]",
                "Build a Pose with Pose.from_rotmat / from_axis_angle / Pose.load(path), or pass pose.rotation_6d().",
            )
        if not pose.is_floating_point():
            pose = pose.float()
        if pose.ndim == 4 and tuple(pose.shape[1:]) == (j, 3, 3):
            pose = matrix_to_rotation_6d(pose)
        if pose.ndim != 3 or tuple(pose.shape[1:]) != (j, self.config.rotation_dim) or pose.shape[0] == 0:
            raise InvalidPoseError.make(
                f"a pose tensor of shape {tuple(pose.shape)}",
                f"[B, {j}, 6] 6D rotations or [B, {j}, 3, 3] with B >= 1",
                "Add a batch axis with pose[None] for a single pose; 6D is the first two rows of each rotation matrix.",
            )
        if not bool(torch.isfinite(pose).all()):
            bad = int((~torch.isfinite(pose)).any(-1).any(-1).nonzero()[0])
            raise InvalidPoseError.make(
                f"non-finite values (NaN or inf) in pose {bad} of the batch", "finite rotations",
                "Check the pose source; drop or repair the broken poses before tokenizing.",
            )
        param = next(self.parameters())
        return pose.to(device=param.device, dtype=param.dtype)

    def _as_codes(self, codes: Any) -> Tensor:
        k, t = self.config.codebook_size, self.config.num_tokens
        if isinstance(codes, (list, tuple)):
            codes = np.asarray(codes)
        if isinstance(codes, np.ndarray):
            codes = torch.from_numpy(codes)
        integer = isinstance(codes, Tensor) and not (codes.is_floating_point() or codes.is_complex())
        if not integer or codes.dtype == torch.bool:
            got = type(codes).__name__ if not isinstance(codes, Tensor) else f"a {codes.dtype} tensor"
            raise InvalidInputError.make(
                got, f"integer codebook indices of shape [B, {t}]", "Pass the LongTensor that encode() returned.",
            )
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[1] != t or codes.shape[0] == 0:
            raise InvalidInputError.make(
                f"codes of shape {tuple(codes.shape)}", f"[B, {t}] (or [{t}] for one pose)",
                f"A pose is exactly {t} codes; strip BEGIN/END and subtract the vocabulary offset first.",
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise InvalidInputError.make(
                f"codes in [{int(codes.min())}, {int(codes.max())}]", f"codebook indices in [0, {k - 1}]",
                "Vocabulary ids must be converted back with id - pose_id_offset (32000 in the 7B layout) first.",
            )
        return codes.to(device=self.quantizer.codebook.device, dtype=torch.long)

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def encode(self, pose: Any) -> Tensor:
        """Pose or [B, 22, 6] (or [B, 22, 3, 3]) -> LongTensor [B, T] codebook indices (nearest code, L2)."""
        pose_6d = self._as_pose_6d(pose)
        latents = self.encoder(pose_6d)  # [B, C, T]
        b, c, t = latents.shape
        return self.quantizer.nearest(latents.transpose(1, 2).reshape(b * t, c)).reshape(b, t)

    @torch.no_grad()
    def decode_6d(self, codes: Any) -> Tensor:
        """[B, T] codes -> [B, 22, 6] raw decoder output (tensor-level; what export graphs produce)."""
        codes = self._as_codes(codes)
        return self.decoder(self.quantizer.lookup(codes).transpose(1, 2))

    @torch.no_grad()
    def decode_rotmat(self, codes: Any) -> Tensor:
        """[B, T] codes -> [B, 22, 3, 3] rotation matrices (Gram-Schmidt in float32)."""
        return rotation_6d_to_matrix(self.decode_6d(codes).float())

    def decode(self, codes: Any) -> Any:
        """[B, T] codes -> Pose (batched)."""
        return Pose.from_rotmat(self.decode_rotmat(codes).cpu())

    # ---------------------------------------------------------------- training

    def forward(self, pose_6d: Tensor) -> PoseTokenizerOutput:
        """Training / evaluation pass: reconstruct and compute the weighted losses against the input."""
        pose_6d = self._as_pose_6d(pose_6d)
        latents, codes, commit, perplexity = self.quantizer(self.encoder(pose_6d))
        pred_6d = self.decoder(latents)
        pred_rotmat = rotation_6d_to_matrix(pred_6d)
        losses = reconstruction_losses(pred_rotmat, rotation_6d_to_matrix(pose_6d), commit)
        return PoseTokenizerOutput(
            pose_6d=pred_6d, rotmat=pred_rotmat, codes=codes, loss=sum(losses.values()), losses=losses,
            perplexity=perplexity,
        )


def reconstruction_losses(pred_rotmat: Tensor, target_rotmat: Tensor, commit: Tensor) -> dict[str, Tensor]:
    """Weighted loss terms (LOSS_WEIGHTS): rotation-matrix MSE, FK joint MSE (metres, built-in skeleton), commit."""
    pred_joints_m, _ = forward_kinematics(pred_rotmat)
    target_joints_m, _ = forward_kinematics(target_rotmat)
    return {
        "rotmat": LOSS_WEIGHTS["rotmat"] * F.mse_loss(pred_rotmat, target_rotmat),
        "joints": LOSS_WEIGHTS["joints"] * F.mse_loss(pred_joints_m, target_joints_m),
        "commit": LOSS_WEIGHTS["commit"] * commit,
    }


def mpjpe_mm(pred_rotmat: Tensor, target_rotmat: Tensor) -> Tensor:
    """[B] mean per-joint position error in millimetres of the FK joints, root (pelvis) aligned."""
    pred, _ = forward_kinematics(pred_rotmat.float())
    target, _ = forward_kinematics(target_rotmat.float())
    pred, target = pred - pred[:, :1], target - target[:, :1]
    return (pred - target).norm(dim=-1).mean(-1) * 1000.0
