"""The pose VQ-VAE: official key layout, sequence lengths, encode / decode contracts, losses, EMA codebook,
error paths, and the training module (sampler, schedule, resumable loop)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from unipose_sdk.body.rotations import axis_angle_to_matrix, matrix_to_rotation_6d, rotation_matrix_error
from unipose_sdk.body.skeleton import JOINT_INDEX, forward_kinematics
from unipose_sdk.errors import InvalidInputError, InvalidPoseError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.pose_tokenizer import (
    LOSS_WEIGHTS,
    PoseTokenizer,
    Resnet1D,
    code_perplexity,
    mpjpe_mm,
)

TINY = get_preset("unipose-tiny").pose_tokenizer


def _official_keys(width: int, code_dim: int, codebook: int) -> dict[str, tuple[int, ...]]:
    """The released checkpoint's tokenizer keys and shapes, written out by hand from the official layer list
    (Sequential indices count ReLU / Upsample layers too)."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, c_out: int, c_in: int, k: int) -> None:
        keys[f"{prefix}.weight"], keys[f"{prefix}.bias"] = (c_out, c_in, k), (c_out,)

    def resnet(prefix: str) -> None:
        for block in (0, 1):
            conv(f"{prefix}.model.{block}.conv1", width, width, 3)
            conv(f"{prefix}.model.{block}.conv2", width, width, 1)

    conv("encoder.encoder.0", width, 6, 3)
    for i in (3, 6, 9):
        conv(f"encoder.encoder.{i}", width, width, 3)
    conv("encoder.encoder.11", width, width, 4)
    resnet("encoder.encoder.12")
    conv("encoder.encoder.13", code_dim, width, 3)
    conv("decoder.decoder.0", width, code_dim, 3)
    for i in (3, 6, 9, 12, 15):
        conv(f"decoder.decoder.{i}", width, width, 3)
    resnet("decoder.decoder.14")
    conv("decoder.decoder.16", 6, width, 3)
    keys["quantizer.codebook"] = (codebook, code_dim)
    return keys


@pytest.fixture(scope="module")
def tiny() -> PoseTokenizer:
    torch.manual_seed(1)
    model = PoseTokenizer(TINY)
    model.quantizer.codebook.normal_()
    return model.eval()


def _poses(n: int, seed: int = 0, scale: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return matrix_to_rotation_6d(axis_angle_to_matrix(torch.randn(n, 22, 3, generator=g) * scale))


# ------------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("preset", ["unipose-7b", "unipose-tiny"])
def test_state_dict_matches_official_layout(preset: str) -> None:
    cfg = get_preset(preset).pose_tokenizer
    model = PoseTokenizer(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _official_keys(cfg.width, cfg.code_dim, cfg.codebook_size)


def test_7b_sizes_match_reference() -> None:
    cfg = get_preset("unipose-7b").pose_tokenizer
    assert (cfg.width, cfg.code_dim, cfg.codebook_size, cfg.num_tokens) == (512, 256, 2048, 80)


def test_sequence_lengths_through_the_layers(tiny: PoseTokenizer) -> None:
    lengths: list[tuple[str, int]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: lengths.append((name, out.shape[-1])))
        for name, m in [*tiny.encoder.encoder.named_children(), *tiny.decoder.decoder.named_children()]
        if isinstance(m, (torch.nn.Upsample, torch.nn.Conv1d)) and not name.startswith("model")
    ]
    try:
        tiny.encode(_poses(2))
    finally:
        for h in hooks:
            h.remove()
    ups = [n for name, n in lengths if isinstance(tiny.encoder.encoder[int(name)], torch.nn.Upsample)]
    assert ups == [40, 80, 160]
    assert lengths[-1][1] == 80  # after the stride-2 conv and projection
    decoder_ups = [tiny.decoder.decoder[i].size for i in (2, 5, 8, 11)]
    assert decoder_ups == [65, 51, 36, 22]


def test_resnet_applies_largest_dilation_first() -> None:
    block = Resnet1D(8, depth=2, dilation_growth_rate=3)
    assert [b.conv1.dilation[0] for b in block.model] == [3, 1]
    assert [b.conv1.padding[0] for b in block.model] == [3, 1]


def test_ema_statistics_are_not_in_the_checkpoint(tiny: PoseTokenizer) -> None:
    keys = set(tiny.state_dict())
    assert "quantizer.codebook" in keys
    assert not {"quantizer.code_sum", "quantizer.code_count", "quantizer.initialized"} & keys


@pytest.mark.parametrize(
    "change",
    [{"encoder_lengths": (40, 90, 160)}, {"encoder_lengths": (40, 80, 120)}, {"decoder_lengths": (65, 51, 36)},
     {"encoder_lengths": ()}],
)
def test_inconsistent_config_is_rejected(change: dict) -> None:
    with pytest.raises(InvalidInputError, match="received"):
        PoseTokenizer(dataclasses.replace(TINY, **change))


# ------------------------------------------------------------------------------------------------ encode / decode


def test_encode_returns_nearest_codes(tiny: PoseTokenizer) -> None:
    pose = _poses(3)
    codes = tiny.encode(pose)
    assert codes.shape == (3, 80) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < TINY.codebook_size
    latents = tiny.encoder(pose).transpose(1, 2).reshape(-1, TINY.code_dim)
    brute = torch.cdist(latents, tiny.quantizer.codebook).argmin(-1).reshape(3, 80)
    assert torch.equal(codes, brute)


def test_encode_is_deterministic_and_batch_independent(tiny: PoseTokenizer) -> None:
    pose = _poses(4)
    batch = tiny.encode(pose)
    assert torch.equal(batch, tiny.encode(pose))
    assert torch.equal(batch[2:3], tiny.encode(pose[2:3]))


def test_encode_accepts_rotmat_numpy_and_pose_objects(tiny: PoseTokenizer) -> None:
    pose_6d = _poses(2)
    expected = tiny.encode(pose_6d)
    rotmat = torch.from_numpy(np.asarray(_rotmat_from_6d(pose_6d)))
    assert torch.equal(tiny.encode(rotmat), expected)
    assert torch.equal(tiny.encode(pose_6d.numpy()), expected)
    assert torch.equal(tiny.encode(pose_6d.double()), expected)

    class DuckPose:  # anything with rotation_6d() is taken as a Pose
        def rotation_6d(self) -> torch.Tensor:
            return pose_6d

    assert torch.equal(tiny.encode(DuckPose()), expected)


def _rotmat_from_6d(pose_6d: torch.Tensor) -> torch.Tensor:
    from unipose_sdk.body.rotations import rotation_6d_to_matrix

    return rotation_6d_to_matrix(pose_6d)


def test_encode_accepts_the_sdk_pose_type(tiny: PoseTokenizer) -> None:
    pose_module = pytest.importorskip("unipose_sdk.body.pose")
    rotmat = _rotmat_from_6d(_poses(2))
    pose = pose_module.Pose.from_rotmat(rotmat)
    assert torch.equal(tiny.encode(pose), tiny.encode(rotmat))


def test_decode_gives_rotations(tiny: PoseTokenizer) -> None:
    codes = torch.randint(0, TINY.codebook_size, (3, 80))
    raw = tiny.decode_6d(codes)
    assert raw.shape == (3, 22, 6)
    rotmat = tiny.decode_rotmat(codes)
    assert rotmat.shape == (3, 22, 3, 3)
    assert float(rotation_matrix_error(rotmat).max()) < 1e-4
    torch.testing.assert_close(tiny.decode_6d(codes[0]), raw[:1])  # a single [80] sequence is one pose
    assert torch.equal(tiny.decode_6d(codes.numpy()), raw)
    assert torch.equal(tiny.decode_6d(codes.tolist()), raw)


def test_decode_returns_pose(tiny: PoseTokenizer) -> None:
    pytest.importorskip("unipose_sdk.body.pose")
    codes = torch.randint(0, TINY.codebook_size, (2, 80))
    pose = tiny.decode(codes)
    torch.testing.assert_close(torch.as_tensor(pose.rotmat).float(), tiny.decode_rotmat(codes))


def test_half_precision_model_picks_the_same_codes(tiny: PoseTokenizer) -> None:
    half = PoseTokenizer(TINY)
    half.load_state_dict(tiny.state_dict())
    half = half.half().eval()
    pose = _poses(4)
    agreement = (half.encode(pose) == tiny.encode(pose)).float().mean()
    assert float(agreement) > 0.95
    assert half.decode_6d(tiny.encode(pose)).dtype == torch.float16


# ------------------------------------------------------------------------------------------------ error paths


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(22, 6), torch.zeros(2, 21, 6), torch.zeros(2, 22, 9), torch.zeros(0, 22, 6), torch.zeros(2, 22, 3, 4),
     "pose.npy", [[0.0] * 6] * 22],
)
def test_bad_pose_input(tiny: PoseTokenizer, bad: object) -> None:
    with pytest.raises(InvalidPoseError, match="received .*expected"):
        tiny.encode(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pose(tiny: PoseTokenizer, value: float) -> None:
    pose = _poses(3)
    pose[1, 5, 2] = value
    with pytest.raises(InvalidPoseError, match="non-finite .*pose 1"):
        tiny.encode(pose)
    with pytest.raises(InvalidPoseError):
        tiny.train()(pose)
    tiny.eval()


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.full((1, 80), 512), r"codes in \[512, 512\]"),
        (torch.full((1, 80), -1), "codebook indices"),
        (torch.full((1, 80), 32_000 + 5), "pose_id_offset"),
        (torch.zeros(1, 79, dtype=torch.long), r"shape \(1, 79\)"),
        (torch.zeros(1, 2, 80, dtype=torch.long), "shape"),
        (torch.zeros(1, 80), "float32"),
        (torch.zeros(1, 80, dtype=torch.bool), "bool"),
        ("0 1 2", "str"),
    ],
)
def test_bad_codes(tiny: PoseTokenizer, codes: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny.decode_6d(codes)


# ------------------------------------------------------------------------------------------------ training forward


def test_training_forward_losses_and_gradients() -> None:
    torch.manual_seed(0)
    model = PoseTokenizer(TINY).train()
    pose = _poses(8)
    out = model(pose)
    assert set(out.losses) == {"rotmat", "joints", "commit"} == set(LOSS_WEIGHTS)
    assert out.pose_6d.shape == (8, 22, 6) and out.rotmat.shape == (8, 22, 3, 3) and out.codes.shape == (8, 80)
    torch.testing.assert_close(out.loss, sum(out.losses.values()))
    # Recompute the terms independently with the documented weights.
    target = _rotmat_from_6d(pose)
    expected_rotmat = 20.0 * torch.mean((out.rotmat - target) ** 2)
    expected_joints = 100.0 * torch.mean((forward_kinematics(out.rotmat)[0] - forward_kinematics(target)[0]) ** 2)
    torch.testing.assert_close(out.losses["rotmat"], expected_rotmat)
    torch.testing.assert_close(out.losses["joints"], expected_joints)
    out.loss.backward()
    # Straight-through estimator: the encoder's first conv gets gradient through the quantiser.
    assert model.encoder.encoder[0].weight.grad.abs().sum() > 0
    assert model.decoder.decoder[16].weight.grad.abs().sum() > 0


def test_codebook_initialises_from_first_batch_and_updates_only_in_training() -> None:
    torch.manual_seed(0)
    model = PoseTokenizer(TINY).train()
    assert not bool(model.quantizer.initialized)
    model(_poses(8))  # 640 latents < 512 codes? no: 640 >= 512 -> codebook rows are batch latents
    assert bool(model.quantizer.initialized)
    book = model.quantizer.codebook.clone()
    assert book.abs().sum() > 0
    model(_poses(8, seed=1))
    assert not torch.equal(book, model.quantizer.codebook)
    model.eval()
    book = model.quantizer.codebook.clone()
    model(_poses(8, seed=2))
    assert torch.equal(book, model.quantizer.codebook)


def test_dead_codes_are_reset_to_batch_latents() -> None:
    torch.manual_seed(0)
    model = PoseTokenizer(TINY).train()
    model(_poses(8))
    q = model.quantizer
    far = torch.full((TINY.code_dim,), 1e3)
    q.codebook[7] = far  # a code no latent will ever pick ...
    q.code_sum[7], q.code_count[7] = far, 1.0  # ... whose EMA count will drop below 1 this step
    pose = _poses(8, seed=3)
    model(pose)
    latents = model.encoder(pose).detach().transpose(1, 2).reshape(-1, TINY.code_dim)
    assert q.code_count[7] < 1.0
    assert torch.cdist(q.codebook[7:8], latents).min() < 1e-2  # restarted at (almost) a batch latent


def test_ema_centre_is_the_running_mean() -> None:
    torch.manual_seed(0)
    model = PoseTokenizer(TINY).train()
    model(_poses(8))
    q = model.quantizer
    torch.testing.assert_close(
        q.codebook[q.code_count >= 1], (q.code_sum / q.code_count[:, None])[q.code_count >= 1]
    )


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    micro = dataclasses.replace(TINY, width=32, code_dim=16, codebook_size=64)  # same layer stack, faster
    model = PoseTokenizer(micro).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pose = _poses(8)
    losses = []
    for _ in range(20):
        out = model(pose)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.6 * losses[0]


# ------------------------------------------------------------------------------------------------ metrics


def test_mpjpe_and_perplexity() -> None:
    rotmat = _rotmat_from_6d(_poses(3))
    assert float(mpjpe_mm(rotmat, rotmat).max()) < 1e-3
    bent = rotmat.clone()
    bent[:, JOINT_INDEX["left_elbow"]] = axis_angle_to_matrix(torch.tensor([0.0, -math.pi / 2, 0.0]))
    assert float(mpjpe_mm(bent, rotmat).min()) > 1.0
    assert float(code_perplexity(torch.zeros(10, dtype=torch.long), 8)) == pytest.approx(1.0)
    assert float(code_perplexity(torch.arange(8), 8)) == pytest.approx(8.0, rel=1e-4)


# ------------------------------------------------------------------------------------------------ training module


def test_root_perturbation_stays_within_the_official_ranges() -> None:
    from unipose_sdk.training.pose_tokenizer import perturb_root

    rotmat = axis_angle_to_matrix(torch.zeros(500, 22, 3))
    out = perturb_root(rotmat, np.random.default_rng(0))
    assert torch.equal(out[:, 1:], rotmat[:, 1:])  # only the root moves
    up = out[:, 0] @ torch.tensor([0.0, 1.0, 0.0])  # the body's up axis after the perturbation
    tilt_deg = torch.rad2deg(torch.acos(up[:, 1].clamp(-1, 1)))
    assert float(tilt_deg.max()) <= math.hypot(20, 20) + 1e-3
    forward = out[:, 0] @ torch.tensor([0.0, 0.0, 1.0])
    yaw_deg = torch.rad2deg(torch.atan2(forward[:, 0], forward[:, 2]))
    assert 35 < float(yaw_deg.abs().max()) <= 50  # +-45 about the vertical, plus what the tilt adds


def test_training_poses_are_valid_and_seeded() -> None:
    from unipose_sdk.training.pose_tokenizer import held_out_rotmat, sample_rotmat

    a = sample_rotmat(16, np.random.default_rng(3))
    assert a.shape == (16, 22, 3, 3) and a.dtype == torch.float32
    assert float(rotation_matrix_error(a).max()) < 1e-4
    assert torch.equal(a, sample_rotmat(16, np.random.default_rng(3)))
    assert not torch.equal(held_out_rotmat(16, seed=3), a)  # the held-out stream differs from training
    assert torch.equal(held_out_rotmat(16, seed=3), held_out_rotmat(16, seed=3))


def test_learning_rate_schedule() -> None:
    from unipose_sdk.training.pose_tokenizer import learning_rate

    assert learning_rate(0, 0.0, 1e-3) == pytest.approx(1e-5)
    assert learning_rate(99, 0.0, 1e-3) == pytest.approx(1e-3)
    assert learning_rate(500, 0.5, 1e-3) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert learning_rate(5000, 1.0, 1e-3) == pytest.approx(5e-5)
    assert learning_rate(5000, 3.0, 1e-3) == pytest.approx(5e-5)


def test_training_resumes_exactly(tmp_path) -> None:
    from unipose_sdk.training.pose_tokenizer import train

    kwargs = {"seed": 0, "batch_size": 4, "num_eval_poses": 8, "eval_every": 2}
    straight = train(tmp_path / "a", steps=4, **kwargs)
    train(tmp_path / "b", steps=2, **kwargs)  # stops after 2 steps, saves its state ...
    resumed = train(tmp_path / "b", steps=4, **kwargs)  # ... and this run continues from it
    assert straight["steps"] == resumed["steps"] == 4
    a = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["ema"]["code_count"], b["ema"]["code_count"])
    assert straight["held_out"] == resumed["held_out"]
    shipped = tmp_path / "a" / "pose_tokenizer"
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    metrics = json.loads((shipped / "metrics.json").read_text())
    assert {"mpjpe_mm_mean", "codes_used", "perplexity"} <= set(metrics["held_out"])
    assert metrics["seed"] == 0 and "sample_poses" in metrics["sampler"]
    from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer

    assert load_pose_tokenizer(shipped).config == TINY
