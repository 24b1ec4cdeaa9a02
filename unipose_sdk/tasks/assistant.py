"""Assistant: free-form, multi-turn conversations with images and poses in, text and poses out.

    with Assistant.from_pretrained() as assistant:
        reply = assistant.ask("Generate pose of the image: <image>.", images=["person.png"])
        reply = assistant.ask("Edit pose <pose> by description: raise the left arm.", poses=[reply.poses[0]])
        for chunk in assistant.ask_stream("Generate description of the pose <pose>.", poses=[reply.poses[0]]):
            print(chunk.text, end="")

The prompt of each turn is the whole conversation in the official `mistral_instruct` layout
(`PromptBuilder.build_conversation`: "[INST] u1 [/INST] a1 </s>[INST] u2 [/INST]"). The conversation keeps its
KV cache (`generation.PrefixCache`, its own, not shared with task calls): a turn reuses the slots the cache
already holds and computes only the rest. What the rest is: the official layout writes each earlier answer as
text (" {answer} </s>", re-tokenized), which is not the id stream the model generated (that began right after
"[/INST]" and held the pose queries' states), so a turn computes the previous answer in its official form plus
its own text: the cost follows the last exchange, not the length of the history.

ChatPose models converse in LLaVA's `llava_v1` layout (`ChatPosePromptBuilder.build_conversation`): a reply's
pose token `[SEG]` shows as "<pose>", and its pose is regressed as soon as `[SEG]` is decoded, by one forward over
the conversation so far through the pose head (`generation.pose_params_at_pose_tokens`); ChatPose reads no poses.

Context policy: a turn whose prompt plus reply budget (max_new_tokens + 82 per allowed pose) exceeds the model's
context (`config.max_text_tokens`) is refused with ConversationTooLongError before any work; nothing is dropped
silently. `reset()` starts over.

Pose-task turns: a turn worded as a pose task's template (estimate, generate, edit) gets a reply that starts with
its pose block, as the task classes force it (`AssistantOptions.pose_tasks_answer_with_pose`, on by default): a
small model trained on single turns may answer such a turn late in a conversation with text instead. Likewise a
turn worded as a text task's template (describe, difference) gets a text reply, never a pose block
(`text_tasks_answer_with_text`). Every other turn, and every ChatPose turn, decodes freely. A greedy turn
worded as the generate template decodes its pose codes at the model's `text_to_pose_code_temperature` and
guides them by its `text_to_pose_guidance` away from the single-turn prompt without a description, as a Generator
does, so both give the same pose for the same text in a first turn (later turns are guided by the same
single-turn logits: guiding by the conversation without the description would cost a second prefill per turn).

`restore(turns)` starts from earlier turns without running the model on them (a conversation kept elsewhere, e.g.
by a client of `unipose serve`, which keeps no state between requests): each `PastTurn` is what was asked and the
reply's text and pose codes. Since the layout writes every earlier answer as text anyway, that is all a kept turn
holds (`_Kept`), so the next turn's prompt is the one the live conversation would have built; its cache starts
empty, and the restored turns' images go through the vision encoder with that next turn.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import unipose_sdk.generation as generation
from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import (
    ConversationTooLongError,
    InvalidInputError,
    InvalidTextError,
    UniPoseError,
)
from unipose_sdk.models.unipose import chatpose_rotmat, splice_image_embeds
from unipose_sdk.options import AssistantOptions
from unipose_sdk.results import AssistantReply, ReplyPose, describe_input
from unipose_sdk.session import UniPose
from unipose_sdk.tasks.base import TaskBase, as_pose, check_image_paths, check_text, torch_threads
from unipose_sdk.tasks.images import images_to_embeds
from unipose_sdk.text.prompts import (
    IMAGE_PLACEHOLDER,
    POSE_A_PLACEHOLDER,
    POSE_B_PLACEHOLDER,
    POSE_PLACEHOLDER,
    ConversationTurn,
    Task,
    answers_with_pose,
    task_of_turn,
)
from unipose_sdk.timing import StageTimer

PLACEHOLDERS = (IMAGE_PLACEHOLDER, POSE_PLACEHOLDER, POSE_A_PLACEHOLDER, POSE_B_PLACEHOLDER)
_TAG_RE = re.compile(r"<[A-Za-z_][A-Za-z0-9_]*>")


@dataclass(frozen=True)
class ReplyChunk:
    """One piece of a streamed reply: new text (`text`, with "<pose>" where a pose block starts), or a finished
    pose (`pose`). The text pieces of a stream join to the reply's `text`."""

    text: str = ""
    pose: ReplyPose | None = None


@dataclass(frozen=True)
class ChatTurn:
    """One finished turn of the history: what was asked (text, how the images and poses were given) and the reply."""

    text: str
    images: tuple[str, ...]
    poses: tuple[str, ...]
    reply: AssistantReply


@dataclass(frozen=True)
class PastTurn:
    """An earlier turn for `Assistant.restore`: what was asked (`text`, `images`, `poses`, as `ask` takes them) and
    what the model answered: `reply_text` as `AssistantReply.text` holds it (`<pose>` where each pose block stood)
    and `reply_codes`, the codebook indices of those poses in order. `PastTurn.of(text, reply, ...)` takes them
    from an AssistantReply."""

    text: str
    reply_text: str
    reply_codes: Sequence[Sequence[int]] = ()
    images: Sequence[Any] | None = None
    poses: Sequence[Any] | Mapping[str, Any] | None = None

    @classmethod
    def of(cls, text: str, reply: AssistantReply, images: Sequence[Any] | None = None,
           poses: Sequence[Any] | Mapping[str, Any] | None = None) -> PastTurn:
        return cls(text, reply.text, [list(p.codes) for p in reply.poses], images, poses)


@dataclass
class _Kept:
    """A finished turn as the prompt builder needs it, and the serial numbers of its images."""

    turn: ConversationTurn
    image_serials: list[int] = field(default_factory=list)


class ReplyStream:
    """The chunks of one reply as they decode; `reply` is the finished AssistantReply (reading it finishes the
    stream). Iterate it to the end, or `close()` it: an abandoned turn is not added to the history, and the
    Assistant takes its next turn only once this one is finished or closed."""

    def __init__(self, chunks: Iterator[ReplyChunk | AssistantReply]) -> None:
        self._chunks = chunks
        self._reply: AssistantReply | None = None

    def __iter__(self) -> Iterator[ReplyChunk]:
        for item in self._chunks:
            if isinstance(item, AssistantReply):
                self._reply = item
            else:
                yield item

    @property
    def reply(self) -> AssistantReply:
        if self._reply is None:
            for _ in self:
                pass
        if self._reply is None:
            raise InvalidInputError.make("the reply of a stream that was closed before it finished",
                                         "a stream iterated to its end", "Ask the turn again.")
        return self._reply

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Assistant(TaskBase):
    """A conversation with the model: `ask` one turn at a time, with `<image>` / `<pose>` / `<poseA>` / `<poseB>`
    placeholders where the turn's images and poses go; the reply holds the text and every pose the model made.

    >>> with Assistant.from_pretrained() as assistant:
    ...     reply = assistant.ask("Generate pose of the description: a person squatting.")
    ...     reply.text, reply.poses[0].pose, reply.poses[0].joints_m
    """

    options_class = AssistantOptions

    def __init__(self, options: AssistantOptions | None = None) -> None:
        super().__init__(options)
        self._start_conversation()

    @classmethod
    def from_session(cls, session: UniPose, options: Any = None):  # type: ignore[no-untyped-def]
        assistant = super().from_session(session, options)
        assistant._start_conversation()
        return assistant

    def _start_conversation(self) -> None:
        self._kept: list[_Kept] = []
        self._history: list[ChatTurn] = []
        self._images: list[Tensor] = []  # the projected embeddings [N, C] of every image so far, by serial
        self._restored_images: list[list[Any]] = []  # restored turns' images, per turn, not yet embedded
        self._prefix: generation.PrefixCache | None = None
        self._turn_lock = threading.Lock()
        self._turn_thread: int | None = None

    # ------------------------------------------------------------------ the conversation

    @property
    def history(self) -> tuple[ChatTurn, ...]:
        """The finished turns, oldest first."""
        return tuple(self._history)

    def reset(self) -> None:
        """Start a new conversation: the history goes; the cache's memory is kept for the next one.

        Raises:
            InvalidInputError: a turn of this Assistant is still streaming (finish or close it first).
        """
        with self._turn():
            self._kept, self._history, self._images, self._restored_images = [], [], [], []
            if self._prefix is not None:
                self._prefix.clear()

    def close(self) -> None:
        self._prefix = None
        super().close()

    def ask(self, text: str, images: Sequence[Any] | None = None,
            poses: Sequence[Any] | Mapping[str, Any] | None = None,
            on_chunk: Callable[[ReplyChunk], None] | None = None) -> AssistantReply:
        """One turn: `text` with a placeholder per input; `images` (paths, PIL, arrays) fill the `<image>`s in
        order; `poses` fill `<pose>` (the k-th `<pose>` takes the k-th pose) or `<poseA>` / `<poseB>` (a list
        A, B, or {"A": ..., "B": ...}); a pose is a ReplyPose of an earlier reply (its codes go in unchanged), a
        Pose, an array or a pose file. `on_chunk` receives the reply's pieces as they decode (see `ask_stream`).

        Raises:
            InvalidTextError: an empty turn, or a placeholder other than <image>, <pose>, <poseA>, <poseB>.
            InvalidInputError: images / poses that do not match the placeholders in number, a call after
                `close()`, or while another turn of this Assistant streams.
            ConversationTooLongError: the history, this turn and its reply budget exceed the model's context.
            InvalidPoseError / PoseFormatError / InvalidImageError / UniPoseFileNotFoundError: an input that
                cannot be read.
        """
        stream = self.ask_stream(text, images=images, poses=poses)
        for chunk in stream:
            if on_chunk is not None:
                on_chunk(chunk)
        return stream.reply

    def ask_stream(self, text: str, images: Sequence[Any] | None = None,
                   poses: Sequence[Any] | Mapping[str, Any] | None = None) -> ReplyStream:
        """As `ask`, as a stream: iterate it for ReplyChunks (text as it decodes, each pose when its block is
        done), then read `.reply` (the same AssistantReply `ask` returns). Every input is checked here, before
        the stream starts.

        Raises:
            As `ask`.
        """
        session = self._session()
        text, image_list, pose_items = check_turn(text, images, poses)
        self._check_length(session, text, len(image_list), pose_items)
        return ReplyStream(self._run_turn(session, text, image_list, pose_items))

    # ------------------------------------------------------------------ checks (before any work)

    def _check_length(self, session: UniPose, text: str, num_images: int, poses: Any,
                      history: list[ConversationTurn] | None = None, fix: str = "Call reset() to start a new "
                      "conversation") -> None:
        """Refuse a turn that cannot fit after `history` (None: the kept turns) before anything runs: the layout's
        length does not depend on the codes, so placeholder codes stand in for poses not encoded yet."""
        turn = ConversationTurn(text, _stand_in_codes(session, poses), num_images)
        prompts = _unlimited_builder(session)
        before = [k.turn for k in self._kept] if history is None else history
        total = len(_build(prompts, before + [turn]).input_ids)
        alone = len(_build(prompts, [turn]).input_ids)
        budget = self.options.generation_config(session.config.vocab).max_new_tokens
        limit = int(session.config.max_text_tokens)
        if total + budget > limit:
            raise ConversationTooLongError.make(
                f"a turn of {alone} tokens after a history of {total - alone} tokens, with a reply budget of {budget} "
                f"(max_new_tokens={self.options.max_new_tokens} + 82 per pose, max_poses={self.options.max_poses}):"
                f" {total + budget} tokens", f"at most {limit} tokens (the model's context)", fix + (
                    "" if alone + budget <= limit else ", and shorten the turn or lower max_new_tokens / max_poses"
                ) + ".")

    # ------------------------------------------------------------------ a history kept elsewhere

    def restore(self, turns: Sequence[PastTurn]) -> None:
        """Start over from earlier turns (oldest first) without running the model on them: the next `ask` builds
        exactly the prompt it would have built had they been asked live, since each earlier answer enters the
        official layout as its text with its pose blocks in place. Every turn is checked as `ask` checks it, and
        the history against the context, before anything runs; then the turns' poses are encoded (a ReplyPose's
        codes go in as they are) and the replies' poses decoded. Their images are read by the vision encoder with
        the next turn (its "vision" stage), each turn's on its own as `ask` read them. In `history` a restored
        reply holds its text and poses only (no timings or token counts; `input["restored"]` is True); a ChatPose
        model's restored replies hold no poses (each would need a forward over the conversation), their text and
        the next prompt are exact.
        `restore([])` is `reset()`.

        Raises:
            As `ask`, for each turn (the message starts with the turn's index), and InvalidInputError: a
                `reply_text` whose `<pose>`s differ in number from `reply_codes`, or codes that are not 80 indices
                into this model's codebook.
            ConversationTooLongError: the turns could not have been asked live within the model's context with
                these options (the last turn with its reply budget).
        """
        session = self._session()
        checked = []
        for i, past in enumerate(turns):
            if not isinstance(past, PastTurn):
                raise InvalidInputError.make(f"turn {i} of the restored history of type {type(past).__name__}",
                                             "a PastTurn", "Build it with PastTurn(text, reply_text, reply_codes, "
                                             "images, poses) or PastTurn.of(text, reply, images, poses).")
            try:
                text, images, poses = check_turn(past.text, past.images, past.poses)
                answer = _answer_pieces(session, past.reply_text, past.reply_codes)
            except UniPoseError as exc:
                raise type(exc)(f"turn {i} of the restored history: {exc}") from None
            checked.append((text, images, poses, answer))
        if checked:
            *before, (text, images, poses, _) = checked
            history = [ConversationTurn(t, _stand_in_codes(session, p), len(im), answer=a) for t, im, p, a in before]
            self._check_length(session, text, len(images), poses, history,
                               fix=f"Restore only the latest turns (these {len(checked)} do not fit), or reset()")
        with self._turn():
            kept, history_turns, serial, done = [], [], 0, 0
            with self._step(session):
                # ChatPose's restored replies hold no poses: they would take a forward over the conversation.
                chatpose = session.config.family == "chatpose"
                made = [] if chatpose else [c for *_, answer in checked for c in answer if not isinstance(c, str)]
                decoded = session.decode_poses(torch.tensor(made, dtype=torch.long)) if made else None
                for index, (text, images, poses, answer) in enumerate(checked):
                    kept.append(_Kept(ConversationTurn(text, self._pose_codes(session, poses), len(images),
                                                       answer=answer), list(range(serial, serial + len(images)))))
                    serial += len(images)
                    reply_poses = []
                    for codes in (c for c in answer if not isinstance(c, str) and not chatpose):
                        assert decoded is not None
                        reply_poses.append(ReplyPose(decoded[done], codes))
                        done += 1
                    described = {"images": [describe_input(i) for i in images], "poses": _describe_poses(poses)}
                    reply = AssistantReply(timing_ms={}, run=session.run_info(), text=turns[index].reply_text,
                                           input={"task": "chat", "text": text, **described, "restored": True},
                                           poses=reply_poses, turn=index)
                    history_turns.append(ChatTurn(text, tuple(described["images"]), tuple(described["poses"]),
                                                  reply))
            self._kept, self._history, self._images = kept, history_turns, []
            self._restored_images = [list(images) for _, images, _, _ in checked if images]
            if self._prefix is not None:
                self._prefix.clear()

    # ------------------------------------------------------------------ one turn

    def _turn(self) -> _TurnGuard:
        return _TurnGuard(self)

    @contextmanager
    def _step(self, session: UniPose) -> Iterator[None]:
        """One piece of a turn's work: under the session's lock and this object's thread count, held only while
        it computes (never while a stream waits for its reader)."""
        threads = self.options.num_threads if session.runtime.backend == "torch" else None
        with torch_threads(threads), session.lock, torch.inference_mode():
            yield

    @staticmethod
    def _pose_codes(session: UniPose, poses: Any) -> Any:
        """The codes of each pose: a ReplyPose's as they are, the others encoded in one batch."""
        items = dict(poses) if isinstance(poses, Mapping) else dict(enumerate(poses))
        to_encode = [k for k, p in items.items() if not isinstance(p, ReplyPose)]
        codes = {k: list(p.codes) for k, p in items.items() if isinstance(p, ReplyPose)}
        if to_encode:
            encoded = session.encode_poses(Pose.cat([items[k] for k in to_encode]))
            codes.update({k: encoded[i].tolist() for i, k in enumerate(to_encode)})
        if isinstance(poses, Mapping):
            return {k: codes[k] for k in items}
        return [codes[k] for k in range(len(items))]

    def _run_turn(self, session: UniPose, text: str, images: list[Any], poses: Any,
                  ) -> Iterator[ReplyChunk | AssistantReply]:
        with self._turn():
            timer = StageTimer(session.runtime.device)
            vocab = session.config.vocab
            turn_index = len(self._history)
            task = task_of_turn(text) if session.config.family == "unipose" else None
            pose_first = self.options.pose_tasks_answer_with_pose and answers_with_pose(task)
            text_only = self.options.text_tasks_answer_with_text and task is not None and not answers_with_pose(task)
            config = self.options.generation_config(vocab, turn=turn_index, start_with_pose=pose_first,
                                                    text_only=text_only)
            guide, choose = None, None
            turn_rows = None  # this turn's encoder rows when the choice among candidates already encoded them
            with self._step(session), timer.stage("preprocess"):
                codes = self._pose_codes(session, poses)
                turn = ConversationTurn(text, codes, len(images))
                row = _build(_unlimited_builder(session), [k.turn for k in self._kept] + [turn])
            if task is Task.TEXT_TO_POSE:  # decoded as a Generator decodes it (candidates, guidance, temperature)
                config = dataclasses.replace(config,
                                             pose_code_temperature=session.config.text_to_pose_code_temperature,
                                             pose_guidance=session.config.text_to_pose_guidance)
                if session.pose_candidates and not config.sampling and row.text_slots:
                    turn_rows, sentences = session.encode_sentences([row.text_slots[-1][1]])  # this turn's text
                    if sentences is not None:
                        config = dataclasses.replace(config, pose_candidates=session.pose_candidates)
                        choose = session.pose_chooser(sentences)
                if config.guided:
                    guide = session.unconditional_query_logits(task)
            restored: list[Tensor] = []  # a restored history's images, each turn's read on its own as ask did
            new_embeds: list[Tensor] = []
            if images or self._restored_images:
                with self._step(session), timer.stage("vision"):
                    for group in self._restored_images:
                        restored += list(images_to_embeds(session, group))
                    if images:
                        new_embeds = list(images_to_embeds(session, images))
            known = self._images + restored
            serials = list(range(len(known), len(known) + len(images)))
            all_images = known + new_embeds
            image_serials = [s for k in self._kept for s in k.image_serials] + serials
            keys: list[generation.Key] = list(row.input_ids)
            tokens = session.config.image_tokens
            for serial, start in zip(image_serials, row.image_starts):
                keys[start:start + tokens] = [("image", serial, j) for j in range(tokens)]
            rows_per_turn = getattr(session.prompts, "text_rows", 0)
            for start, encoder_text in row.text_slots:  # models with a sentence encoder: its rows per turn
                keys[start:start + rows_per_turn] = [("text_rows", encoder_text, j) for j in range(rows_per_turn)]
            if self._prefix is None or self._prefix.model is not session.runtime.llm:
                self._prefix = generation.PrefixCache(session.runtime.llm,
                                                      max_length=int(session.config.max_text_tokens) + 1)
            prefix = self._prefix

            def embed_from(start: int) -> Tensor:
                llm = session.runtime.llm
                ids = torch.tensor(row.input_ids[start:], dtype=torch.long, device=llm.device)
                embeds = llm.embed(ids.unsqueeze(0))
                inside = [(all_images[s], b - start) for s, b in zip(image_serials, row.image_starts)
                          if b + tokens > start]
                slots = [(b, t) for b, t in row.text_slots if b + rows_per_turn > start]
                if slots:
                    texts = [t for _, t in slots]
                    reuse = turn_rows is not None and texts == [row.text_slots[-1][1]]  # encoded for the choice
                    encoded = turn_rows if reuse else session.encode_texts(texts)
                    inside += [(encoded[i], b - start) for i, (b, _) in enumerate(slots)]
                for rows, offset in inside:  # an image (or row set) cut by `start` keeps only its rows after it
                    cut = max(0, -offset)
                    embeds = splice_image_embeds(embeds, rows[cut:].unsqueeze(0), [0], [offset + cut])
                return embeds[0]

            events = generation.continue_generation(
                session.runtime.llm, prefix, keys, embed_from, vocab, config,
                max_context=int(session.config.max_text_tokens), pose_code_vectors=session.pose_code_vectors,
                on_stage=timer.stage, sentence_end_ids=session.sentence_end_ids, unconditional_query_logits=guide,
                choose_pose=choose)
            emitted, ids = "", []
            reply_poses: list[ReplyPose] = []
            result: generation.GenerationResult | None = None
            while True:
                with self._step(session):
                    with timer.stage("llm"):
                        event = next(events, None)
                    if event is not None and event.kind == "pose":
                        with timer.stage("detokenize"):
                            assert event.codes is not None
                            pose = session.decode_poses(event.codes.unsqueeze(0))
                        reply_poses.append(ReplyPose(pose, event.codes.tolist()))
                        ids.extend(vocab.pose_token_ids(event.codes).tolist() + [vocab.pose_end_id])
                if event is None:
                    break
                if event.kind == "end":
                    result = event.result
                    continue
                if event.kind == "pose":
                    yield ReplyChunk(pose=reply_poses[-1])
                    continue
                if event.token is not None:
                    ids.append(event.token)
                shown = _visible(session, ids)
                if shown.startswith(emitted) and len(shown) > len(emitted):
                    yield ReplyChunk(text=shown[len(emitted):])
                    emitted = shown
                if event.token is not None and event.token == vocab.pose_token_id:  # ChatPose: [SEG] was decoded
                    with self._step(session), timer.stage("pose_head"):
                        reply_poses.append(_chatpose_pose(session, embed_from(0), ids))
                    yield ReplyChunk(pose=reply_poses[-1])
            assert result is not None
            final = _reply_text(session, result.token_ids)
            if final != emitted and final.startswith(emitted):
                yield ReplyChunk(text=final[len(emitted):])
            reply = AssistantReply(
                timing_ms=timer.timing_ms(), run=session.run_info(), text=final,
                input={"task": "chat", "text": text, "images": [describe_input(i) for i in images],
                       "poses": _describe_poses(poses)},
                decode_steps=timer.counts.get("decode", 0), pose_steps=timer.counts.get("pose_step", 0),
                poses=reply_poses, turn=turn_index, finish_reason=result.finish_reason or "length",
                prompt_tokens=result.prompt_tokens, reused_tokens=result.reused_tokens,
                generated_ids=list(result.token_ids), prompt_ids=list(row.input_ids))
            answered = dataclasses.replace(turn, answer=session.prompts.answer_pieces(result.token_ids))
            self._kept.append(_Kept(answered, serials))
            self._images, self._restored_images = all_images, []
            self._history.append(ChatTurn(text, tuple(describe_input(i) for i in images),
                                          tuple(_describe_poses(poses)), reply))
            yield reply


def check_turn(text: Any, images: Sequence[Any] | None,
           poses: Sequence[Any] | Mapping[str, Any] | None) -> tuple[str, list[Any], Any]:
    """One turn's inputs checked against its placeholders before any work: (text, images, poses as ReplyPose or
    one-row Pose, a list or an {"A", "B"} mapping). Raises as `Assistant.ask` says."""
    text = check_text(text, "turn")
    for tag in _TAG_RE.findall(text):
        if tag not in PLACEHOLDERS:
            close = difflib.get_close_matches(tag, PLACEHOLDERS, n=1)
            hint = f"Did you mean {close[0]}? " if close else ""
            raise InvalidTextError.make(
                f"the placeholder {tag} in the turn {text!r}", f"only {', '.join(PLACEHOLDERS)}",
                f"{hint}To keep angle brackets as plain text, put a space after '<' (e.g. '< {tag[1:]}').")
    if images is not None and (isinstance(images, (str, bytes)) or not isinstance(images, Sequence)):
        images = [images]
    image_list = list(images or [])
    wanted_images = text.count(IMAGE_PLACEHOLDER)
    if len(image_list) != wanted_images:
        raise InvalidInputError.make(
            f"{len(image_list)} image{'s' * (len(image_list) != 1)} for a turn with {wanted_images} "
            f"{IMAGE_PLACEHOLDER} placeholder{'s' * (wanted_images != 1)}", "one image per <image>",
            f"Put {IMAGE_PLACEHOLDER} in the text where each image goes, or pass {wanted_images} image(s).")
    check_image_paths(image_list)
    slots = [s for s in re.findall(r"<poseA>|<poseB>|<pose>", text)]
    explicit = any(s != POSE_PLACEHOLDER for s in slots)
    labels = ({"B" if s == POSE_B_PLACEHOLDER else "A" for s in slots} if explicit
              else {"AB"[min(i, 1)] for i in range(len(slots))})
    if len([s for s in slots if s == POSE_PLACEHOLDER]) > 2 and not explicit:
        raise InvalidTextError.make(f"{len(slots)} {POSE_PLACEHOLDER} placeholders in {text!r}", "at most 2",
                                    "A turn takes one or two poses: name them <poseA> and <poseB>.")
    if isinstance(poses, Mapping):
        unknown = sorted(set(poses) - {"A", "B"})
        if unknown or set(poses) != labels:
            raise InvalidInputError.make(
                f"poses named {sorted(poses)} for a turn whose placeholders need {sorted(labels) or 'none'}",
                "one pose per name the placeholders use ('A' for <pose>/<poseA>, 'B' for <poseB>)",
                "Name the poses after the placeholders, or pass them as a list in order A, B.")
        items: Any = {label: _checked_pose(poses[label], f"pose {label}") for label in sorted(poses)}
    else:
        if poses is not None and (isinstance(poses, (str, Pose, ReplyPose)) or not isinstance(poses, Sequence)):
            poses = [poses]
        given = list(poses or [])
        if len(given) != len(labels):
            where = ", ".join(slots) or "none"
            raise InvalidInputError.make(
                f"{len(given)} pose{'s' * (len(given) != 1)} for a turn with the pose placeholders {where}",
                f"{len(labels)} pose{'s' * (len(labels) != 1)} (one per distinct pose the text names)",
                f"Put {POSE_PLACEHOLDER} in the text where each pose goes, or pass {len(labels)} pose(s).")
        items = [_checked_pose(p, f"pose {i}") for i, p in enumerate(given)]
    return text, image_list, items


def _checked_pose(value: Any, what: str) -> ReplyPose | Pose:
    return value if isinstance(value, ReplyPose) else as_pose(value, what)


class _TurnGuard:
    """One turn at a time per Assistant: another thread waits; the same thread (a turn started while one of its
    streams is suspended) is refused instead of deadlocking."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self.assistant._turn_thread == me:
            raise InvalidInputError.make(
                "a new turn while a stream of this Assistant is not finished", "one turn at a time",
                "Iterate the open ReplyStream to its end (or close() it) before the next call.")
        self.assistant._turn_lock.acquire()
        self.assistant._turn_thread = me

    def __exit__(self, *exc_info: object) -> None:
        self.assistant._turn_thread = None
        self.assistant._turn_lock.release()


def _stand_in_codes(session: UniPose, poses: Any) -> Any:
    """Zero codes in the shape of a turn's poses: the prompt's length does not depend on the codes."""
    zero = [0] * session.config.vocab.num_pose_tokens
    return {k: zero for k in poses} if isinstance(poses, Mapping) else [zero] * len(poses)


def _answer_pieces(session: UniPose, reply_text: Any, reply_codes: Any) -> tuple[str | list[int], ...]:
    """A reply's text (`<pose>` per pose block) and its poses' codes -> the answer as a kept turn holds it: what
    `PromptBuilder.answer_pieces` makes of the generated ids whose `UniPose.answer_text` is that text (the same
    decoded stretches, the ends stripped, empty stretches dropped)."""
    if not isinstance(reply_text, str):
        raise InvalidTextError.make(f"a reply text of type {type(reply_text).__name__}", "the reply's text (a str)",
                                    "Pass reply_text=reply.text.")
    if isinstance(reply_codes, (str, bytes)) or not isinstance(reply_codes, Sequence):
        raise InvalidInputError.make(f"reply codes of type {type(reply_codes).__name__}",
                                     "a list with the codes of each pose of the reply",
                                     "Pass reply_codes=[p.codes for p in reply.poses].")
    stretches = reply_text.split(POSE_PLACEHOLDER)
    if len(stretches) != len(reply_codes) + 1:
        raise InvalidInputError.make(
            f"a reply text with {len(stretches) - 1} {POSE_PLACEHOLDER} and the codes of {len(reply_codes)} "
            f"pose{'s' * (len(reply_codes) != 1)}", f"the codes of one pose per {POSE_PLACEHOLDER} of the reply text",
            "Pass the reply's text and [p.codes for p in reply.poses] together, as the reply holds them.")
    codes = []
    for k, item in enumerate(reply_codes):
        if session.config.family == "chatpose":  # its poses come from the pose token's state: no codes
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item):
                raise InvalidInputError.make(f"codes {item!r} for reply pose {k} of a ChatPose model",
                                             "an empty list per pose (ChatPose poses have no codes)",
                                             "Pass reply_codes=[p.codes for p in reply.poses].")
            codes.append([])
            continue
        session.prompts.pose_ids(item, what=f"the codes of reply pose {k}")  # 80 indices into the codebook
        codes.append([int(c) for c in item])
    stretches[0] = stretches[0].lstrip()
    stretches[-1] = stretches[-1].rstrip()
    pieces: list[str | list[int]] = [stretches[0]]
    for item, stretch in zip(codes, stretches[1:]):
        pieces += [item, stretch]
    return tuple(p for p in pieces if not (isinstance(p, str) and not p))


def _unlimited_builder(session: UniPose) -> Any:
    """The session's prompt builder without its own length limit: the Assistant checks the conversation's
    length itself (ConversationTurn + reply budget) and says what to do about it."""
    builder = copy.copy(session.prompts)
    builder.max_tokens = None
    return builder


def _build(builder: Any, turns: list[ConversationTurn]) -> Any:
    return builder.build_conversation(turns)


def _reply_text(session: UniPose, ids: Sequence[int]) -> str:
    """A reply's text as `UniPose.answer_text` writes it: <pose> where each pose block (UniPose) or pose token
    (ChatPose) stood."""
    if session.config.family == "chatpose":
        return session.prompts.answer_text(ids, pose_marker=POSE_PLACEHOLDER)
    return session.answer_text(generation.GenerationResult(token_ids=list(ids)))


def _visible(session: UniPose, ids: list[int]) -> str:
    """The reply text so far, without a trailing partial character."""
    return _reply_text(session, ids).rstrip("\ufffd")


def _chatpose_pose(session: UniPose, prompt_embeds: Tensor, answer_ids: list[int]) -> ReplyPose:
    """The pose of the ChatPose pose token that ends `answer_ids`: the head over the last layer's state one step
    before it (`generation.pose_params_at_pose_tokens`: one forward over the conversation and the answer so far,
    on its own cache). ChatPose poses have no codes."""
    params = generation.pose_params_at_pose_tokens(session.runtime.llm, prompt_embeds, answer_ids,
                                                   session.config.vocab.pose_token_id)
    return ReplyPose(Pose.from_rotmat(chatpose_rotmat(params[-1:].float().cpu())), [])


def _describe_poses(poses: Any) -> list[str]:
    items = [poses[k] for k in sorted(poses)] if isinstance(poses, Mapping) else list(poses)
    return ["<a pose of an earlier reply>" if isinstance(p, ReplyPose) else describe_input(p) for p in items]
