"""UniPoseModel: the three parts composed, and `splice_image_embeds`, the one place projected image embeddings
enter the token embeddings (inference, the session's prompt rows and training all call it).

    .llm             MistralLM        keys llm.model.* / llm.lm_head.*       (HF MistralForCausalLM under `llm.`)
    .vision          VisionEncoder    keys vision.clip.vision_model.*, vision.pose_vit.*, vision.projector.{0,2}.*
    .pose_tokenizer  PoseTokenizer    keys pose_tokenizer.encoder.*, .decoder.*, .quantizer.codebook
    .text_encoder    SentenceEncoder  keys text_encoder.bert.*, text_encoder.projector.*   (only when the config
                                      has a `text_encoder`, as unipose-tiny v2 does; see models/text_encoder.py)
    .pose_matcher    PoseMatcher      keys pose_matcher.*   (only when the config has a `pose_matcher`: it chooses
                                      among a Generator's candidate decodings; see models/pose_matcher.py)

A ChatPose model (`config.family == "chatpose"`) is the same class with: `.llm` in LLaMA settings holding the pose
head (keys llm.pose_head.{0,2}.*), `.vision` the CLIP-only route (CLIPProjectorEncoder: vision.clip.*,
vision.projector.*), and no pose tokenizer (`.pose_tokenizer` is None). `chatpose_rotmat` turns the head's output
into the SDK's 22 joint rotations.

These prefixed keys are the SDK's own weights format (`model.safetensors`); every foreign layout is mapped onto
them in `unipose_sdk.checkpoint` only, which also checks a state dict against the model before `assign_weights`.
Load a directory with `unipose_sdk.loading.load_torch_model`.

Big models are built on the meta device (no memory, no random init) and then receive their tensors with
`load_state_dict(..., assign=True)`, so memory-mapped safetensors are used in place instead of being copied
into freshly initialised parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from unipose_sdk.body.rotations import rotation_6d_to_matrix
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.models.pose_matcher import PoseMatcher
from unipose_sdk.models.pose_tokenizer import PoseTokenizer
from unipose_sdk.models.text_encoder import SentenceEncoder
from unipose_sdk.models.vision import CLIPProjectorEncoder, VisionEncoder

# Initialisers a meta-device build skips: they would do nothing there, and the first call of one on meta makes torch
# import its compiler stack (seconds). Hugging Face's `no_init_weights` patches the same functions.
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def _skip_init(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class UniPoseModel(nn.Module):
    def __init__(self, config: UniPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.llm = MistralLM(config.llm)
        chatpose = config.family == "chatpose"
        self.vision: nn.Module = (CLIPProjectorEncoder(config.clip, config.projector) if chatpose
                                  else VisionEncoder.from_config(config))
        self.pose_tokenizer = None if chatpose else PoseTokenizer(config.pose_tokenizer)
        self.text_encoder = (SentenceEncoder(config.text_encoder, config.llm.hidden_size)
                             if config.text_encoder is not None else None)
        self.pose_matcher = PoseMatcher(config.pose_matcher) if config.pose_matcher is not None else None

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: UniPoseConfig, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> UniPoseModel:
        """Build the model; `device="meta"` allocates nothing (for loading with assign=True, or for counting)."""
        target = torch.device(device or "cpu")
        with torch.device(target), _skip_init(target.type == "meta"):
            model = cls(config)
        if dtype is not None:
            model.to(dtype=dtype)
        return model

    def assign_weights(self, state_dict: Mapping[str, Tensor], device: torch.device | str = "cpu",
                       dtype: torch.dtype | None = None, pose_tokenizer_dtype: torch.dtype = torch.float32,
                       ) -> UniPoseModel:
        """Take a checked state dict's tensors as this (meta-device) model's weights: strict assign-load.

        Floating tensors are cast to `dtype` (if given) except the pose tokenizer's, which stay
        `pose_tokenizer_dtype` (small, and its nearest-code search is precision sensitive). Tensors already in the
        right dtype and device are used as they are (no copy of memory-mapped files). The caller checks keys,
        shapes and values first (`checkpoint.common.build_model` does), so its error can list the file's keys."""
        def convert(key: str, tensor: Tensor) -> Tensor:
            target = pose_tokenizer_dtype if key.startswith("pose_tokenizer.") else dtype
            if tensor.is_floating_point() and target is not None and tensor.dtype != target:
                tensor = tensor.to(target)
            return tensor.to(device)

        converted = {k: convert(k, v) for k, v in state_dict.items()}
        with torch.no_grad():
            self.load_state_dict(converted, strict=True, assign=True)
        self._materialize_buffers(torch.device(device))
        return self.eval()

    def _materialize_buffers(self, device: torch.device) -> None:
        """Non-persistent buffers are not in any state dict, so after a meta build they are still on meta.
        The only ones are the pose quantizer's EMA statistics (training state): zero them, mark it initialised."""
        for module in self.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
        if self.pose_tokenizer is not None:
            self.pose_tokenizer.quantizer.initialized.fill_(True)

    # ---- inputs ---------------------------------------------------------------------------------------
    @property
    def image_tokens(self) -> int:
        return self.config.image_tokens

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        """clip_pixels [B, 3, S, S], pose_pixels [B, 3, H, W] (two views of the same B images) -> [B, N, D]."""
        return self.vision(clip_pixels, pose_pixels)

    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Sentence-encoder ids and mask [B, T] (see text.encoder_tokenizer) -> LLM input rows [B, num_rows, D]."""
        if self.text_encoder is None:
            raise InvalidInputError.make(f"texts to encode for model {self.config.name!r}",
                                         "a model with a sentence encoder (config.text_encoder)",
                                         "Build prompts without sentence-encoder rows for this model.")
        return self.text_encoder(input_ids, attention_mask)

    def build_inputs_embeds(self, input_ids: Tensor, image_embeds: Tensor | None = None,
                            image_rows: Tensor | None = None, image_starts: Tensor | None = None,
                            attention_mask: Tensor | None = None) -> Tensor:
        """Token embeddings [B, T, D] of `input_ids` [B, T] with image k's N projected embeddings
        (`image_embeds` [K, N, D]) at row `image_rows[k]`, positions `image_starts[k]` on (see
        splice_image_embeds). Positions where `attention_mask` [B, T] is False (left padding) get zero vectors,
        as the official batching does (they are masked anyway)."""
        embeds = self.llm.embed(input_ids.to(self.llm.lm_head.weight.device))  # [B, T, D]
        embeds = splice_image_embeds(embeds, image_embeds, image_rows, image_starts)
        if attention_mask is None:
            return embeds
        return embeds.masked_fill(~attention_mask.to(embeds.device).unsqueeze(-1), 0.0)

    # ---- sizes ----------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameter elements per part (works on the meta device)."""
        def count(module: nn.Module) -> int:
            return sum(math.prod(p.shape) for p in module.parameters())

        return {
            "llm": count(self.llm),
            "clip": count(self.vision.clip),
            "pose_vit": count(self.vision.pose_vit) if hasattr(self.vision, "pose_vit") else 0,
            "projector": count(self.vision.projector),
            "pose_tokenizer": 0 if self.pose_tokenizer is None else
            count(self.pose_tokenizer) + math.prod(self.pose_tokenizer.quantizer.codebook.shape),
            **({"text_encoder": count(self.text_encoder)} if self.text_encoder is not None else {}),
        }


def chatpose_rotmat(pose_params: Tensor, num_joints: int = 22) -> Tensor:
    """ChatPose head outputs [B, J * 6] (J = 24: global orient + 23 SMPL body joints) -> the first `num_joints`
    rotation matrices [B, num_joints, 3, 3] (22: global orient + the 21 body joints SMPL-X shares, as the official
    code poses SMPL-X with `body_pose[:, :21]`).

    ChatPose's 6D is HMR2.0's: the six numbers are the first two COLUMNS of the matrix (its rot6d_to_rotmat views
    them as [2, 3] and stacks the Gram-Schmidt vectors as columns), while the SDK's 6D (`rotation_6d_to_matrix`,
    PyTorch3D's convention) holds the first two ROWS. The same Gram-Schmidt gives the transpose.
    """
    joints = pose_params.shape[-1] // 6
    if pose_params.shape[-1] % 6 != 0 or joints < num_joints:
        raise InvalidInputError.make(f"pose head outputs of shape {tuple(pose_params.shape)}",
                                     f"[B, J * 6] with J >= {num_joints}", "Pass the pose head's output as it is.")
    six = pose_params.float().reshape(*pose_params.shape[:-1], joints, 6)[..., :num_joints, :]
    return rotation_6d_to_matrix(six).transpose(-1, -2)


def splice_image_embeds(token_embeds: Tensor, image_embeds: Tensor | None, image_rows: Tensor | None,
                        image_starts: Tensor | None) -> Tensor:
    """Token embeddings [B, T, C] with image k's embeddings `image_embeds[k]` [N, C] copied into row
    `image_rows[k]`, positions `image_starts[k]` .. `image_starts[k] + N - 1` (cast to the tokens' dtype).

    image_rows, image_starts: [K] int64 (or int lists); K = 0 (or None) means no image slots. The input is not
    modified: the result is a new tensor when there are images, `token_embeds` itself when there are none.
    Differentiable with respect to both embeddings (training backpropagates through it).
    """
    num_images = 0 if image_starts is None else len(image_starts)
    if num_images == 0:
        if image_embeds is not None and image_embeds.numel() > 0:
            raise InvalidInputError.make(
                f"{image_embeds.shape[0]} image embeddings for prompts without <image>",
                "no images", "Add <image> to the prompt or drop the images.")
        return token_embeds
    rows = torch.as_tensor(image_rows, dtype=torch.long)
    starts = torch.as_tensor(image_starts, dtype=torch.long)
    width = token_embeds.shape[-1]
    if image_embeds is None or image_embeds.dim() != 3 or image_embeds.shape[0] != num_images \
            or image_embeds.shape[2] != width or rows.shape != starts.shape:
        got = None if image_embeds is None else tuple(image_embeds.shape)
        raise InvalidInputError.make(
            f"image embeddings of shape {got} for {num_images} image slots ({rows.numel()} rows)",
            f"({num_images}, tokens per image, {width}) (images x tokens per image x LLM width)",
            "Encode exactly one image per <image> placeholder with encode_images, in prompt order.")
    tokens = image_embeds.shape[1]
    if starts.device.type == "cpu":  # positions a caller holds on the host are checked; device ones would sync
        bad = [s for s in starts.tolist() if s < 0 or s + tokens > token_embeds.shape[1]]
        if bad:
            raise InvalidInputError.make(
                f"image slots starting at {bad} for {tokens} embeddings each in rows of {token_embeds.shape[1]}",
                "every image's slots inside its row", "Build the prompt rows with PromptBuilder.")
    cols = starts.unsqueeze(1) + torch.arange(tokens, device=starts.device)  # [K, N]
    out = token_embeds.clone()
    rows, cols = rows.to(out.device), cols.to(out.device)
    out[rows.unsqueeze(1).expand(-1, tokens), cols] = image_embeds.to(out.device, out.dtype)
    return out
