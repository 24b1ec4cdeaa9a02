"""The vision towers of the fast torch path: `VisionEncoder.forward` over the same weights, with fewer ops per call.

    towers = FastVisionTowers(model.vision)
    image_embeds = towers(clip_pixels, pose_pixels)        # [B, N, C], VisionEncoder's contract

Why it is faster. At batch 1 on the tiny model the module runs some 130 tower ops, each a few microseconds of
dispatch around very little arithmetic. Here: patch embeddings as one matrix product over non-overlapping patches
(the convolutions' stride equals their kernel), CLIP's q / k / v as one fused projection, weights as contiguous
[in, out] matrices (the layout MKL's small products are fastest on), the CLS token and biases folded into the
position tables, tokens kept as a [B * T, C] matrix so every linear is a single addmm, and the Pose-ViT-to-CLIP-grid
fusion (pad + bilinear) as one precomputed [N, h * w] matrix (~1.3-1.8x on the towers).
Sums are reassociated, so results differ from the module in the last float bits: tests hold the embeddings within
1e-4 of it, with the same pose codes end to end. The pixels come from `unipose_sdk.preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.vision import VisionEncoder, fuse_vision_features

# Packing copies weights (CLIP's fused q / k / v; every weight as a contiguous [in, out] matrix, the layout MKL's
# small GEMMs run fastest on: a [65, 512] x [512, 128] product takes 70 us that way and 174 us on the module's
# [out, in] weight read transposed). Past this many bytes (7B-sized towers: ~2 GB) the towers run on the module's
# own tensors instead: at that size each product is compute-bound and a second copy would cost more than it saves.
_MAX_PACKED_BYTES = 64 * 2**20


def _patches(pixels: Tensor, patch: int, grid_hw: tuple[int, int]) -> Tensor:
    """[B, C, H, W] -> [B * gh * gw, C * patch * patch], row-major over the grid, channel-major inside a patch (the
    flattening of a Conv2d weight [out, C, patch, patch])."""
    batch, channels = pixels.shape[:2]
    gh, gw = grid_hw
    x = pixels[:, :, : gh * patch, : gw * patch].reshape(batch, channels, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch * gh * gw, channels * patch * patch)


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class _Block:
    """A pre-norm transformer block on a [B * T, C] token matrix, from either tower's weights. Linear weights are
    [in, out] matrices (contiguous copies when packed, transposed views of the module's tensors otherwise)."""

    def __init__(self, norm1: nn.LayerNorm, qkv: Sequence[tuple[Tensor, Tensor]], out: tuple[Tensor, Tensor],
                 norm2: nn.LayerNorm, fc1: tuple[Tensor, Tensor], fc2: tuple[Tensor, Tensor], num_heads: int,
                 activation: str) -> None:
        self.norm1 = (norm1.weight, norm1.bias, norm1.eps)
        self.norm2 = (norm2.weight, norm2.bias, norm2.eps)
        self.qkv = list(qkv)  # one fused (weight, bias) or three
        self.out, self.fc1, self.fc2 = out, fc1, fc2
        self.num_heads = num_heads
        self.activation = {"quick_gelu": _quick_gelu, "gelu": F.gelu}[activation]

    def __call__(self, x: Tensor, batch: int, tokens: int) -> Tensor:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        h = F.layer_norm(x, (width,), *self.norm1)
        if len(self.qkv) == 1:
            weight, bias = self.qkv[0]
            qkv = torch.addmm(bias, h, weight).view(batch, tokens, 3, self.num_heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (torch.addmm(b, h, w).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
                       for w, b in self.qkv)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch * tokens, width)
        x = torch.addmm(x, attended, self.out[0]).add_(self.out[1])
        h = self.activation(torch.addmm(self.fc1[1], F.layer_norm(x, (width,), *self.norm2), self.fc1[0]))
        return torch.addmm(x, h, self.fc2[0]).add_(self.fc2[1])


def _check_pixels(pixels: Tensor, expected_hw: tuple[int, int], what: str) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != expected_hw:
        raise InvalidInputError.make(
            f"{what} pixels of shape {tuple(pixels.shape)}", f"[B, 3, {expected_hw[0]}, {expected_hw[1]}]",
            "Build the pixels with unipose_sdk.preprocess (FastPreprocessor or preprocess_batch) for this "
            "model's config.")


class FastVisionTowers:
    """`VisionEncoder.forward` over the same weights, with fewer and larger ops (see the module docstring).

    `packed`: weights copied into the fastest layout (CPU, towers up to `max_packed_bytes`); otherwise the towers
    read the module's own tensors (views, no copies). Built for the encoder's device and dtype at construction."""

    def __init__(self, vision: VisionEncoder, max_packed_bytes: int = _MAX_PACKED_BYTES) -> None:
        clip, pose_vit, projector = vision.clip, vision.pose_vit, vision.projector
        self.clip_config, self.pose_config = clip.config, pose_vit.config
        model = clip.vision_model
        layers = model.encoder.layers[: clip.num_layers_run]
        used = [*layers, pose_vit, projector, model.embeddings]
        weight_bytes = sum(p.numel() * p.element_size() for m in used for p in m.parameters())
        device = model.embeddings.patch_embedding.weight.device
        self.packed = device.type == "cpu" and weight_bytes <= max_packed_bytes
        with torch.no_grad():
            embeddings = model.embeddings
            self.clip_patch = self._in_out(embeddings.patch_embedding.weight.flatten(1))  # [3 * p * p, C]
            # The CLS token is the only token without a patch: put it in position slot 0, give patches a zero row.
            self.clip_positions = embeddings.position_embedding.weight.clone()
            self.clip_positions[0] += embeddings.class_embedding
            self.clip_pre_norm = (model.pre_layrnorm.weight, model.pre_layrnorm.bias, model.pre_layrnorm.eps)
            self.clip_blocks = [self._clip_block(layer) for layer in layers]
            conv = pose_vit.patch_embed.proj
            self.pose_patch = self._in_out(conv.weight.flatten(1))
            self.pose_padding = conv.padding[0]
            # Conv bias and the shared CLS slot of pos_embed folded into one per-patch table [h * w, C].
            positions = pose_vit.pos_embed[0, 1:] + pose_vit.pos_embed[0, :1]
            self.pose_positions = positions + conv.bias if conv.bias is not None else positions
            self.pose_blocks = [
                _Block(b.norm1, [self._linear(b.attn.qkv)], self._linear(b.attn.proj), b.norm2,
                       self._linear(b.mlp.fc1), self._linear(b.mlp.fc2), b.attn.num_heads, "gelu")
                for b in pose_vit.blocks]
            self.pose_last_norm = (pose_vit.last_norm.weight, pose_vit.last_norm.bias, pose_vit.last_norm.eps)
            self.fusion = self._fusion_matrix(vision).to(self.clip_positions)
            self.projector = (self._linear(projector[0]), self._linear(projector[2]))

    def _in_out(self, weight: Tensor) -> Tensor:
        """[out, in] -> [in, out]: a contiguous copy when packed, else a view."""
        return weight.t().contiguous() if self.packed else weight.t()

    def _linear(self, linear: nn.Module) -> tuple[Tensor, Tensor]:
        return self._in_out(linear.weight), linear.bias

    def _clip_block(self, layer: nn.Module) -> _Block:
        attn = layer.self_attn
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        if self.packed:  # one [C, 3C] product instead of three
            qkv = [(torch.cat([p.weight for p in projections]).t().contiguous(),
                    torch.cat([p.bias for p in projections]))]
        else:
            qkv = [self._linear(p) for p in projections]
        return _Block(layer.layer_norm1, qkv, self._linear(attn.out_proj), layer.layer_norm2,
                      self._linear(layer.mlp.fc1), self._linear(layer.mlp.fc2), attn.num_heads,
                      self.clip_config.hidden_act)

    def _fusion_matrix(self, vision: VisionEncoder) -> Tensor:
        """fuse_vision_features' pad + bilinear resize as a [N, h * w] matrix, read off by fusing unit maps."""
        grid_h, grid_w = self.pose_config.grid_hw
        cells = grid_h * grid_w
        units = torch.eye(cells).view(cells, 1, grid_h, grid_w)  # cell i's unit map as a 1-channel image
        fused = fuse_vision_features(torch.zeros(cells, self.clip_config.num_patches, 0), units,
                                     self.clip_config.grid_size)  # [cells, N, 1]
        return fused[:, :, 0].t().contiguous()

    @torch.inference_mode()
    def __call__(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        clip_hw = (self.clip_config.image_size, self.clip_config.image_size)
        _check_pixels(clip_pixels, clip_hw, "CLIP")
        _check_pixels(pose_pixels, (self.pose_config.image_height, self.pose_config.image_width), "Pose-ViT")
        if clip_pixels.shape[0] != pose_pixels.shape[0]:
            raise InvalidInputError.make(
                f"{clip_pixels.shape[0]} CLIP views and {pose_pixels.shape[0]} Pose-ViT views",
                "one view of each kind per image", "Build both views from the same list of images.")
        dtype = self.clip_positions.dtype
        batch = clip_pixels.shape[0]
        clip_tokens = self._clip(clip_pixels.to(dtype), batch)  # [B, N, Cc]
        pose_tokens = torch.matmul(self.fusion, self._pose_vit(pose_pixels.to(dtype), batch))  # [B, N, Cp]
        fused = torch.cat([clip_tokens, pose_tokens], dim=-1).flatten(0, 1)  # [B * N, Cc + Cp]
        (w1, b1), (w2, b2) = self.projector
        return torch.addmm(b2, F.gelu(torch.addmm(b1, fused, w1)), w2).view(batch, clip_tokens.shape[1], -1)

    def _clip(self, pixels: Tensor, batch: int) -> Tensor:
        config = self.clip_config
        grid = config.grid_size
        width = config.hidden_size
        patches = torch.mm(_patches(pixels, config.patch_size, (grid, grid)), self.clip_patch)
        tokens = grid * grid + 1
        x = torch.cat([patches.new_zeros(batch, 1, width), patches.view(batch, grid * grid, width)], dim=1)
        x = F.layer_norm(x + self.clip_positions, (width,), *self.clip_pre_norm).view(batch * tokens, width)
        for block in self.clip_blocks:
            x = block(x, batch, tokens)
        return x.view(batch, tokens, width)[:, 1:]

    def _pose_vit(self, pixels: Tensor, batch: int) -> Tensor:
        config = self.pose_config
        grid_h, grid_w = config.grid_hw
        pad = self.pose_padding
        padded = F.pad(pixels, (pad, pad, pad, pad)) if pad else pixels
        x = torch.mm(_patches(padded, config.patch_size, (grid_h, grid_w)), self.pose_patch)
        tokens = grid_h * grid_w
        x = (x.view(batch, tokens, -1) + self.pose_positions).view(batch * tokens, -1)
        for block in self.pose_blocks:
            x = block(x, batch, tokens)
        x = F.layer_norm(x, (x.shape[-1],), *self.pose_last_norm)
        return x.view(batch, tokens, -1)  # [B, h * w, Cp], row-major like the map's flatten
