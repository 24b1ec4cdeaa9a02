"""Options of the task classes: dataclasses validated at construction, and the Backend / Device enums.

Each task's options hold only what that task uses: `BaseOptions` (where the model comes from, where it runs, how
long answers may be) for every task, `PoseTaskOptions` adds what only the pose answers of Estimator, Generator
and Editor use (`pose_only`, `one_pass`). Passing a field a task does not have to its `from_pretrained` is an
InvalidOptionError that lists the valid names. Each task turns its options into ONE `generation.GenerationConfig`
(`generation_config`), which reaches the generation loop unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path

import torch

import unipose_sdk.formats as formats
from unipose_sdk.errors import BackendUnavailableError, InvalidInputError, InvalidOptionError
from unipose_sdk.formats import EMBEDDED_MODEL
from unipose_sdk.generation import GenerationConfig, check_sampling, pose_block_length
from unipose_sdk.models.config import (
    VocabLayout,
    check_min_sentence_logprob,
    check_pose_code_temperature,
    check_pose_guidance,
)

# "auto" and one member per row of the format table: TORCH, ONNXRUNTIME, TENSORRT.
Backend = enum.Enum("Backend", {"AUTO": "auto", **{b.upper(): b for b in formats.BACKENDS}},  # type: ignore[misc]
                    module=__name__, qualname="Backend", type=str)


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


# Far above any answer the models give (a pose answer is 84 ids), low enough that a typo such as 10**9 is caught
# before a KV cache of that length is sized.
MAX_NEW_TOKENS_LIMIT = 65536


def _is_int(value: object) -> bool:
    """An int that is not a bool (numpy integers count)."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _enum_value(enum_type: type[enum.Enum], value: object, what: str) -> enum.Enum:
    try:
        return enum_type(value.value if isinstance(value, enum.Enum) else str(value).lower())
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise InvalidInputError.make(f"{what}={value!r}", f"one of {allowed}", f"Pass a valid {what}.") from None


def resolve_device(device: Device) -> torch.device:
    """`auto` means CUDA when torch sees a GPU, else the CPU; asking for CUDA without one is an error."""
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.CUDA and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "received device='cuda'; expected a CUDA device visible to torch, but torch.cuda.is_available() is "
            f"False (torch {torch.__version__}). Install a CUDA build of torch, or use device='cpu' / 'auto'."
        )
    return torch.device(device.value)


@dataclass
class BaseOptions:
    """Where the model comes from, where it runs, and how long answers may be (the options every task has).

    model: None or "unipose-tiny" for the embedded default model, or a path to a model directory (SDK format,
        see `unipose convert`) or to a directory written by `unipose export` (ONNX graphs, TensorRT engines).
    backend: "auto" | "torch" | "onnxruntime" | "tensorrt" (one per row of `unipose_sdk.formats.FORMATS`).
        "auto" runs the fastest format the model directory holds on the device whose runtime is installed
        (`formats.AUTO_ORDER`: TensorRT engines, then ONNX graphs, then torch weights); every result names it.
    device: "auto" | "cpu" | "cuda".
    dtype: None (float32 on CPU, bfloat16 on CUDA), or "float32" / "float16" / "bfloat16" (also "fp32" /
        "fp16" / "bf16") / a torch.dtype. Exported directories run at the precision they were exported in.
    num_threads: CPU threads for this task object's calls (None: the process's setting). On torch it is set for
        each call and restored after it, never changed for the process; ONNX Runtime / TensorRT fix it when the
        model loads, so a different value for an already loaded exported model is refused (InvalidOptionError).
    max_new_tokens: most TEXT tokens (eos included) the model generates per answer. The pose block a pose task
        answers with (`generation.pose_block_length`: BEGIN, 80 codes, END = 82 tokens) is not counted: a pose
        answer always has room for its pose block, then up to max_new_tokens text tokens after it (pose_only=False).
        The description tasks answer in text only (a pose block the model would emit there counts its 82).
    compile: torch backend: compile the decoder calls (CUDA graphs on CUDA). None: on for CUDA, off on the CPU:
        there the embedded model's text decode gets ~1.8x faster, but the pose answers get slower (prompts padded
        to a compile bucket) and every new shape costs seconds to a minute of compiling
        (benchmarks/results/latency_tiny_cpu_compile.md). Turn it on for long-running text-heavy CPU services.
    """

    model: str | Path | None = None
    backend: Backend | str = Backend.AUTO
    device: Device | str = Device.AUTO
    dtype: torch.dtype | str | None = None
    num_threads: int | None = None
    max_new_tokens: int = 128
    compile: bool | None = None
    _resolved_dtype: torch.dtype | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.backend = _enum_value(Backend, self.backend, "backend")
        self.device = _enum_value(Device, self.device, "device")
        if self.model is not None and not isinstance(self.model, (str, Path)):
            raise InvalidInputError.make(f"model={self.model!r} ({type(self.model).__name__})",
                                         "None, 'unipose-tiny' or a path to a model directory",
                                         "Pass the model name or directory as a string or Path.")
        if self.dtype is not None:
            self._resolved_dtype = formats.torch_dtype(self.dtype)
        # Field types: a bool is not accepted for an int (True would silently mean 1), nor an int for a bool.
        if self.num_threads is not None and not (_is_int(self.num_threads) and self.num_threads >= 1):
            raise InvalidOptionError.make(f"num_threads={self.num_threads!r} ({type(self.num_threads).__name__})",
                                          "a positive int or None", "Pass e.g. num_threads=2.")
        if not (_is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT):
            raise InvalidOptionError.make(
                f"max_new_tokens={self.max_new_tokens!r} ({type(self.max_new_tokens).__name__})",
                f"an int in [1, {MAX_NEW_TOKENS_LIMIT}]", "Pass e.g. max_new_tokens=128.")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise InvalidOptionError.make(f"compile={self.compile!r} ({type(self.compile).__name__})",
                                          "True, False or None (auto)", "Pass compile=None to let the device decide.")

    @property
    def is_embedded_model(self) -> bool:
        return self.model is None or str(self.model) == EMBEDDED_MODEL

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)  # type: ignore[arg-type]

    def torch_compile(self, device: torch.device) -> bool:
        return self.compile if self.compile is not None else device.type == "cuda"

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self._resolved_dtype is not None:
            return self._resolved_dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def generation_config(self, vocab: VocabLayout) -> GenerationConfig:
        """The one generation config of a text answer: max_new_tokens as given, step by step."""
        return GenerationConfig(max_new_tokens=int(self.max_new_tokens))


@dataclass
class PoseTaskOptions(BaseOptions):
    """The options of the tasks that answer with a pose (Estimator, Generator, Editor).

    pose_only: stop after the pose block; False also decodes the text after it (END, "." and eos carry no
        information, so this only costs decode steps).
    one_pass: run the prompt and the pose block as one forward over the weights (same tokens as the step-by-step
        path); False runs them as two calls.
    """

    pose_only: bool = True
    one_pass: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("pose_only", "one_pass"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError.make(f"{name}={getattr(self, name)!r} ({type(getattr(self, name)).__name__})",
                                              "True or False", f"Pass {name}=True.")

    def generation_config(self, vocab: VocabLayout) -> GenerationConfig:
        """The one generation config of a pose answer. The answer starts with its pose block, which does not count
        against max_new_tokens: the stream may hold the block's `pose_block_length(vocab)` ids (82) plus
        max_new_tokens text tokens, so a small max_new_tokens never cuts the pose."""
        return GenerationConfig(max_new_tokens=int(self.max_new_tokens) + pose_block_length(vocab),
                                start_with_pose=True, stop_after_pose=self.pose_only, one_pass=self.one_pass)


@dataclass
class EstimatorOptions(PoseTaskOptions):
    """bbox_margin: how much context around a given person box the square crop keeps (1.2 = 20 % more)."""

    bbox_margin: float = 1.2

    def __post_init__(self) -> None:
        super().__post_init__()
        margin = self.bbox_margin
        if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and 1.0 <= float(margin) <= 3.0):
            raise InvalidOptionError.make(f"bbox_margin={margin!r} ({type(margin).__name__})",
                                          "a number in [1.0, 3.0]", "Use 1.2 (the default) unless crops cut off limbs.")


@dataclass
class GeneratorOptions(PoseTaskOptions):
    """Generator: the pose-task options and three more.

    pose_code_temperature: None: the model's `text_to_pose_code_temperature` (1 unless its card says otherwise);
        a number in [0.05, 10] overrides it (`GenerationConfig.pose_code_temperature`: lower commits to the
        likeliest pose codes, 1 is the plain expected code). Models decoded by argmax ignore it.
    pose_guidance: None: the model's `text_to_pose_guidance` (0, none, unless its card says otherwise); a number
        in [0, 10] overrides it (`GenerationConfig.pose_guidance`: classifier-free guidance away from the pose the
        model gives the prompt without a description). ChatPose models, which regress poses, ignore it.
    choose_candidates: for a model with a text-pose matcher (unipose-tiny), decode each prompt at every one of
        the model's candidate settings (`text_to_pose_candidates`) and keep the pose the matcher scores as showing
        the prompt best. False, or a pose_code_temperature / pose_guidance given here: the one decoding.
    """

    pose_code_temperature: float | None = None
    pose_guidance: float | None = None
    choose_candidates: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for value, check in ((self.pose_code_temperature, check_pose_code_temperature),
                             (self.pose_guidance, check_pose_guidance)):
            if value is not None:
                try:
                    check(value)
                except InvalidInputError as error:
                    raise InvalidOptionError(str(error)) from None
        if not isinstance(self.choose_candidates, bool):
            raise InvalidOptionError.make(f"choose_candidates={self.choose_candidates!r}", "True or False",
                                          "Pass choose_candidates=False to decode once.")

    def generation_config(self, vocab: VocabLayout, model_pose_code_temperature: float = 1.0,
                          model_pose_guidance: float = 0.0,
                          model_pose_candidates: tuple[tuple[float, float], ...] = ()) -> GenerationConfig:
        """The pose-task config, decoding pose codes at this option's temperature and guidance or else the
        model's, choosing among the model's candidate decodings when these options leave it to the model."""
        config = super().generation_config(vocab)
        temperature = model_pose_code_temperature if self.pose_code_temperature is None else self.pose_code_temperature
        guidance = model_pose_guidance if self.pose_guidance is None else self.pose_guidance
        by_model = self.choose_candidates and self.pose_code_temperature is None and self.pose_guidance is None
        return dataclasses.replace(config, pose_code_temperature=float(temperature), pose_guidance=float(guidance),
                                   pose_candidates=model_pose_candidates if by_model and not config.sampling else ())


@dataclass
class EditorOptions(PoseTaskOptions):
    """Editor: the pose-task options and one more.

    keep_unnamed_regions: the edited pose takes from the model only the regions the instruction names (an arm, a
        leg, the torso, the head: `body.regions.regions_named`); every other joint, the global orientation
        included, keeps the source pose's rotation. An instruction naming no region or a whole-body change
        ("squat", "lie down") gets the model's whole pose. `pose_codes` are the model's either way; the result's
        `edited_regions` says what was taken. False: the model's whole pose, as the official code returns it.
    """

    keep_unnamed_regions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.keep_unnamed_regions, bool):
            raise InvalidOptionError.make(
                f"keep_unnamed_regions={self.keep_unnamed_regions!r} ({type(self.keep_unnamed_regions).__name__})",
                "True or False", "Pass keep_unnamed_regions=False for the model's whole pose.")


@dataclass
class DescriberOptions(BaseOptions):
    """Describer: the base options (its answers are text: no pose_only / one_pass) and how sure a sentence must be.

    min_sentence_logprob: None: the model's `image_description_min_sentence_logprob` for image descriptions (the
        embedded model's card gives it; other models keep every sentence), every sentence elsewhere; a number in
        [-20, 0] applies to every description: a sentence is kept when its tokens have at least this mean natural
        log-probability (text/sentences.py; the surest sentence is kept when none is that sure).
    keep_all_sentences: True keeps every sentence whatever the model's default (the model's whole answer).
    """

    min_sentence_logprob: float | None = None
    keep_all_sentences: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_sentence_logprob is not None:
            try:
                check_min_sentence_logprob(self.min_sentence_logprob)
            except InvalidInputError as error:
                raise InvalidOptionError(str(error)) from None
        if not isinstance(self.keep_all_sentences, bool):
            raise InvalidOptionError.make(f"keep_all_sentences={self.keep_all_sentences!r}", "True or False",
                                          "Pass keep_all_sentences=True for the model's whole answer.")
        if self.keep_all_sentences and self.min_sentence_logprob is not None:
            raise InvalidOptionError.make(
                f"keep_all_sentences=True with min_sentence_logprob={self.min_sentence_logprob}",
                "one of them", "Drop min_sentence_logprob to keep every sentence, or keep_all_sentences to filter.")

    def sentence_floor(self, model_floor: float | None) -> float | None:
        """The floor a description is filtered at, given the model's default for its kind (None: none)."""
        if self.keep_all_sentences:
            return None
        return model_floor if self.min_sentence_logprob is None else float(self.min_sentence_logprob)


@dataclass
class AssistantOptions(BaseOptions):
    """Assistant: free-form conversations (text, images and poses in; text and poses out).

    max_new_tokens: most TEXT tokens of one reply (eos included); each pose the reply may hold adds its 82-token
        block on top (max_poses of them).
    max_poses: most pose blocks one reply may hold; a reply that starts one more ends there (finish "length").
        A text-only reply still ends after max_new_tokens text tokens.
    temperature: 0 decodes greedily (the official behaviour, the default); above 0 samples text tokens and pose
        codes from softmax(logits / temperature).
    top_p: nucleus sampling cut (1.0: none); read only when sampling.
    seed: the sampling seed (None: torch's global generator). Turn k of a conversation samples with seed + k, so
        replaying a conversation with the same seed gives the same replies.
    pose_tasks_answer_with_pose: a turn worded as a pose task's template ("Generate pose of the image: <image>.",
        "Generate pose of the description: ...", "Edit pose <pose> by description: ...") gets a reply that starts
        with its pose block, as Estimator, Generator and Editor force it; small models trained on one turn at a time
        may otherwise answer a later turn with text. False decodes every turn freely (the official demo). UniPose
        models only: ChatPose turns always decode freely.
    text_tasks_answer_with_text: the same for the text tasks: a turn worded as a description or difference
        template ("Generate description of the pose <pose>.", ...) gets a text reply, never a pose block, as
        Describer's are; after a few pose turns a small model may otherwise answer it with a pose.
    """

    max_poses: int = 2
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    pose_tasks_answer_with_pose: bool = True
    text_tasks_answer_with_text: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (_is_int(self.max_poses) and 0 <= self.max_poses <= 16):
            raise InvalidOptionError.make(f"max_poses={self.max_poses!r} ({type(self.max_poses).__name__})",
                                          "an int in [0, 16]", "Pass e.g. max_poses=2.")
        for name, kind in (("pose_tasks_answer_with_pose", "pose"), ("text_tasks_answer_with_text", "text")):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InvalidOptionError.make(f"{name}={value!r} ({type(value).__name__})", "True or False",
                                              f"Pass {name}=False to decode {kind}-task turns freely.")
        try:
            check_sampling(self.temperature, self.top_p, self.seed)
        except InvalidInputError as error:
            raise InvalidOptionError(str(error)) from None

    def generation_config(self, vocab: VocabLayout, turn: int = 0, start_with_pose: bool = False,
                          text_only: bool = False) -> GenerationConfig:
        """Turn `turn`'s config: max_new_tokens text tokens plus room for max_poses pose blocks, greedy or sampled
        with seed + turn; start_with_pose forces the reply's first token to be BEGIN (a pose task's turn),
        text_only bans BEGIN (a text task's turn)."""
        return GenerationConfig(
            max_new_tokens=int(self.max_new_tokens) + int(self.max_poses) * pose_block_length(vocab),
            start_with_pose=start_with_pose and int(self.max_poses) > 0, text_only=text_only,
            temperature=float(self.temperature), top_p=float(self.top_p),
            seed=None if self.seed is None else int(self.seed) + int(turn),
            max_text_tokens=int(self.max_new_tokens), max_poses=int(self.max_poses))
