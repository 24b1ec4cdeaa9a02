"""Configuration dataclasses for every part of the UniPose model, and the two presets.

`unipose-7b` reproduces the released model's sizes exactly (the checkpoint's config.json and tensor shapes);
`unipose-tiny` is the small model embedded in the package and used by the tests.
Every size the code needs is read from here; no module hard-codes a width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PoseTokenizerConfig:
    """The 1-D convolutional VQ-VAE that maps 22 joints x 6D rotations to `num_tokens` codebook indices."""

    num_joints: int = 22
    rotation_dim: int = 6  # 6D rotation: first two rows of the rotation matrix
    width: int = 512  # channels of the conv encoder / decoder
    code_dim: int = 256
    codebook_size: int = 2048
    num_tokens: int = 80
    encoder_lengths: tuple[int, ...] = (40, 80, 160)  # sequence lengths after each upsample of the encoder
    decoder_lengths: tuple[int, ...] = (65, 51, 36, 22)  # sequence lengths after each resample of the decoder
    resnet_depth: int = 2
    dilation_growth_rate: int = 3
    ema_decay: float = 0.99


@dataclass(frozen=True)
class VocabLayout:
    """Where the added tokens sit. Ids are a compatibility contract with the released checkpoint.

    text ids 0..text_vocab_size-1, then codebook_size pose ids, BEGIN, END, <im_start>, <im_end>,
    then num_pose_tokens learned pose queries (the LAST rows of the embedding table).
    """

    text_vocab_size: int = 32000
    codebook_size: int = 2048
    num_pose_tokens: int = 80
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0  # Mistral has no pad token; UniPose pads with unk (0)

    @property
    def pose_id_offset(self) -> int:
        return self.text_vocab_size

    @property
    def pose_begin_id(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def pose_end_id(self) -> int:
        return self.pose_begin_id + 1

    @property
    def image_start_id(self) -> int:
        return self.pose_begin_id + 2

    @property
    def image_end_id(self) -> int:
        return self.pose_begin_id + 3

    @property
    def pose_query_offset(self) -> int:
        return self.pose_begin_id + 4

    @property
    def vocab_size(self) -> int:
        return self.pose_query_offset + self.num_pose_tokens

    def pose_token_ids(self, codes: Any) -> Any:
        """Codebook indices -> vocabulary ids (works on ints, lists via numpy, and tensors)."""
        return codes + self.pose_id_offset

    def is_pose_id(self, token_id: int) -> bool:
        return self.pose_id_offset <= token_id < self.pose_begin_id


@dataclass(frozen=True)
class LLMConfig:
    """Mistral-style decoder. Field names follow Hugging Face `MistralConfig` where one exists."""

    vocab_size: int = 34132
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class CLIPVisionConfig:
    """CLIP ViT tower; field names follow Hugging Face `CLIPVisionConfig`."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # OpenAI CLIP's x * sigmoid(1.702 x); "gelu" is also understood
    select_layer: int = -2  # UniPose (LLaVA) takes the penultimate layer's patch tokens
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass(frozen=True)
class PoseViTConfig:
    """Pose-specific ViT (TokenHMR / HMR2.0 backbone): a plain ViT on a person crop, conv patch embed with padding."""

    image_height: int = 256
    image_width: int = 192
    resize_size: int = 256  # the square resize + centre crop before the central columns are taken
    patch_size: int = 16
    patch_padding: int = 2
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def grid_hw(self) -> tuple[int, int]:
        def cells(size: int) -> int:
            return (size + 2 * self.patch_padding - self.patch_size) // self.patch_size + 1

        return cells(self.image_height), cells(self.image_width)


@dataclass(frozen=True)
class ProjectorConfig:
    """Linear(in) - GELU - Linear: fused vision features -> LLM embeddings."""

    input_size: int = 2304  # CLIP hidden + Pose-ViT embed
    hidden_size: int = 4096
    output_size: int = 4096


POSE_DECODINGS = ("argmax", "expected_code")


@dataclass(frozen=True)
class UniPoseConfig:
    name: str
    llm: LLMConfig
    vocab: VocabLayout
    clip: CLIPVisionConfig
    pose_vit: PoseViTConfig
    projector: ProjectorConfig
    pose_tokenizer: PoseTokenizerConfig
    max_text_tokens: int = 2048  # the context the SDK allows for prompts + answers
    # How a pose block's logits become codes (`generation.pose_codes_from_logits`): "argmax" per query, as the
    # official decoding does; or "expected_code": the codebook vector expected under each query's softmax over
    # the codes, snapped to the nearest code. unipose-tiny is trained for the second (training.batches.CodeTargets).
    pose_decoding: str = "argmax"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vocab.vocab_size != self.llm.vocab_size:
            raise ValueError(f"vocab layout gives {self.vocab.vocab_size} ids but the LLM has {self.llm.vocab_size}")
        if self.vocab.codebook_size != self.pose_tokenizer.codebook_size:
            raise ValueError("vocab codebook_size differs from the pose tokenizer's codebook_size")
        if self.vocab.num_pose_tokens != self.pose_tokenizer.num_tokens:
            raise ValueError("vocab num_pose_tokens differs from the pose tokenizer's num_tokens")
        if self.projector.input_size != self.clip.hidden_size + self.pose_vit.embed_dim:
            raise ValueError("projector input_size must equal CLIP hidden + Pose-ViT embed dim")
        if self.projector.output_size != self.llm.hidden_size:
            raise ValueError("projector output_size must equal the LLM hidden size")
        if self.pose_decoding not in POSE_DECODINGS:
            raise ValueError(f"pose_decoding={self.pose_decoding!r}: expected one of {POSE_DECODINGS}")

    @property
    def image_tokens(self) -> int:
        return self.clip.num_patches

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "UniPoseConfig":
        def build(cls: type, values: dict[str, Any]) -> Any:
            names = {f.name: f for f in dataclasses.fields(cls)}
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"unknown {cls.__name__} fields {unknown}")
            # JSON turns tuples into lists; the dataclasses are frozen and hashable, so turn them back.
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        return UniPoseConfig(
            name=data["name"],
            llm=build(LLMConfig, data["llm"]),
            vocab=build(VocabLayout, data["vocab"]),
            clip=build(CLIPVisionConfig, data["clip"]),
            pose_vit=build(PoseViTConfig, data["pose_vit"]),
            projector=build(ProjectorConfig, data["projector"]),
            pose_tokenizer=build(PoseTokenizerConfig, data["pose_tokenizer"]),
            max_text_tokens=data.get("max_text_tokens", 2048),
            pose_decoding=data.get("pose_decoding", "argmax"),  # configs written before the field: official
            extra=dict(data.get("extra", {})),
        )


def _unipose_7b() -> UniPoseConfig:
    return UniPoseConfig(
        name="unipose-7b",
        llm=LLMConfig(),
        vocab=VocabLayout(),
        clip=CLIPVisionConfig(),
        pose_vit=PoseViTConfig(),
        projector=ProjectorConfig(),
        pose_tokenizer=PoseTokenizerConfig(),
        max_text_tokens=4096,
    )


def _unipose_tiny() -> UniPoseConfig:
    # Small enough to train on 2 CPU cores and ship in the wheel (< 30 MB fp16), with the same structure:
    # GQA 2/1 with head dim 64 (a size the fused kernels support), a small own text vocabulary, a 512-code
    # pose codebook, still 80 pose tokens; a CLIP-like tower on 112 px (8x8 grid) and a Pose-ViT on
    # 128x96 crops (8x6 grid, padded to 8x8 like the 16x12 -> 16x16 of the real model).
    vocab = VocabLayout(text_vocab_size=1024, codebook_size=512, num_pose_tokens=80)
    return UniPoseConfig(
        name="unipose-tiny",
        llm=LLMConfig(
            vocab_size=vocab.vocab_size,
            hidden_size=128,  # 128 wide (2 query heads, 1 KV head): the whole pipeline trains in ~1 h on 2 CPU cores
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            rope_theta=10_000.0,
            max_position_embeddings=1024,
        ),
        vocab=vocab,
        clip=CLIPVisionConfig(
            image_size=112, patch_size=14, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4,
        ),
        pose_vit=PoseViTConfig(
            image_height=128, image_width=96, resize_size=128, patch_size=16, patch_padding=2, embed_dim=128,
            depth=4, num_heads=4,
        ),
        projector=ProjectorConfig(input_size=256, hidden_size=256, output_size=128),
        pose_tokenizer=PoseTokenizerConfig(width=128, code_dim=64, codebook_size=512, num_tokens=80),
        max_text_tokens=512,
        pose_decoding="expected_code",
    )


PRESETS = {"unipose-7b": _unipose_7b, "unipose-tiny": _unipose_tiny}


def get_preset(name: str) -> UniPoseConfig:
    """Return a fresh config for a preset name (`unipose-7b` or `unipose-tiny`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
