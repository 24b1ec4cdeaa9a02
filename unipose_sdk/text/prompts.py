"""Prompt building: the seven UniPose tasks and free-form prompts -> token ids with image slots.

What the official code does (liyiheng23/UniPose, posegpt.process_templates + LLaVA's `mistral_instruct`
conversation and `tokenizer_image_token`), reproduced here without its string round trips:

* the user turn is a template with placeholders; `<caption>` is replaced by the caption text, `<pose>` means
  `<poseA>`, a pose becomes BEGIN + 80 pose ids + END with no spaces around the ids, and `<image>` becomes
  `<im_start>` + the image's projected embeddings + `<im_end>`. Spaces and the "." after a placeholder stay
  exactly where the template has them ("... the pose <pose>." -> "... the pose " BEGIN ... END ".").
* the conversation is `[INST] {user} [/INST]` with an empty system prompt; BOS comes first and the answer follows
  the closing `[/INST]` (LLaVA writes " {answer} </s>" for training; at inference the prompt ends at "[/INST]").
* each stretch of text between placeholders is tokenized on its own, as the official slow tokenizer does when it
  splits the prompt on `<image>` and on its added tokens.
* several turns (`build_conversation`) follow LLaVA's `mistral_instruct` conversation, which the official code
  selects: "[INST] {user1} [/INST] {answer1} </s>[INST] {user2} [/INST]", one BOS, earlier turns closed by `</s>`.

Divergence on purpose: the official demo fills every `<pose>` with pose A. Here, in a prompt with no explicit
`<poseA>` / `<poseB>`, the k-th `<pose>` takes the k-th pose given ("difference between <pose> and <pose>" then
compares two poses, as a user means it); with explicit `<poseA>`/`<poseB>`, `<pose>` means pose A, as officially.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError, InvalidTextError, UnsupportedTaskError
from unipose_sdk.models.config import VocabLayout
from unipose_sdk.text.tokenizer import TextTokenizer

IMAGE_PLACEHOLDER = "<image>"
POSE_PLACEHOLDER = "<pose>"
POSE_A_PLACEHOLDER = "<poseA>"
POSE_B_PLACEHOLDER = "<poseB>"
CAPTION_PLACEHOLDER = "<caption>"
_PLACEHOLDER_RE = re.compile(r"(<image>|<poseA>|<poseB>|<pose>)")


class Task(str, enum.Enum):
    """The seven tasks; values are the official task names."""

    POSE_ESTIMATION = "image2pose"
    IMAGE_DESCRIPTION = "image2text"
    IMAGE_DIFFERENCE = "image_difference"
    TEXT_TO_POSE = "text2pose"
    POSE_DESCRIPTION = "pose2text"
    POSE_DIFFERENCE = "pose_difference"
    POSE_EDITING = "pose_edit"


# Pretraining phrasings (user turn, answer), exactly as the official instruction tables write them.
TASK_TEMPLATES: dict[Task, tuple[str, str]] = {
    Task.POSE_ESTIMATION: ("Generate pose of the image: <image>.", "<pose>."),
    Task.IMAGE_DESCRIPTION: ("Generate description of the pose in the image: <image>.", "<caption>."),
    Task.IMAGE_DIFFERENCE: ("Output the difference between image <image> and <image>.", "<caption>."),
    Task.TEXT_TO_POSE: ("Generate pose of the description: <caption>.", "<pose>."),
    Task.POSE_DESCRIPTION: ("Generate description of the pose <pose>.", "<caption>."),
    Task.POSE_DIFFERENCE: ("Output the difference between pose <poseA> and pose <poseB>.", "<caption>."),
    Task.POSE_EDITING: ("Edit pose <poseA> by description: <caption>.", "<poseB>."),
}

# What each task needs from the caller: (number of images, number of poses, needs a caption).
TASK_INPUTS: dict[Task, tuple[int, int, bool]] = {
    Task.POSE_ESTIMATION: (1, 0, False),
    Task.IMAGE_DESCRIPTION: (1, 0, False),
    Task.IMAGE_DIFFERENCE: (2, 0, False),
    Task.TEXT_TO_POSE: (0, 0, True),
    Task.POSE_DESCRIPTION: (0, 1, False),
    Task.POSE_DIFFERENCE: (0, 2, False),
    Task.POSE_EDITING: (0, 1, True),
}


def chat_prompt(user: str) -> str:
    """The Mistral instruct turn as text (BOS not included): '[INST] {user} [/INST]'."""
    return f"[INST] {user} [/INST]"


def task_user_turn(task: Task | str, caption: str | None = None) -> str:
    """The user turn of a task with `<caption>` filled in; pose and image placeholders stay."""
    task = Task(task)
    template = TASK_TEMPLATES[task][0]
    if CAPTION_PLACEHOLDER in template:
        if caption is None or not caption.strip():
            raise InvalidTextError.make(
                received=f"caption={caption!r} for task {task.value}",
                expected="a non-empty description", fix="Pass the text describing the pose (or the edit).")
        template = template.replace(CAPTION_PLACEHOLDER, caption.strip())
    return template


def _template_pattern(template: str) -> re.Pattern[str]:
    """A task's user turn as a pattern whose group (if the task takes one) is the caption; <pose>, <poseA> and
    <poseB> stand for each other and the closing "." may be left out."""
    pattern = re.escape(template).replace(re.escape(CAPTION_PLACEHOLDER), "(.+?)")
    for slot in ("<poseA>", "<poseB>", "<pose>"):
        pattern = pattern.replace(re.escape(slot), "(?:<pose>|<poseA>|<poseB>)")
    return re.compile(pattern.removesuffix(re.escape(".")) + r"\.?\s*", re.DOTALL)


_TEMPLATE_PATTERNS = {task: _template_pattern(user) for task, (user, _) in TASK_TEMPLATES.items()}


def _template_match(user: str) -> tuple[Task, re.Match[str]] | None:
    """The task template a user turn is worded as, with the match (the templates never match the same text)."""
    for task, pattern in _TEMPLATE_PATTERNS.items():
        match = pattern.fullmatch(user.strip())
        if match:
            return task, match
    return None


def task_of_turn(user: str) -> Task | None:
    """The task whose template a user turn is worded as (what `task_user_turn` writes, caption filled in), or
    None for any other wording."""
    found = _template_match(user)
    if found and all(re.search(r"\w", group) for group in found[1].groups()):  # a caption says something
        return found[0]
    return None


def answers_with_pose(task: Task | None) -> bool:
    """Whether the task's answer template is a pose (estimation, text to pose, editing)."""
    return task is not None and TASK_TEMPLATES[task][1].startswith("<pose")


def encoder_text_of(user: str) -> str:
    """What a model's sentence encoder reads of a user turn: the caption when the turn is worded as a task template
    that takes one (as `build_task` gives it: what the user wrote, not the task's fixed wording around it), else
    the turn without its placeholders."""
    found = _template_match(user)
    if found and TASK_INPUTS[found[0]][2] and found[1].group(1).strip():
        return found[1].group(1).strip()
    return " ".join(_PLACEHOLDER_RE.sub(" ", user).split())


@dataclass(frozen=True)
class PromptRow:
    """One prompt before batching: ids with `layout.pad_id` in image slots, and each image's first slot."""

    input_ids: list[int]
    image_starts: list[int]  # offsets of each image's first embedding slot, in order of the images given
    text: str  # the rendered prompt with placeholders, for logs and error messages
    # Models with a sentence encoder (`UniPoseConfig.text_encoder`): its rows fill `text_rows` pad slots from
    # `text_start` on (right after BOS), encoding `encoder_text`. None: the model has no sentence encoder.
    text_start: int | None = None
    encoder_text: str = ""
    # A conversation (`PromptBuilder.build_conversation`) on such a model: (first slot, encoder text) of every
    # turn's rows, in order; text_start / encoder_text are the last turn's.
    text_slots: tuple[tuple[int, str], ...] = ()

    @property
    def sentence_slots(self) -> tuple[tuple[int, str], ...]:
        """(first slot, encoder text) of every turn's sentence-encoder rows; empty without a sentence encoder."""
        if self.text_slots:
            return self.text_slots
        return ((self.text_start, self.encoder_text),) if self.text_start is not None else ()


@dataclass(frozen=True)
class ConversationTurn:
    """One turn of a conversation for `PromptBuilder.build_conversation`.

    user: the user's text with `<image>` / `<pose>` / `<poseA>` / `<poseB>` placeholders.
    poses: the pose codes for the placeholders, as `PromptBuilder.build` takes them (a sequence, or {"A", "B"}).
    num_images: how many `<image>` the text holds (checked).
    answer: None for the open (last) turn; else the model's answer in order: text stretches (str) and pose codes
        (sequences of codebook indices), e.g. `PromptBuilder.answer_pieces(ids)`.
    """

    user: str
    poses: Sequence[Any] | Mapping[str, Any] = ()
    num_images: int = 0
    answer: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class PromptInputs:
    """A left-padded batch of prompts.

    input_ids      (B, T) int64; padding and image slots hold `pad_id` (their embeddings are replaced or masked)
    attention_mask (B, T) bool, False on left padding
    lengths        real length of each row (image slots included)
    image_starts   per row, the padded position of each image's first slot; each image fills `image_tokens` slots
    image_tokens   N, embeddings per image
    Images are numbered row by row, in prompt order: image_embeds[k] fills the k-th image of the batch.
    """

    input_ids: Tensor
    attention_mask: Tensor
    lengths: list[int]
    image_starts: list[list[int]]
    image_tokens: int
    texts: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_images(self) -> int:
        return sum(len(starts) for starts in self.image_starts)

    @property
    def position_ids(self) -> Tensor:
        """0..len-1 over the real tokens of each row (left padding gets 0), as the official generate does."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def image_places(self) -> tuple[list[int], list[int]]:
        """(rows, starts): the row and first slot of each image of the batch, in image order; what
        `UniPoseModel.build_inputs_embeds` and `models.unipose.splice_image_embeds` take as image_rows, image_starts."""
        rows = [row for row, starts in enumerate(self.image_starts) for _ in starts]
        return rows, [start for starts in self.image_starts for start in starts]

    @property
    def image_mask(self) -> Tensor:
        """(B, T) bool, True at every image-embedding slot; row-major order matches the image numbering."""
        mask = torch.zeros_like(self.input_ids, dtype=torch.bool)
        for row, starts in enumerate(self.image_starts):
            for start in starts:
                mask[row, start:start + self.image_tokens] = True
        return mask

    def to(self, device: torch.device | str) -> PromptInputs:
        return PromptInputs(self.input_ids.to(device), self.attention_mask.to(device), list(self.lengths),
                            [list(s) for s in self.image_starts], self.image_tokens, list(self.texts))


def _codes_list(codes: Any, layout: VocabLayout, what: str) -> list[int]:
    array = np.asarray(codes.detach().cpu() if isinstance(codes, Tensor) else codes)
    if array.ndim != 1 or array.shape[0] != layout.num_pose_tokens or not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError.make(
            received=f"{what} with shape {array.shape} and dtype {array.dtype}",
            expected=f"{layout.num_pose_tokens} integer codebook indices",
            fix="Encode the pose with the pose tokenizer first (PoseTokenizer.encode) and pass one row per pose.")
    if array.min() < 0 or array.max() >= layout.codebook_size:
        raise InvalidInputError.make(
            received=f"{what} with codes in [{array.min()}, {array.max()}]",
            expected=f"codes in [0, {layout.codebook_size - 1}]", fix="Use codes from this model's pose tokenizer.")
    return [int(c) for c in array]


class PromptBuilder:
    """Turns user turns with placeholders into PromptRows / PromptInputs for one model."""

    def __init__(self, tokenizer: TextTokenizer, image_tokens: int, max_tokens: int | None = None,
                 text_rows: int = 0) -> None:
        self.tokenizer = tokenizer
        self.layout = tokenizer.layout
        self.image_tokens = image_tokens
        self.max_tokens = max_tokens
        self.text_rows = text_rows  # sentence-encoder rows after BOS (0: the model has no sentence encoder)

    def pose_ids(self, codes: Any, what: str = "pose") -> list[int]:
        """BEGIN + the codes' vocabulary ids + END (82 ids)."""
        codes_list = _codes_list(codes, self.layout, what)
        offset = self.layout.pose_id_offset
        return [self.layout.pose_begin_id, *(offset + c for c in codes_list), self.layout.pose_end_id]

    def build(self, user: str, poses: Sequence[Any] | Mapping[str, Any] = (), num_images: int | None = None,
              encoder_text: str | None = None) -> PromptRow:
        """One prompt from a free-form user turn.

        `poses`: a sequence (k-th `<pose>`, or A then B) or a mapping {"A": codes, "B": codes}.
        `num_images`: if given, must equal the number of `<image>` placeholders.
        `encoder_text`: what the sentence encoder reads (models with one); None: the user turn without its
        placeholders.
        """
        if not isinstance(user, str) or not user.strip():
            raise InvalidTextError.make(received=f"user prompt {user!r}", expected="non-empty text",
                                        fix="Write the request, using <image> / <pose> where inputs go.")
        parts = _PLACEHOLDER_RE.split(chat_prompt(user))
        slots = [p for p in parts[1::2]]
        pose_for_slot = self._assign_poses(slots, poses)
        images_in_text = slots.count(IMAGE_PLACEHOLDER)
        if num_images is not None and num_images != images_in_text:
            raise InvalidInputError.make(
                received=f"{num_images} images for a prompt with {images_in_text} {IMAGE_PLACEHOLDER} placeholders",
                expected="one image per placeholder", fix=f"Add or remove {IMAGE_PLACEHOLDER} in the prompt text.")

        ids = [self.layout.bos_id]
        text_start = None
        if self.text_rows:
            text_start = len(ids)
            ids += [self.layout.pad_id] * self.text_rows
            if encoder_text is None:
                encoder_text = encoder_text_of(user)

        def pose_slot(index: int, _: str) -> Sequence[int]:
            label, codes = pose_for_slot[index // 2]
            return self.pose_ids(codes, what=f"pose {label}")

        image_starts = self._encode_split(ids, parts, pose_slot)
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise InvalidTextError.make(
                received=f"a prompt of {len(ids)} tokens (images count {self.image_tokens} each)",
                expected=f"at most {self.max_tokens} tokens for this model",
                fix="Shorten the text, or use fewer images / poses in one prompt.")
        return PromptRow(ids, image_starts, chat_prompt(user), text_start, encoder_text or "")

    def _encode_split(self, ids: list[int], parts: Sequence[str],
                      slot_ids: Callable[[int, str], Sequence[int]]) -> list[int]:
        """Append a text cut at its placeholders (`re.split` with one group: the text stretches at even indices)
        to `ids`: each stretch encoded on its own, an image as its slots, any other placeholder as
        `slot_ids(index, placeholder)`. Returns where each image's slots start."""
        image_starts: list[int] = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                ids += self.tokenizer.encode(part) if part else []
            elif part == IMAGE_PLACEHOLDER:
                self._append_image(ids, image_starts)
            else:
                ids += slot_ids(i, part)
        return image_starts

    def _append_image(self, ids: list[int], image_starts: list[int]) -> None:
        """An image's slots at the end of `ids`: <im_start>, image_tokens pads (the embeddings go there), <im_end>;
        where they start goes into `image_starts`."""
        ids.append(self.layout.image_start_id)
        image_starts.append(len(ids))
        ids += [self.layout.pad_id] * self.image_tokens
        ids.append(self.layout.image_end_id)

    def build_conversation(self, turns: Sequence[ConversationTurn], encoder_text: str | None = None) -> PromptRow:
        """The prompt of a conversation: every turn but the last answered, the last one open (answer None).
        `encoder_text`: what the sentence encoder reads for the open turn (models with one), as in `build`; None:
        the turn without its placeholders.

        The layout is what the official code builds with LLaVA's `mistral_instruct` conversation (empty system
        prompt, sep "", sep2 "</s>"): the string "[INST] {user1} [/INST] {answer1} </s>[INST] {user2} [/INST]",
        BOS first. It is tokenized as the official slow tokenizer does: the text is cut at every image, pose id
        and `</s>`, and each stretch in between is encoded on its own, so the space before an answer belongs to
        the stretch that ends with "[/INST]" and the space after it to the answer's last stretch. A single open
        turn gives exactly `build`'s ids.
        """
        if not turns:
            raise InvalidTextError.make("a conversation with no turns", "at least the open turn",
                                        "Pass the new user turn.")
        for i, turn in enumerate(turns):
            if (turn.answer is None) != (i == len(turns) - 1):
                raise InvalidInputError.make(
                    f"turn {i} of {len(turns)} {'without' if turn.answer is None else 'with'} an answer",
                    "answers for every turn but the last, and none for the last",
                    "Close earlier turns with the model's answers and leave the new turn open.")
        pieces: list[Any] = []
        rendered = []
        for turn in turns:
            if self.text_rows:
                # A model with a sentence encoder reads its rows before the request; one turn puts them right
                # after BOS (as `build`), each later turn before its own "[INST]" (an SDK extension, no official
                # layout exists), so a new turn leaves the earlier slots, and the cache over them, as they were.
                is_open = turn.answer is None
                pieces.append(("text_rows", encoder_text if is_open and encoder_text is not None
                               else encoder_text_of(turn.user)))
            pieces += self._user_pieces(turn)
            rendered.append(chat_prompt(turn.user))
            if turn.answer is not None:
                pieces.append(" ")
                for part in turn.answer:
                    pieces.append(part if isinstance(part, str) else ("pose", self.pose_ids(part, "answer pose")))
                pieces += [" ", ("eos",)]
                shown = "".join(p if isinstance(p, str) else POSE_PLACEHOLDER for p in turn.answer)
                rendered.append(f" {shown} </s>")
        ids, image_starts, text_slots = self._tokenize_pieces(pieces)
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise InvalidTextError.make(
                received=f"a conversation of {len(ids)} tokens (images count {self.image_tokens} each)",
                expected=f"at most {self.max_tokens} tokens for this model",
                fix="Start a new conversation, or use fewer images / poses per turn.")
        last = text_slots[-1] if text_slots else (None, "")
        return PromptRow(ids, image_starts, "".join(rendered), last[0], last[1], tuple(text_slots))

    def _user_pieces(self, turn: ConversationTurn) -> list[Any]:
        """'[INST] {user} [/INST]' as text pieces, ("image",) slots and ("pose", ids) blocks."""
        if not isinstance(turn.user, str) or not turn.user.strip():
            raise InvalidTextError.make(received=f"user turn {turn.user!r}", expected="non-empty text",
                                        fix="Write the request, using <image> / <pose> where inputs go.")
        parts = _PLACEHOLDER_RE.split(chat_prompt(turn.user))
        slots = list(parts[1::2])
        pose_for_slot = self._assign_poses(slots, turn.poses)
        images_in_text = slots.count(IMAGE_PLACEHOLDER)
        if turn.num_images != images_in_text:
            raise InvalidInputError.make(
                received=f"{turn.num_images} images for a turn with {images_in_text} {IMAGE_PLACEHOLDER} placeholders",
                expected="one image per placeholder", fix=f"Add or remove {IMAGE_PLACEHOLDER} in the turn's text.")
        pieces: list[Any] = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                pieces.append(part)
            elif part == IMAGE_PLACEHOLDER:
                pieces.append(("image",))
            else:
                label, codes = pose_for_slot[i // 2]
                pieces.append(("pose", self.pose_ids(codes, what=f"pose {label}")))
        return pieces

    def _tokenize_pieces(self, pieces: Sequence[Any]) -> tuple[list[int], list[int], list[tuple[int, str]]]:
        """Text pieces (adjacent ones joined, then encoded as one stretch), image slots, pose ids, eos and
        sentence-encoder rows -> ids after BOS, each image's first slot, and (first slot, text) of each row set."""
        ids = [self.layout.bos_id]
        image_starts: list[int] = []
        text_slots: list[tuple[int, str]] = []
        text = ""
        for piece in [*pieces, ("end",)]:
            if isinstance(piece, str):
                text += piece
                continue
            if text:
                ids += self.tokenizer.encode(text)
                text = ""
            kind = piece[0]
            if kind == "image":
                self._append_image(ids, image_starts)
            elif kind == "pose":
                ids += piece[1]
            elif kind == "eos":
                ids.append(self.layout.eos_id)
            elif kind == "text_rows":
                text_slots.append((len(ids), piece[1]))
                ids += [self.layout.pad_id] * self.text_rows
        return ids, image_starts, text_slots

    def answer_pieces(self, token_ids: Sequence[int]) -> tuple[str | list[int], ...]:
        """A generated answer (ids as `generation` returns them) -> its text stretches (decoded) and pose codes,
        in order, as `ConversationTurn.answer` takes them; eos and a block cut short are dropped and the ends of
        the text stripped (a chat shows, and the history keeps, the answer as text)."""
        layout = self.layout
        pieces: list[str | list[int]] = []
        run: list[int] = []
        ids = [int(t) for t in token_ids if int(t) != layout.eos_id]
        i = 0
        while i < len(ids):
            block = ids[i + 1:i + 1 + layout.num_pose_tokens]
            if ids[i] == layout.pose_begin_id and len(block) == layout.num_pose_tokens:
                pieces.append(self.tokenizer.decode(run))
                pieces.append([t - layout.pose_id_offset for t in block])
                run = []
                i += layout.num_pose_tokens + 2
                continue
            run.append(ids[i])
            i += 1
        pieces.append(self.tokenizer.decode(run))
        if isinstance(pieces[0], str):
            pieces[0] = pieces[0].lstrip()
        if isinstance(pieces[-1], str):
            pieces[-1] = pieces[-1].rstrip()
        return tuple(p for p in pieces if not (isinstance(p, str) and not p))

    def build_task(self, task: Task | str, caption: str | None = None, poses: Sequence[Any] = (),
                   num_images: int | None = None) -> PromptRow:
        """One prompt in the task's pretraining phrasing; `poses` in order A, B."""
        task = Task(task)
        want_images, want_poses, _ = TASK_INPUTS[task]
        if len(poses) != want_poses:
            raise InvalidInputError.make(received=f"{len(poses)} poses for task {task.value}",
                                         expected=f"{want_poses}", fix="Pass one pose per <pose> of the task.")
        # The sentence encoder reads what the user wrote (the caption), not the task's fixed wording around it.
        encoder_text = caption.strip() if caption is not None and TASK_INPUTS[task][2] else None
        return self.build(task_user_turn(task, caption), poses, want_images if num_images is None else num_images,
                          encoder_text=encoder_text)

    def build_unconditional(self, task: Task | str) -> PromptRow:
        """The task's prompt with its caption left out and, for a model with a sentence encoder, no text for the
        encoder: the prompt without a condition that classifier-free guidance contrasts with
        (`GenerationConfig.pose_guidance`). The LLM part is the prompt training shows when it drops a caption
        (`unipose train --caption-dropout`); the encoder reading no text is never trained on."""
        task = Task(task)
        if TASK_INPUTS[task] != (0, 0, True):
            raise InvalidInputError.make(f"task {task.value}", "a task whose only input is its caption (text2pose)",
                                         "Guide only the text-to-pose task.")
        return self.build(TASK_TEMPLATES[task][0].replace(CAPTION_PLACEHOLDER, ""), encoder_text="")

    def batch(self, rows: Sequence[PromptRow]) -> PromptInputs:
        """Left-pad rows to one length (the official batched inference pads on the left)."""
        if not rows:
            raise InvalidInputError.make(received="no prompts", expected="at least one", fix="Pass one or more.")
        width = max(len(r.input_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.layout.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        starts = []
        for b, row in enumerate(rows):
            pad = width - len(row.input_ids)
            input_ids[b, pad:] = torch.tensor(row.input_ids, dtype=torch.long)
            attention_mask[b, pad:] = True
            starts.append([pad + s for s in row.image_starts])
        return PromptInputs(input_ids, attention_mask, [len(r.input_ids) for r in rows], starts,
                            self.image_tokens, [r.text for r in rows])

    # ---- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _assign_poses(slots: list[str], poses: Sequence[Any] | Mapping[str, Any]) -> dict[int, tuple[str, Any]]:
        pose_slots = [i for i, s in enumerate(slots) if s != IMAGE_PLACEHOLDER]
        explicit = any(s in (POSE_A_PLACEHOLDER, POSE_B_PLACEHOLDER) for s in slots)
        if isinstance(poses, Mapping):
            unknown = sorted(set(poses) - {"A", "B"})
            if unknown:
                raise InvalidInputError.make(received=f"pose keys {unknown}", expected="'A' and/or 'B'",
                                             fix="Name the poses 'A' and 'B'.")
            named = dict(poses)
        else:
            if not explicit and len(poses) > 2:
                raise InvalidInputError.make(received=f"{len(poses)} poses", expected="at most 2",
                                             fix="UniPose prompts take one or two poses.")
            named = dict(zip("AB", poses))
        labels: dict[int, str] = {}
        plain_count = 0
        for i in pose_slots:
            if slots[i] == POSE_B_PLACEHOLDER:
                labels[i] = "B"
            elif slots[i] == POSE_A_PLACEHOLDER or explicit:
                labels[i] = "A"  # the official meaning of <pose> next to <poseA>/<poseB>
            else:
                labels[i] = "AB"[min(plain_count, 1)]
                plain_count += 1
        if plain_count > 2:
            raise InvalidTextError.make(received=f"{plain_count} {POSE_PLACEHOLDER} placeholders",
                                        expected="at most 2", fix="Use <poseA> and <poseB> to name the poses.")
        needed, given = set(labels.values()), set(named)
        if needed - given:
            raise InvalidInputError.make(
                received=f"poses for {sorted(given) or 'none'}",
                expected=f"a pose for each placeholder ({sorted(needed)})",
                fix="Pass one pose per <pose> / <poseA> / <poseB> in the prompt.")
        if given - needed:
            raise InvalidInputError.make(
                received=f"poses {sorted(given)} while the prompt uses {sorted(needed) or 'none'}",
                expected="no pose without a placeholder", fix="Add <pose> to the prompt or drop the extra pose.")
        return {i: (label, named[label]) for i, label in labels.items()}


# ---------------------------------------------------------------------------------------------------------------
# ChatPose (PoseGPT): LLaVA's `llava_v1` conversation, LISA-style pose token

CHATPOSE_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# The user turns of the tasks ChatPose was trained for, in its own training phrasings (one per task); an image
# comes first, on its own line, as in its training and chat code.
CHATPOSE_TEMPLATES: dict[Task, str] = {
    Task.POSE_ESTIMATION: "<image>\nCan you predict the SMPL pose of the person in this image?",
    Task.TEXT_TO_POSE: "There is a person: <caption> Please output this person's SMPL pose.",
    Task.IMAGE_DESCRIPTION: "<image>\nDescribe the pose of the person in this image.",
}


CHATPOSE_POSE_TOKEN = "[SEG]"
CHATPOSE_EOS = "</s>"
# Where a ChatPose conversation's text is cut before tokenizing: images, the pose token, the turn separator.
_CHATPOSE_SPLIT_RE = re.compile(r"(<image>|\[SEG\]|</s>)")


class ChatPosePromptBuilder(PromptBuilder):
    """PromptBuilder for ChatPose models: the same PromptRows, in ChatPose's conversation.

    The conversation is LLaVA's `llava_v1` (the official chat script's default): "{system} USER: {user}
    ASSISTANT:", one BOS; each `<image>` becomes `<im_start>` + the N projected CLIP embeddings + `<im_end>`
    (ChatPose runs with LLaVA's use_mm_start_end). Text stretches between placeholders are tokenized on their own.
    ChatPose takes no pose as input: a `<pose>` placeholder, and the tasks that need one (pose description,
    difference and editing) or two images (image difference), are refused with UnsupportedTaskError naming
    UniPose as the family that does them.
    """

    def build(self, user: str, poses: Sequence[Any] | Mapping[str, Any] = (), num_images: int | None = None,
              encoder_text: str | None = None) -> PromptRow:
        """One open turn: `build_conversation` of it alone."""
        if num_images is None:
            num_images = _PLACEHOLDER_RE.findall(user).count(IMAGE_PLACEHOLDER) if isinstance(user, str) else 0
        return self.build_conversation([ConversationTurn(user, poses, num_images)])

    def build_task(self, task: Task | str, caption: str | None = None, poses: Sequence[Any] = (),
                   num_images: int | None = None) -> PromptRow:
        """One prompt in ChatPose's phrasing of the task (CHATPOSE_TEMPLATES)."""
        task = Task(task)
        if task not in CHATPOSE_TEMPLATES:
            raise UnsupportedTaskError.make(
                f"task {task.value} for a ChatPose model",
                f"one of {[t.value for t in CHATPOSE_TEMPLATES]} (ChatPose reads images and text, answers with "
                "text and poses)", "Use a UniPose model (family 'unipose') for this task.")
        template = CHATPOSE_TEMPLATES[task]
        if CAPTION_PLACEHOLDER in template:
            if caption is None or not caption.strip():
                raise InvalidTextError.make(received=f"caption={caption!r} for task {task.value}",
                                            expected="a non-empty description",
                                            fix="Pass the text describing the pose.")
            template = template.replace(CAPTION_PLACEHOLDER, caption.strip())
        want = template.count(IMAGE_PLACEHOLDER)
        return self.build(template, poses, want if num_images is None else num_images)

    def answer_text(self, token_ids: Sequence[int], pose_marker: str = "[POSE]") -> str:
        """An answer's text with each pose token shown as `pose_marker` ([POSE], as the official chat shows it;
        the Assistant writes <pose>, as for UniPose replies)."""
        pieces = self.answer_pieces(token_ids, strip=False)
        return "".join(p if isinstance(p, str) else pose_marker for p in pieces).strip()

    def answer_pieces(self, token_ids: Sequence[int], strip: bool = True) -> tuple[str | list[int], ...]:
        """A generated answer -> its decoded text stretches and an empty code list where each pose token stood
        (ChatPose's poses have no codes: the conversation writes the pose token back), as
        `ConversationTurn.answer` takes them; eos dropped, the answer's ends stripped and empty stretches left
        out (with `strip`)."""
        pieces: list[str | list[int]] = []
        text_ids: list[int] = []
        for token in (int(t) for t in token_ids):
            if token == self.layout.pose_token_id:
                pieces += [self.tokenizer.decode(text_ids), []]
                text_ids = []
            elif token != self.layout.eos_id:
                text_ids.append(token)
        pieces.append(self.tokenizer.decode(text_ids))
        if not strip:
            return tuple(pieces)
        if isinstance(pieces[0], str):
            pieces[0] = pieces[0].lstrip()
        if isinstance(pieces[-1], str):
            pieces[-1] = pieces[-1].rstrip()
        return tuple(p for p in pieces if not (isinstance(p, str) and not p))

    def build_conversation(self, turns: Sequence[ConversationTurn], encoder_text: str | None = None) -> PromptRow:
        """Several turns in LLaVA's `llava_v1` conversation (sep " ", sep2 "</s>"): "{system} USER: {u1}
        ASSISTANT: {a1}</s>USER: {u2} ASSISTANT:", BOS first; each earlier answer written as its text with the
        pose token where each pose stood. Tokenized as `build` does one turn: the text is cut at every image, pose
        token and `</s>`, each stretch encoded on its own; a single open turn gives exactly `build`'s ids. ChatPose
        reads no poses and was trained on one image per chat: a pose input, or more than one image in the whole
        conversation, is refused (UnsupportedTaskError naming UniPose). ChatPose has no sentence encoder, so
        `encoder_text` is not read."""
        if not turns:
            raise InvalidTextError.make("a conversation with no turns", "at least the open turn",
                                        "Pass the new user turn.")
        text = f"{CHATPOSE_SYSTEM} "
        for i, turn in enumerate(turns):
            if (turn.answer is None) != (i == len(turns) - 1):
                raise InvalidInputError.make(
                    f"turn {i} of {len(turns)} {'without' if turn.answer is None else 'with'} an answer",
                    "answers for every turn but the last, and none for the last",
                    "Close earlier turns with the model's answers and leave the new turn open.")
            if not isinstance(turn.user, str) or not turn.user.strip():
                raise InvalidTextError.make(received=f"user turn {turn.user!r}", expected="non-empty text",
                                            fix="Write the request, using <image> where the image goes.")
            slots = _PLACEHOLDER_RE.findall(turn.user)
            if turn.poses or any(s != IMAGE_PLACEHOLDER for s in slots):
                raise UnsupportedTaskError.make(
                    f"turn {i} with pose inputs for a ChatPose model", "text and at most one <image> (ChatPose "
                    "reads no poses; it answers with them)", "Use a UniPose model (family 'unipose') to describe "
                    "or edit poses.")
            if turn.num_images != len(slots):
                raise InvalidInputError.make(
                    received=f"{turn.num_images} images for a turn with {len(slots)} {IMAGE_PLACEHOLDER} placeholders",
                    expected="one image per placeholder", fix=f"Add or remove {IMAGE_PLACEHOLDER} in the turn's text.")
            text += f"USER: {turn.user} ASSISTANT:"
            if turn.answer is not None:
                answer = "".join(p if isinstance(p, str) else CHATPOSE_POSE_TOKEN for p in turn.answer)
                text += f" {answer}{CHATPOSE_EOS}"
        parts = _CHATPOSE_SPLIT_RE.split(text)
        if parts.count(IMAGE_PLACEHOLDER) > 1:
            raise UnsupportedTaskError.make(
                f"a conversation with {parts.count(IMAGE_PLACEHOLDER)} images for a ChatPose model",
                "at most one <image> in the whole conversation (ChatPose was trained on one image per chat)",
                "Start a new conversation for the next image, or use a UniPose model (family 'unipose').")
        ids = [self.layout.bos_id]
        image_starts = self._encode_split(ids, parts, lambda _, part: [
            self.layout.pose_token_id if part == CHATPOSE_POSE_TOKEN else self.layout.eos_id])
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            raise InvalidTextError.make(
                received=f"a conversation of {len(ids)} tokens (an image counts {self.image_tokens})",
                expected=f"at most {self.max_tokens} tokens for this model",
                fix="Start a new conversation, or shorten the turns.")
        return PromptRow(ids, image_starts, text)
