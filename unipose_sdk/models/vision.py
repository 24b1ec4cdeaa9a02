"""The vision side of UniPose: two frozen towers, their fusion, and the projector into the LLM.

    clip_pixels [B, 3, S, S] --CLIPVisionTower--> [B, N, Cc]            N = (S / 14)^2 patch tokens
    pose_pixels [B, 3, H, W] --PoseViT---------> [B, Cp, h, w]          (16 x 12 for 256 x 192)
    fuse_vision_features: pad [B, Cp, h, w] to square with zeros, bilinear resize to the CLIP grid
                          (align_corners=True), flatten row-major, concat AFTER the CLIP channels -> [B, N, Cc + Cp]
    Projector (Linear - GELU - Linear)                               -> [B, N, llm_hidden]

Sizes for `unipose-7b`: S 336, N 576, Cc 1024, Cp 1280, fused 2304, llm_hidden 4096.

State-dict keys are compatibility contracts with the released checkpoints, so each module's attribute names
mirror its source exactly:
- CLIPVisionTower: the on-disk keys of Hugging Face `CLIPVisionModel` checkpoints, `vision_model.embeddings.*`,
  `vision_model.pre_layrnorm.*` (sic), `vision_model.encoder.layers.{i}.*`, `vision_model.post_layernorm.*`.
  The `position_ids` buffer HF keeps is not a parameter (arange), so it is not registered here; older
  checkpoints that stored it must drop it when loading.
- PoseViT: the TokenHMR checkpoint's `backbone.*` keys with `backbone.` stripped (`patch_embed.proj`, `pos_embed`,
  `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `last_norm`).
- Projector: LLaVA's `mm_projector` nn.Sequential keys `0.*` and `2.*`.
The fusion order (CLIP first), zero padding and align_corners follow UniPose's
`prepare_inputs_labels_for_multimodal` (liyiheng23/UniPose, posegpt/models/posegpt.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import CLIPVisionConfig, PoseViTConfig, ProjectorConfig, UniPoseConfig


def _self_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """Unmasked multi-head attention with the standard 1/sqrt(head_dim) scale. q, k, v, out: [B, T, C]."""
    batch, tokens, width = q.shape
    head_dim = width // num_heads

    def split(x: Tensor) -> Tensor:  # [B, T, C] -> [B, heads, T, head_dim]
        return x.view(batch, tokens, num_heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # [B, heads, T, head_dim]
    return out.transpose(1, 2).reshape(batch, tokens, width)


def _check_pixels(pixels: Tensor, expected_hw: tuple[int, int], what: str) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != expected_hw:
        raise InvalidInputError.make(
            f"{what} pixels of shape {tuple(pixels.shape)}",
            f"[B, 3, {expected_hw[0]}, {expected_hw[1]}]",
            "Build the pixels with unipose_sdk.preprocess.preprocess_batch for this model's config.",
        )


# ----------------------------------------------------------------------------------------------------------------
# CLIP ViT (OpenAI CLIP vision tower in Hugging Face layout)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return _QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unsupported CLIP hidden_act {name!r}; expected 'quick_gelu' or 'gelu'")


class _QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x) (the checkpoint was trained with it, not exact GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, width)  # slot 0 is the CLS token

    def forward(self, pixels: Tensor) -> Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # [B, C, g, g]
        patches = patches.flatten(2).transpose(1, 2)  # [B, N, C], row-major over the grid
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [B, 1, C]
        tokens = torch.cat([cls, patches], dim=1)  # [B, 1 + N, C]
        return tokens + self.position_embedding.weight.unsqueeze(0)


class _CLIPAttention(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C] -> [B, T, C]
        out = _self_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads)
        return self.out_proj(out)


class _CLIPMLP(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.self_attn = _CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = _CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:  # pre-norm residual block
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))


class _CLIPVisionTransformer(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = _CLIPEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # (sic) HF's spelling
        self.encoder = _CLIPEncoder(config)
        # Kept only so that checkpoints load strictly: the selected penultimate layer never reaches it.
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPVisionTower(nn.Module):
    """CLIP ViT returning the patch tokens of layer `select_layer` (HF `hidden_states[select_layer][:, 1:]`).

    forward(pixels [B, 3, S, S]) -> [B, grid^2, hidden]. Layers after the selected one (and post_layernorm) hold
    weights so that the checkpoint loads strictly, but are not run.
    """

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size != 0:
            raise ValueError(f"CLIP image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError("CLIP hidden_size must be a multiple of num_attention_heads")
        # HF hidden_states has num_layers + 1 entries: index 0 is the (pre-layernormed) embedding output.
        layers = config.num_hidden_layers
        index = config.select_layer if config.select_layer >= 0 else layers + 1 + config.select_layer
        if not 0 <= index <= layers:
            raise ValueError(f"CLIP select_layer {config.select_layer} is outside [-{layers + 1}, {layers}]")
        self.config = config
        self.num_layers_run = index
        _activation(config.hidden_act)  # fail at construction, not at the first forward
        self.vision_model = _CLIPVisionTransformer(config)

    def forward(self, pixels: Tensor) -> Tensor:
        size = self.config.image_size
        _check_pixels(pixels, (size, size), "CLIP")
        model = self.vision_model
        x = model.pre_layrnorm(model.embeddings(pixels))  # [B, 1 + N, C]
        for layer in model.encoder.layers[: self.num_layers_run]:
            x = layer(x)
        return x[:, 1:]  # drop CLS: [B, N, C]


# ----------------------------------------------------------------------------------------------------------------
# Pose-ViT (TokenHMR / HMR2.0 ViTPose-style backbone)


class _PatchEmbed(nn.Module):
    def __init__(self, config: PoseViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            3, config.embed_dim, config.patch_size, stride=config.patch_size, padding=config.patch_padding
        )


class _PoseViTAttention(nn.Module):
    def __init__(self, config: PoseViTConfig) -> None:
        super().__init__()
        width = config.embed_dim
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(width, 3 * width)  # fused, output laid out as [q | k | v], each head-major
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C] -> [B, T, C]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_self_attention(q, k, v, self.num_heads))


class _PoseViTMLP(nn.Module):
    def __init__(self, config: PoseViTConfig) -> None:
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as in the ViTPose code
        self.fc2 = nn.Linear(hidden, config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _PoseViTBlock(nn.Module):
    def __init__(self, config: PoseViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = _PoseViTAttention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = _PoseViTMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PoseViT(nn.Module):
    """Plain ViT on a person crop: forward(pixels [B, 3, H, W]) -> feature map [B, C, h, w] (channels first,
    like the TokenHMR backbone's output; 7B: [B, 1280, 16, 12]).

    `pos_embed` is [1, 1 + h*w, C]: it was pretrained with a CLS slot but the model has no CLS token, so the
    CLS row is added to every patch (`pos_embed[:, 1:] + pos_embed[:, :1]`), exactly as the original does.
    """

    def __init__(self, config: PoseViTConfig) -> None:
        super().__init__()
        grid_h, grid_w = config.grid_hw
        # The original sizes pos_embed from (H // patch) * (W // patch) but adds it to the padded conv's output
        # grid; the two agree for every shipped config, and the addition needs them to.
        if (grid_h, grid_w) != (config.image_height // config.patch_size, config.image_width // config.patch_size):
            raise ValueError(
                f"Pose-ViT conv grid {grid_h}x{grid_w} differs from the position-embedding grid "
                f"{config.image_height // config.patch_size}x{config.image_width // config.patch_size}; "
                "choose image sizes, patch size and padding that agree"
            )
        if config.embed_dim % config.num_heads != 0:
            raise ValueError("Pose-ViT embed_dim must be a multiple of num_heads")
        self.config = config
        self.patch_embed = _PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_h * grid_w, config.embed_dim))
        self.blocks = nn.ModuleList(_PoseViTBlock(config) for _ in range(config.depth))
        self.last_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        _check_pixels(pixels, (self.config.image_height, self.config.image_width), "Pose-ViT")
        proj = self.patch_embed.proj
        grid = proj(pixels.to(proj.weight.dtype))  # [B, C, h, w]
        batch, width, grid_h, grid_w = grid.shape
        x = grid.flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(batch, width, grid_h, grid_w)  # [B, C, h, w]


# ----------------------------------------------------------------------------------------------------------------
# Fusion and projection


def fuse_vision_features(clip_features: Tensor, pose_map: Tensor, grid_size: int) -> Tensor:
    """[B, N, Cc] CLIP tokens + [B, Cp, h, w] Pose-ViT map -> [B, N, Cc + Cp] (N = grid_size^2).

    The map is zero-padded on both sides of its shorter axis to a square (16x12 -> 16x16 adds 2 columns each side;
    an odd difference puts the extra line right / bottom), resized bilinearly with align_corners=True to the CLIP
    grid, flattened row-major like the CLIP patches, and appended after the CLIP channels.
    """
    height, width = pose_map.shape[-2:]
    if width < height:
        left = (height - width) // 2
        pose_map = F.pad(pose_map, (left, height - width - left), value=0.0)  # pads the last dim (columns)
    elif height < width:
        top = (width - height) // 2
        pose_map = F.pad(pose_map, (0, 0, top, width - height - top), value=0.0)
    pose_map = F.interpolate(pose_map, size=(grid_size, grid_size), mode="bilinear", align_corners=True)
    pose_tokens = pose_map.flatten(2).transpose(1, 2)  # [B, N, Cp]
    return torch.cat([clip_features, pose_tokens.to(clip_features.dtype)], dim=-1)


class Projector(nn.Sequential):
    """LLaVA `mlp2x_gelu` mm_projector: Linear(in, hidden) - GELU - Linear(hidden, out); keys 0.* and 2.*."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__(
            nn.Linear(config.input_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.output_size),
        )


class VisionEncoder(nn.Module):
    """Both towers, fusion and projector: forward(clip_pixels [B,3,S,S], pose_pixels [B,3,H,W]) -> [B, N, D].

    D is the LLM hidden size; N = CLIP grid^2 image embeddings per image, which go between <im_start> and <im_end>.
    """

    def __init__(
        self, clip_config: CLIPVisionConfig, pose_vit_config: PoseViTConfig, projector_config: ProjectorConfig
    ) -> None:
        super().__init__()
        fused = clip_config.hidden_size + pose_vit_config.embed_dim
        if projector_config.input_size != fused:
            raise ValueError(
                f"projector input_size {projector_config.input_size} must equal CLIP hidden "
                f"{clip_config.hidden_size} + Pose-ViT embed_dim {pose_vit_config.embed_dim} = {fused}"
            )
        self.clip = CLIPVisionTower(clip_config)
        self.pose_vit = PoseViT(pose_vit_config)
        self.projector = Projector(projector_config)

    @classmethod
    def from_config(cls, config: UniPoseConfig) -> VisionEncoder:
        return cls(config.clip, config.pose_vit, config.projector)

    @property
    def num_image_tokens(self) -> int:
        return self.clip.config.num_patches

    def fused_features(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        """The projector's input: [B, N, Cc + Cp]."""
        if clip_pixels.ndim == 4 and pose_pixels.ndim == 4 and clip_pixels.shape[0] != pose_pixels.shape[0]:
            raise InvalidInputError.make(
                f"{clip_pixels.shape[0]} CLIP views and {pose_pixels.shape[0]} Pose-ViT views",
                "one view of each kind per image",
                "Build both views with preprocess_batch from the same list of images.",
            )
        clip_features = self.clip(clip_pixels)  # [B, N, Cc]
        pose_map = self.pose_vit(pose_pixels)  # [B, Cp, h, w]
        return fuse_vision_features(clip_features, pose_map, self.clip.config.grid_size)

    def forward(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        fused = self.fused_features(clip_pixels, pose_pixels)
        first = self.projector[0]
        assert isinstance(first, nn.Linear)
        return self.projector(fused.to(first.weight.dtype))  # [B, N, D]


class CLIPProjectorEncoder(nn.Module):
    """ChatPose's (LLaVA-1.5's) vision route: the CLIP tower's patch tokens of `select_layer`, projected.

    forward(clip_pixels [B, 3, S, S], pose_pixels=None) -> [B, N, D]; `pose_pixels` is accepted and ignored, so
    every caller hands both views the same way. Keys: vision.clip.vision_model.*, vision.projector.{0,2}.*
    (LLaVA's `model.vision_tower.vision_tower.*` / `model.mm_projector.*`).
    """

    def __init__(self, clip_config: CLIPVisionConfig, projector_config: ProjectorConfig) -> None:
        super().__init__()
        if projector_config.input_size != clip_config.hidden_size:
            raise ValueError(f"projector input_size {projector_config.input_size} must equal the CLIP hidden size "
                             f"{clip_config.hidden_size} (CLIP-only route)")
        self.clip = CLIPVisionTower(clip_config)
        self.projector = Projector(projector_config)

    @property
    def num_image_tokens(self) -> int:
        return self.clip.config.num_patches

    def forward(self, clip_pixels: Tensor, pose_pixels: Tensor | None = None) -> Tensor:
        first = self.projector[0]
        assert isinstance(first, nn.Linear)
        return self.projector(self.clip(clip_pixels).to(first.weight.dtype))  # [B, N, D]


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device, so 7B-sized towers cost nothing to count)."""
    return sum(math.prod(p.shape) for p in module.parameters())
