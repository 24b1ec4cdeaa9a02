"""Configuration dataclasses for every part of the model, and the presets.

Two model families share the one definition (`UniPoseConfig.family`):
- "unipose": UniPose (Mistral LLM, CLIP + Pose-ViT, pose VQ-VAE tokens). `unipose-7b` reproduces the released
  model's sizes exactly (the checkpoint's config.json and tensor shapes); `unipose-tiny` is the small model
  embedded in the package and used by the tests.
- "chatpose": ChatPose (PoseGPT, Feng et al. CVPR 2024): LLaVA with a LLaMA LLM (the same decoder module with
  LLaMA settings: no GQA, RoPE theta 1e4), the CLIP tower alone with LLaVA's projector, and a pose head that
  regresses 24 x 6D rotations from the last hidden state before the pose token `[SEG]`. `chatpose-13b` has the
  released sizes; `chatpose-tiny` is a random-weight toy for tests and benchmarks. A ChatPose config still carries
  `pose_vit` and `pose_tokenizer` sections (the image preprocessing reads both views' sizes), but no Pose-ViT
  and no pose tokenizer are built for it.
Every size the code needs is read from here; no module hard-codes a width.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from unipose_sdk.errors import ConfigError, InvalidInputError


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


FAMILIES = ("unipose", "chatpose")
# ChatPose's added tokens in id order after the base LLaMA vocabulary (LISA's order: `[SEG]` first, then LLaVA's
# image markers); the chat UI shows [SEG] as [POSE].
CHATPOSE_ADDED_TOKENS = ("[SEG]", "<im_start>", "<im_end>")


@dataclass(frozen=True)
class VocabLayout:
    """Where the added tokens sit. Ids are a compatibility contract with the released checkpoint.

    family "unipose": text ids 0..text_vocab_size-1, then codebook_size pose ids, BEGIN, END, <im_start>,
    <im_end>, then num_pose_tokens learned pose queries (the LAST rows of the embedding table).
    family "chatpose": text ids, then `[SEG]` (the pose token), <im_start>, <im_end>; there are no pose ids,
    BEGIN / END are -1 (no id is ever one of them) and codebook_size = num_pose_tokens = 0.
    """

    text_vocab_size: int = 32000
    codebook_size: int = 2048
    num_pose_tokens: int = 80
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0  # Mistral has no pad token; UniPose pads with unk (0)
    family: str = "unipose"

    @property
    def pose_id_offset(self) -> int:
        return self.text_vocab_size

    @property
    def pose_begin_id(self) -> int:
        if self.family == "chatpose":
            return -1
        return self.text_vocab_size + self.codebook_size

    @property
    def pose_end_id(self) -> int:
        if self.family == "chatpose":
            return -1
        return self.pose_begin_id + 1

    @property
    def pose_token_id(self) -> int:
        """ChatPose's `[SEG]`: a pose is regressed from the hidden state before it; -1 for UniPose (none)."""
        return self.text_vocab_size if self.family == "chatpose" else -1

    @property
    def image_start_id(self) -> int:
        if self.family == "chatpose":
            return self.text_vocab_size + 1
        return self.pose_begin_id + 2

    @property
    def image_end_id(self) -> int:
        if self.family == "chatpose":
            return self.text_vocab_size + 2
        return self.pose_begin_id + 3

    @property
    def pose_query_offset(self) -> int:
        if self.family == "chatpose":
            return self.vocab_size
        return self.pose_begin_id + 4

    @property
    def vocab_size(self) -> int:
        if self.family == "chatpose":
            return self.text_vocab_size + len(CHATPOSE_ADDED_TOKENS)
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
    # ChatPose's pose head (Linear(C, C) - ReLU - Linear(C, pose_head_outputs)) on the final-norm hidden state;
    # 0: no head (UniPose). 144 = 24 joints x 6D.
    pose_head_outputs: int = 0


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

    input_size: int = 2304  # CLIP hidden + Pose-ViT embed (UniPose); CLIP hidden alone (ChatPose)
    hidden_size: int = 4096
    output_size: int = 4096


@dataclass(frozen=True)
class TextEncoderConfig:
    """A frozen BERT-style sentence encoder (unipose-tiny v2 ships all-MiniLM-L6-v2) whose mean-pooled, unit-length
    sentence embedding of the user's text is projected to `num_rows` LLM input rows that follow BOS.

    The released 7B model has none (`UniPoseConfig.text_encoder` is None): its LLM learned English itself."""

    vocab_size: int = 30522
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_tokens: int = 128  # WordPiece tokens read per text (BOS/[CLS] and [SEP] included); longer text is cut
    num_rows: int = 4  # LLM input rows the projected sentence embedding fills
    projector_hidden_size: int = 512


@dataclass(frozen=True)
class PoseMatcherConfig:
    """The text-pose matcher (models/pose_matcher.py) that scores a Generator's candidate decodings: two MLPs
    (pose features -> width -> width -> embed_size; sentence embedding of text_size -> width -> embed_size)."""

    text_size: int = 384  # the sentence encoder's embedding size (TextEncoderConfig.hidden_size)
    width: int = 512
    embed_size: int = 256


POSE_DECODINGS = ("argmax", "expected_code")
# The pose-code temperatures expected-code decoding accepts (`GenerationConfig.pose_code_temperature`, the config's
# `text_to_pose_code_temperature`): below 0.05 it is the argmax in all but name, above 10 a flat average.
POSE_CODE_TEMPERATURE_RANGE = (0.05, 10.0)
# The classifier-free guidance weights pose decoding accepts (`GenerationConfig.pose_guidance`, the config's
# `text_to_pose_guidance`): 0 is off; past 10 the guided logits are the difference alone, amplified.
POSE_GUIDANCE_RANGE = (0.0, 10.0)
# The sentence confidence floors a description accepts (mean natural-log probability of a sentence's tokens): 0 keeps
# only certainties, -20 (a mean token probability of 2e-9) keeps everything.
SENTENCE_LOGPROB_RANGE = (-20.0, 0.0)
# What each decoding setting's range says about its neutral value, in every message that states the range.
_TEMPERATURE_MEANING = "1: the plain expected code"
_GUIDANCE_MEANING = "0: no guidance"
_SENTENCE_LOGPROB_MEANING = "the lower, the more sentences are kept"


def _range_text(value_range: tuple[float, float], meaning: str) -> str:
    return f"a number in [{value_range[0]:g}, {value_range[1]:g}] ({meaning})"


def _in_range(value: float, value_range: tuple[float, float]) -> bool:
    return math.isfinite(value) and value_range[0] <= value <= value_range[1]


def _check_number(name: str, value: object, value_range: tuple[float, float], meaning: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _in_range(float(value), value_range):
        raise InvalidInputError.make(f"{name}={value!r}", _range_text(value_range, meaning), fix)


def check_pose_code_temperature(value: object) -> None:
    """A pose-code temperature's type and range: InvalidInputError otherwise (every option and flag that sets one)."""
    _check_number("pose_code_temperature", value, POSE_CODE_TEMPERATURE_RANGE, _TEMPERATURE_MEANING,
                  "Pass e.g. pose_code_temperature=0.7, or 1 for the expectation the model was trained for.")


def check_pose_guidance(value: object) -> None:
    """A pose guidance weight's type and range: InvalidInputError otherwise (every option and flag that sets one)."""
    _check_number("pose_guidance", value, POSE_GUIDANCE_RANGE, _GUIDANCE_MEANING,
                  "Pass e.g. pose_guidance=2, or 0 to decode the prompt's logits as they are.")


def check_min_sentence_logprob(value: object) -> float:
    """A sentence confidence floor (mean token log-probability) -> float; InvalidInputError otherwise."""
    _check_number("min_sentence_logprob", value, SENTENCE_LOGPROB_RANGE, _SENTENCE_LOGPROB_MEANING,
                  "Pass e.g. min_sentence_logprob=-1 (a mean token probability of about 0.37).")
    return float(value)  # type: ignore[arg-type]


def check_pose_candidates(candidates: object) -> tuple[tuple[float, float], ...]:
    """Candidate decodings, a non-empty sequence of (pose guidance, code temperature) pairs each in its range ->
    the same as a tuple of float pairs; InvalidInputError otherwise."""
    expected = ("a non-empty list of [pose guidance, code temperature] pairs, e.g. [[1, 0.7], [2, 1], [3, 1.3]], "
                f"guidance {_range_text(POSE_GUIDANCE_RANGE, _GUIDANCE_MEANING)}, temperature "
                f"{_range_text(POSE_CODE_TEMPERATURE_RANGE, _TEMPERATURE_MEANING)}")
    fix = "Pass pairs such as [(1, 0.7), (2, 1.0)]; one pair is one decoding."
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not candidates:
        raise InvalidInputError.make(f"text_to_pose_candidates={candidates!r}", expected, fix)
    pairs = []
    for pair in candidates:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError.make(f"candidate {pair!r} in text_to_pose_candidates", expected, fix)
        check_pose_guidance(pair[0])
        check_pose_code_temperature(pair[1])
        pairs.append((float(pair[0]), float(pair[1])))
    return tuple(pairs)


def pose_candidates_text(candidates: Sequence[Sequence[float]]) -> str:
    """Candidate decodings as the reports and the model card write them: "(1, 0.7), (2, 1)"."""
    return ", ".join(f"({w:g}, {t:g})" for w, t in candidates)


def _candidates_field(value: object, source: str) -> tuple[tuple[float, float], ...]:
    try:
        return check_pose_candidates(value)
    except InvalidInputError as exc:
        raise ConfigError.make(f"{source}: text_to_pose_candidates={value!r}", str(exc),
                               "Re-export the model; a hand-edited list must hold [guidance, temperature] pairs.") \
            from None


def _number_flag(text: str, check: Callable[[object], None]) -> float:
    import argparse

    try:
        value: object = float(text)
    except ValueError:
        value = text  # refused below, with the range it should have been in
    try:
        check(value)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(f"got {text!r}: {exc}") from None
    return float(text)


def pose_code_temperature_flag(text: str) -> float:
    """argparse type of the command-line flags that set a pose-code temperature: out of range is a usage error."""
    return _number_flag(text, check_pose_code_temperature)


def pose_guidance_flag(text: str) -> float:
    """argparse type of the command-line flags that set a pose guidance weight: out of range is a usage error."""
    return _number_flag(text, check_pose_guidance)


def min_sentence_logprob_flag(text: str) -> float:
    """argparse type of the command-line flags that set a sentence confidence floor: out of range is a usage error."""
    return _number_flag(text, check_min_sentence_logprob)


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
    # The `GenerationConfig.pose_code_temperature` a Generator decodes with unless its options say otherwise: a
    # model whose code beliefs spread widely on prompts unlike its training captions does better committing to
    # its likeliest codes there, while estimation and editing keep the plain expectation (1).
    text_to_pose_code_temperature: float = 1.0
    # The `GenerationConfig.pose_guidance` a Generator decodes with unless its options say otherwise (0: none):
    # classifier-free guidance away from the logits the model gives the text-to-pose prompt with no description.
    text_to_pose_guidance: float = 0.0
    # A frozen sentence encoder whose output rows follow BOS (see TextEncoderConfig); None: the LLM reads text alone.
    text_encoder: TextEncoderConfig | None = None
    # A text-pose matcher (models/pose_matcher.py) that scores a Generator's candidate decodings; it reads the
    # sentence encoder's embedding, so it needs `text_encoder`. None: one decoding, no choice.
    pose_matcher: PoseMatcherConfig | None = None
    # The (pose guidance, code temperature) pairs a Generator decodes each prompt at when the model has a matcher:
    # it keeps the candidate the matcher scores highest. Empty: the one decoding above.
    text_to_pose_candidates: tuple[tuple[float, float], ...] = ()
    # The Describer's default `min_sentence_logprob` for images: an image description keeps only the sentences whose
    # tokens the model gave at least this mean log-probability (text/sentences.py). None: every sentence.
    image_description_min_sentence_logprob: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    family: str = "unipose"  # "unipose" | "chatpose" (module docstring)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: expected one of {FAMILIES}")
        if self.vocab.family != self.family:
            raise ValueError(f"vocab layout of family {self.vocab.family!r} in a {self.family!r} config")
        if self.vocab.vocab_size != self.llm.vocab_size:
            raise ValueError(f"vocab layout gives {self.vocab.vocab_size} ids but the LLM has {self.llm.vocab_size}")
        if self.family == "chatpose":
            self._check_chatpose()
        else:
            if self.llm.pose_head_outputs != 0:
                raise ValueError("a UniPose config with a pose head (llm.pose_head_outputs must be 0)")
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
        for name, value_range in (("text_to_pose_code_temperature", POSE_CODE_TEMPERATURE_RANGE),
                                  ("text_to_pose_guidance", POSE_GUIDANCE_RANGE)):
            low, high = value_range
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a number in [{low:g}, {high:g}]")
        if self.pose_matcher is not None:
            if self.text_encoder is None or self.pose_matcher.text_size != self.text_encoder.hidden_size:
                raise ValueError("a pose_matcher reads the sentence encoder's embedding: it needs a text_encoder "
                                 "whose hidden_size is the matcher's text_size")
        if self.text_to_pose_candidates:
            if self.pose_matcher is None:
                raise ValueError("text_to_pose_candidates without a pose_matcher to choose among them")
            check_pose_candidates(self.text_to_pose_candidates)
        if self.image_description_min_sentence_logprob is not None:
            check_min_sentence_logprob(self.image_description_min_sentence_logprob)

    def _check_chatpose(self) -> None:
        heads = self.llm.pose_head_outputs
        if heads <= 0 or heads % 6 != 0:
            raise ValueError(f"llm.pose_head_outputs={heads}: ChatPose regresses joints x 6D (144 = 24 x 6)")
        if heads // 6 < 22:
            raise ValueError(f"llm.pose_head_outputs={heads} gives {heads // 6} joints; the SDK's pose needs 22")
        if self.vocab.codebook_size != 0 or self.vocab.num_pose_tokens != 0:
            raise ValueError("a ChatPose vocab layout has no pose codes (codebook_size = num_pose_tokens = 0)")
        if self.projector.input_size != self.clip.hidden_size:
            raise ValueError("ChatPose's projector input_size must equal the CLIP hidden size (CLIP only)")

    @property
    def image_tokens(self) -> int:
        return self.clip.num_patches

    @property
    def pose_head_joints(self) -> int:
        """Joints the ChatPose head regresses (24: global orient + 23 SMPL body joints); 0 for UniPose."""
        return self.llm.pose_head_outputs // 6

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any], source: str = "the config") -> UniPoseConfig:
        """A config as `to_dict` wrote it (e.g. the `config` entry of an SDK model's config.json). Every field is
        checked by type and range first (see `build_config`); ConfigError names `source`, the field and value."""
        if not isinstance(data, Mapping):
            _refuse(source, "UniPoseConfig", data, "a JSON object of UniPoseConfig fields")
        parts = {"llm": LLMConfig, "vocab": VocabLayout, "clip": CLIPVisionConfig, "pose_vit": PoseViTConfig,
                 "projector": ProjectorConfig, "pose_tokenizer": PoseTokenizerConfig}
        missing = sorted({"name", *parts} - set(data))
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(UniPoseConfig)})
        if missing or unknown:
            raise ConfigError.make(
                f"{source} with missing fields {missing} and unknown fields {unknown}",
                f"the UniPoseConfig fields {sorted(f.name for f in dataclasses.fields(UniPoseConfig))}",
                "Re-convert the model with this SDK version (the file is damaged or from another tool).")
        built = {name: build_config(cls, data[name], source, prefix=f"{name}.") for name, cls in parts.items()}
        if data.get("text_encoder") is not None:
            built["text_encoder"] = build_config(TextEncoderConfig, data["text_encoder"], source, "text_encoder.")
        if data.get("pose_matcher") is not None:
            built["pose_matcher"] = build_config(PoseMatcherConfig, data["pose_matcher"], source, "pose_matcher.")
        if data.get("text_to_pose_candidates"):
            built["text_to_pose_candidates"] = _candidates_field(data["text_to_pose_candidates"], source)
        floor = data.get("image_description_min_sentence_logprob")
        if floor is not None:
            try:
                built["image_description_min_sentence_logprob"] = check_min_sentence_logprob(floor)
            except InvalidInputError as exc:
                raise ConfigError.make(f"{source}: image_description_min_sentence_logprob={floor!r}", str(exc),
                                       "Write a number in [-20, 0], or null for every sentence.") from None
        top = {k: data[k] for k in ("name", "max_text_tokens", "pose_decoding", "text_to_pose_code_temperature",
                                    "text_to_pose_guidance", "extra", "family") if k in data}
        top.setdefault("pose_decoding", "argmax")  # configs written before the field: the official decoding
        top.setdefault("family", "unipose")  # configs written before the ChatPose family
        _check_fields(UniPoseConfig, top, source, prefix="")
        try:
            return UniPoseConfig(**built, **{**top, "extra": dict(top.get("extra", {}))})
        except ValueError as exc:  # the cross-part checks of __post_init__
            raise ConfigError.make(f"{source} whose parts disagree: {exc}", "one consistent UniPoseConfig",
                                   "Re-convert the model; a hand-edited config must change every part together.") \
                from None


# ---- validation of configs read from files --------------------------------------------------------------------
# Ranges that differ from the defaults (ints: a positive size; floats: a finite number > 0), as (text, test).
_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "VocabLayout.bos_id": ("an id >= 0", lambda v: v >= 0),
    "VocabLayout.eos_id": ("an id >= 0", lambda v: v >= 0),
    "VocabLayout.pad_id": ("an id >= 0", lambda v: v >= 0),
    "CLIPVisionConfig.select_layer": ("a non-zero layer index (negative counts from the end)", lambda v: v != 0),
    "CLIPVisionConfig.hidden_act": ("'quick_gelu' or 'gelu'", lambda v: v in ("quick_gelu", "gelu")),
    "CLIPVisionConfig.image_mean": ("three finite numbers", lambda v: math.isfinite(v)),
    "PoseViTConfig.image_mean": ("three finite numbers", lambda v: math.isfinite(v)),
    "PoseViTConfig.patch_padding": ("pixels >= 0", lambda v: v >= 0),
    "PoseTokenizerConfig.ema_decay": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "UniPoseConfig.pose_decoding": (f"one of {POSE_DECODINGS}", lambda v: v in POSE_DECODINGS),
    "UniPoseConfig.text_to_pose_code_temperature": (
        _range_text(POSE_CODE_TEMPERATURE_RANGE, _TEMPERATURE_MEANING),
        lambda v: _in_range(v, POSE_CODE_TEMPERATURE_RANGE)),
    "UniPoseConfig.text_to_pose_guidance": (
        _range_text(POSE_GUIDANCE_RANGE, _GUIDANCE_MEANING), lambda v: _in_range(v, POSE_GUIDANCE_RANGE)),
    "UniPoseConfig.name": ("a non-empty name", lambda v: bool(v)),
    "UniPoseConfig.family": (f"one of {FAMILIES}", lambda v: v in FAMILIES),
    "VocabLayout.family": (f"one of {FAMILIES}", lambda v: v in FAMILIES),
    "VocabLayout.codebook_size": ("a size >= 0 (0: ChatPose, no pose codes)", lambda v: v >= 0),
    "VocabLayout.num_pose_tokens": ("a count >= 0 (0: ChatPose, no pose codes)", lambda v: v >= 0),
    "LLMConfig.pose_head_outputs": ("a size >= 0 (0: no pose head)", lambda v: v >= 0),
}
_DEFAULT_RANGES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    int: ("an integer >= 1", lambda v: v >= 1),
    float: ("a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    str: ("a string", lambda v: True),
    bool: ("true or false", lambda v: True),
}


def _refuse(source: str, field_name: str, value: Any, expected: str) -> NoReturn:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ConfigError.make(f"{source}: {field_name} = {shown} ({type(value).__name__})", expected,
                           "Fix that field (or re-convert / re-save the model with this SDK version).")


def _is_type(value: Any, kind: type) -> bool:
    if kind is float:  # JSON writes 1.0 as 1 only by hand, so ints are fine for floats; bools never are
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_fields(cls: type, values: Mapping[str, Any], source: str, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        label = f"{prefix}{name}"
        hint = hints[name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        text, test = _RANGES.get(f"{cls.__name__}.{name}", (None, None))
        if origin is tuple:
            kind = args[0]
            length = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)
            default_text, default_test = _DEFAULT_RANGES[kind]
            expected = (f"a list of {length or 'one or more'} values, each {text or default_text}")
            if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) or not value:
                _refuse(source, label, value, expected)
            if not all(_is_type(v, kind) and (test or default_test)(v) for v in value):
                _refuse(source, label, value, expected)
        elif origin is dict or hint is dict:
            if not isinstance(value, dict):
                _refuse(source, label, value, "a JSON object")
        else:
            default_text, default_test = _DEFAULT_RANGES[hint]
            expected = f"{hint.__name__}: {text or default_text}"
            if not _is_type(value, hint) or not (test or default_test)(value):
                _refuse(source, label, value, expected)


def _check_consistency(config: Any, source: str, prefix: str) -> None:
    def need(ok: bool, field_name: str, expected: str) -> None:
        if not ok:
            _refuse(source, prefix + field_name, getattr(config, field_name), expected)

    if isinstance(config, LLMConfig):
        need(config.num_attention_heads % config.num_key_value_heads == 0, "num_attention_heads",
             f"a multiple of num_key_value_heads={config.num_key_value_heads}")
        need(config.head_dim % 2 == 0, "head_dim", "an even number (rotary embeddings turn pairs of channels)")
    elif isinstance(config, CLIPVisionConfig):
        need(config.hidden_size % config.num_attention_heads == 0, "hidden_size",
             f"a multiple of num_attention_heads={config.num_attention_heads}")
        need(config.image_size >= config.patch_size, "image_size", f">= patch_size={config.patch_size}")
        need(abs(config.select_layer) <= config.num_hidden_layers, "select_layer",
             f"a layer index within num_hidden_layers={config.num_hidden_layers}")
    elif isinstance(config, PoseViTConfig):
        need(config.embed_dim % config.num_heads == 0, "embed_dim", f"a multiple of num_heads={config.num_heads}")
        need(min(config.image_height, config.image_width) + 2 * config.patch_padding >= config.patch_size,
             "patch_size", "at most the padded crop size")
    elif isinstance(config, VocabLayout):
        for name in ("bos_id", "eos_id", "pad_id"):
            need(getattr(config, name) < config.text_vocab_size, name,
                 f"an id below text_vocab_size={config.text_vocab_size}")
    elif isinstance(config, TextEncoderConfig):
        need(config.hidden_size % config.num_attention_heads == 0, "hidden_size",
             f"a multiple of num_attention_heads={config.num_attention_heads}")
        need(2 <= config.max_tokens <= config.max_position_embeddings, "max_tokens",
             f"between 2 and max_position_embeddings={config.max_position_embeddings}")
    elif isinstance(config, PoseTokenizerConfig):
        lengths = config.encoder_lengths
        need(all(b == 2 * a for a, b in zip(lengths, lengths[1:])), "encoder_lengths",
             "lengths that double from one to the next (official: 40, 80, 160)")
        need(config.decoder_lengths[-1] == config.num_joints, "decoder_lengths",
             f"a sequence ending at num_joints={config.num_joints}")


ConfigT = TypeVar("ConfigT")


def build_config(cls: type[ConfigT], values: Any, source: str, prefix: str = "") -> ConfigT:
    """One config dataclass from a JSON object read from `source`: unknown fields, wrong types (a string for a
    number, a bool for an int), values out of range (sizes < 1, non-finite or non-positive eps / rope_theta) and
    inconsistent sizes (heads that do not divide the width ...) raise ConfigError naming the field and value."""
    if not isinstance(values, Mapping):
        _refuse(source, prefix.rstrip(".") or cls.__name__, values, f"a JSON object of {cls.__name__} fields")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError.make(f"{source}: unknown {cls.__name__} fields {[prefix + u for u in unknown]}",
                               f"only the fields {sorted(names)}",
                               "Remove them, or upgrade unipose-sdk if the file was written by a newer version.")
    _check_fields(cls, values, source, prefix)
    # JSON turns tuples into lists; the dataclasses are frozen and hashable, so turn them back.
    config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    _check_consistency(config, source, prefix)
    return config


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


def _chatpose_13b() -> UniPoseConfig:
    # LLaVA-1.5-13B / LLaMA-2-13B sizes (CHATPOSE-V0's config.json): 40 heads without GQA, RoPE theta 1e4, a 4096
    # context; 32000 LLaMA ids + [SEG], <im_start>, <im_end>. CLIP ViT-L/14-336 as for UniPose (576 patch tokens
    # of the penultimate layer), LLaVA-1.5's mlp2x_gelu projector 1024 -> 5120 -> 5120.
    vocab = VocabLayout(text_vocab_size=32000, codebook_size=0, num_pose_tokens=0, family="chatpose")
    return UniPoseConfig(
        name="chatpose-13b",
        llm=LLMConfig(vocab_size=vocab.vocab_size, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, num_key_value_heads=40, head_dim=128, rope_theta=10_000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=4096, pose_head_outputs=144),
        vocab=vocab,
        clip=CLIPVisionConfig(),
        pose_vit=PoseViTConfig(),
        projector=ProjectorConfig(input_size=1024, hidden_size=5120, output_size=5120),
        pose_tokenizer=PoseTokenizerConfig(),
        max_text_tokens=2048,
        family="chatpose",
    )


def _chatpose_tiny() -> UniPoseConfig:
    # The ChatPose structure at toy size for tests and benchmarks (random weights, nothing trained): LLaMA-style
    # 2-layer 128-wide LLM without GQA, the tiny CLIP-like tower (112 px, 64 tokens), the 144-output pose head.
    vocab = VocabLayout(text_vocab_size=1024, codebook_size=0, num_pose_tokens=0, family="chatpose")
    base = _unipose_tiny()
    return UniPoseConfig(
        name="chatpose-tiny",
        llm=LLMConfig(vocab_size=vocab.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, rope_theta=10_000.0,
                      max_position_embeddings=1024, pose_head_outputs=144),
        vocab=vocab,
        clip=base.clip,
        pose_vit=base.pose_vit,
        projector=ProjectorConfig(input_size=128, hidden_size=128, output_size=128),
        pose_tokenizer=base.pose_tokenizer,
        max_text_tokens=512,
        family="chatpose",
    )


PRESETS = {"unipose-7b": _unipose_7b, "unipose-tiny": _unipose_tiny, "chatpose-13b": _chatpose_13b,
           "chatpose-tiny": _chatpose_tiny}


def get_preset(name: str) -> UniPoseConfig:
    """Return a fresh config for a preset name (`unipose-7b`, `unipose-tiny`, `chatpose-13b`, `chatpose-tiny`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
