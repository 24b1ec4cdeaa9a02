"""Training examples for the seven tasks, laid out exactly as `unipose_sdk.generation` decodes them.

A training sequence is the prompt (built by the SDK's own `PromptBuilder`, so training and inference tokenize
prompts identically) followed by the answer:

    text answer   caption ids, eos                      labels: the usual next-token shift
    pose answer   BEGIN, q_0 .. q_79, END, ".", eos     labels: the last prompt position -> BEGIN,
                                                                 query k -> pose id of code k (UNshifted),
                                                                 END -> ".", "." -> eos; BEGIN itself: none

This is what inference does: the prompt's last logits choose BEGIN; the pose step feeds BEGIN plus the 80 query
embeddings (the last 80 rows of the embedding table, i.e. the query ids) and reads code k off query k; END is fed
next and its logits choose "."; then eos. The 80 query positions are one bidirectional block of the mixed mask
(`MixedMask` with block [start, end)); everything else is causal. Rows are right-padded: a causal row never
attends to the padding after it, so padding changes nothing for the real tokens.

`labels[t]` is the target of the logits at position t (-100: no loss), so the loss needs no shifting.

A conversation example (`draw_conversation`) is the prompt an Assistant builds for its next turn
(`PromptBuilder.build_conversation`): earlier turns with their answers written back as inference writes them, then
the trained turn; only the last answer has labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.errors import InvalidTextError
from unipose_sdk.generation import expected_code_vectors
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import VocabLayout
from unipose_sdk.models.unipose import splice_image_embeds
from unipose_sdk.text.prompts import TASK_TEMPLATES, ConversationTurn, PromptBuilder, Task

if TYPE_CHECKING:
    from unipose_sdk.training.pools import Pool

IGNORE = -100

# A few instruction phrasings per task besides the pretraining templates (stage 3). Placeholders as in
# TASK_TEMPLATES; every phrasing keeps the task's inputs in the same order (pose A before pose B, ...).
PARAPHRASES: dict[Task, tuple[str, ...]] = {
    Task.POSE_ESTIMATION: (
        "What is the 3D pose of the person in this image? <image>",
        "Estimate the body pose shown in <image>.",
        "<image> Give me the SMPL pose of this person.",
    ),
    Task.IMAGE_DESCRIPTION: (
        "Describe the pose of the person in <image>.",
        "<image> How is this person posed?",
        "Explain the body position of the person in the image <image>.",
    ),
    Task.IMAGE_DIFFERENCE: (
        "How should the person in <image> move to match <image>?",
        "Compare the poses in <image> and <image>.",
        "What changes from the first image <image> to the second image <image>?",
    ),
    Task.TEXT_TO_POSE: (
        "<caption>",
        "Create a 3D pose for this description: <caption>.",
        "Show me a pose where: <caption>",
        "Generate a pose that matches the text: <caption>.",
    ),
    Task.POSE_DESCRIPTION: (
        "Describe the pose <pose>.",
        "<pose> What is this person doing with their body?",
        "Explain the body position of <pose> in words.",
    ),
    Task.POSE_DIFFERENCE: (
        "How do I get from pose <poseA> to pose <poseB>?",
        "Compare <poseA> with <poseB>.",
        "Give instructions to change <poseA> into <poseB>.",
    ),
    Task.POSE_EDITING: (
        "Change the pose <poseA> as follows: <caption>.",
        "<poseA> <caption>",
        "Modify <poseA> so that: <caption>.",
    ),
}

POSE_ANSWER_TASKS = (Task.POSE_ESTIMATION, Task.TEXT_TO_POSE, Task.POSE_EDITING)


@dataclass
class Example:
    """One training sequence.

    input_ids: prompt + answer ids; image slots hold pad_id (their embeddings are replaced), the pose block
        holds the query ids (whose embeddings are the learned queries).
    labels: target of the logits at each position, IGNORE where there is none.
    block: [start, end) of the generated pose block, (0, 0) for text answers.
    image_starts / image_keys: first slot of each image and which image of the feature bank fills it.
    text_slots: (first slot, what the encoder reads) of each turn's sentence-encoder rows (models with a text
        encoder; one per turn of a conversation), else empty.
    """

    task: Task
    input_ids: list[int]
    labels: list[int]
    block: tuple[int, int] = (0, 0)
    image_starts: list[int] = field(default_factory=list)
    image_keys: list[int] = field(default_factory=list)
    text_slots: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Turn:
    """One user turn and its answer before tokenization: what `draw_turn` draws, and what `ExampleBuilder.build`
    lays out (a list of them is a conversation whose last answer is trained)."""

    task: Task
    user: str
    poses: tuple[Sequence[int], ...] = ()
    num_images: int = 0
    image_keys: tuple[int, ...] = ()
    answer_codes: Sequence[int] | None = None
    answer_text: str | None = None
    encoder_text: str | None = None  # None: the user turn without its placeholders (`encoder_text_of`)


def user_turn(task: Task, caption: str | None, rng: np.random.Generator | None, paraphrase: bool = False) -> str:
    """The task's user turn: its template, or with `paraphrase` a random one of the template and the paraphrases.

    Inference (`PromptBuilder.build_task`) puts the user's text in verbatim, so a caption ending "." in a template
    ending "<caption>." reads "..". Users write both forms; with an rng half the captions lose their final "."
    so the model sees both. Without an rng the text is exactly what build_task makes.
    """
    phrasings = (TASK_TEMPLATES[task][0],) + (PARAPHRASES[task] if paraphrase else ())
    template = phrasings[int(rng.integers(len(phrasings)))] if rng is not None and paraphrase else phrasings[0]
    if caption is not None:
        if rng is not None and rng.random() < 0.5:
            caption = caption.rstrip(". ")
        template = template.replace("<caption>", caption.strip())
        if not template.strip():  # a left-out caption in the bare "<caption>" phrasing: the task's template
            template = TASK_TEMPLATES[task][0].replace("<caption>", "")
    return template


class ExampleBuilder:
    """Builds `Example`s with the SDK's prompt builder, so prompts are tokenized exactly as at inference."""

    def __init__(self, prompts: PromptBuilder, everyday_share: float = 0.0, caption_dropout: float = 0.0,
                 conversation_share: float = 0.0, concepts: ConceptIndex | None = None,
                 concept_share: float = 0.0, unconditional_share: float = 0.0) -> None:
        """everyday_share: chance a text-to-pose caption is an everyday phrasing (`data.everyday`) when one fits.
        caption_dropout: with a sentence encoder, chance the LLM's prompt leaves the caption / instruction out so
        the answer must come from the encoder's rows alone (the LLM's own vocabulary knows only the engine's
        words; the rows carry what any English text means).
        conversation_share: chance a batch is of conversations (`draw_conversation`): earlier turns of other
        tasks before the trained one, and pose edits asked as a follow-up to a generated pose.
        concepts, concept_share: chance an everyday text-to-pose example draws its pose by what it shows
        (`ConceptIndex.draw`) instead of uniformly from the pool.
        unconditional_share: with a sentence encoder, chance a text-to-pose example shows neither the LLM nor the
        encoder any caption (`PromptBuilder.build_unconditional`'s prompt), answered with a pose of the pool: the
        model learns what it would give with no description, which classifier-free guidance subtracts
        (`GenerationConfig.pose_guidance`)."""
        if concept_share and concepts is None:
            raise ValueError("concept_share needs a ConceptIndex of the pool (concepts=ConceptIndex.of(pool))")
        self.prompts = prompts
        self.everyday_share = everyday_share
        self.concepts = concepts
        self.concept_share = concept_share
        self.caption_dropout = caption_dropout if prompts.text_rows else 0.0
        self.unconditional_share = unconditional_share if prompts.text_rows else 0.0
        self.conversation_share = conversation_share
        self.layout: VocabLayout = prompts.layout
        self.tokenizer = prompts.tokenizer
        self.dot_ids = self.tokenizer.encode(".")  # what follows END in "<pose>."

    # ---- answers ----------------------------------------------------------------------------------------
    def pose_answer(self, codes: Sequence[int]) -> tuple[list[int], list[int], int]:
        """(answer ids, their own labels shifted into place, offset of the first query) for a pose answer.

        The returned labels cover the answer positions only; the prompt's last position gets BEGIN separately.
        """
        layout = self.layout
        queries = list(range(layout.pose_query_offset, layout.pose_query_offset + layout.num_pose_tokens))
        ids = [layout.pose_begin_id, *queries, layout.pose_end_id, *self.dot_ids, layout.eos_id]
        labels = [IGNORE]  # BEGIN's logits are never read at inference (the pose step reads the queries only)
        labels += [layout.pose_id_offset + int(c) for c in codes]  # query k -> code k, no shift
        tail = [*self.dot_ids, layout.eos_id]  # END -> ".", ".." -> eos
        labels += tail + [IGNORE]  # eos predicts nothing
        return ids, labels, 1

    def text_answer(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.tokenizer.encode(text.strip()) + [self.layout.eos_id]
        return ids, ids[1:] + [IGNORE]

    def history_answer(self, turn: Turn) -> tuple[str | list[int], ...]:
        """An earlier turn's answer as an Assistant's history keeps it: `PromptBuilder.answer_pieces` of the ids
        generation returns (a pose as BEGIN, its code ids, END, "."), so training sees what inference writes back."""
        layout = self.layout
        if turn.answer_codes is not None:
            ids = [layout.pose_begin_id, *(layout.pose_id_offset + int(c) for c in turn.answer_codes),
                   layout.pose_end_id, *self.dot_ids, layout.eos_id]
        elif turn.answer_text is not None:
            ids = self.text_answer(turn.answer_text)[0]
        else:
            raise ValueError(f"history turn of task {turn.task!r} has neither answer codes nor an answer text: "
                             "every turn before the trained one needs its answer")
        return self.prompts.answer_pieces(ids)

    # ---- examples ---------------------------------------------------------------------------------------
    def build(self, task: Task, user: str, poses: Sequence[Sequence[int]] = (), num_images: int = 0,
              answer_codes: Sequence[int] | None = None, answer_text: str | None = None,
              image_keys: Sequence[int] = (), encoder_text: str | None = None) -> Example:
        """A one-turn example."""
        return self.build_turns([Turn(task, user, tuple(poses), num_images, tuple(image_keys), answer_codes,
                                      answer_text, encoder_text)])

    def build_turns(self, turns: Sequence[Turn]) -> Example:
        """An example of a conversation (`PromptBuilder.build_conversation`): every turn but the last answered as
        the history, the last one's answer the only one with labels; a single turn is `PromptBuilder.build`'s
        prompt."""
        *history, last = turns
        if history:
            row = self.prompts.build_conversation(
                [ConversationTurn(t.user, list(t.poses), t.num_images, self.history_answer(t)) for t in history]
                + [ConversationTurn(last.user, list(last.poses), last.num_images)], encoder_text=last.encoder_text)
        else:
            row = self.prompts.build(last.user, list(last.poses), last.num_images, encoder_text=last.encoder_text)
        prompt = list(row.input_ids)
        labels = [IGNORE] * len(prompt)
        if last.answer_codes is not None:
            ids, answer_labels, first_query = self.pose_answer(last.answer_codes)
            labels[-1] = self.layout.pose_begin_id
            start = len(prompt) + first_query
            block = (start, start + self.layout.num_pose_tokens)
        else:
            if last.answer_text is None:
                raise ValueError("an example needs answer_codes or answer_text")
            ids, answer_labels = self.text_answer(last.answer_text)
            labels[-1] = ids[0]
            block = (0, 0)
        image_keys = [k for t in turns for k in t.image_keys]
        if len(image_keys) != len(row.image_starts):
            raise ValueError(f"{len(image_keys)} image keys for {len(row.image_starts)} image slots")
        return Example(last.task, prompt + ids, labels + answer_labels, block, list(row.image_starts), image_keys,
                       list(row.sentence_slots))


@dataclass
class Batch:
    """Right-padded tensors of a list of examples."""

    input_ids: Tensor  # [B, T] int64
    labels: Tensor  # [B, T] int64, IGNORE on padding
    mask: MixedMask
    image_rows: Tensor  # [N] int64: row of each image slot group
    image_starts: Tensor  # [N] int64: first position of each image
    image_keys: Tensor  # [N] int64: index into the image feature bank
    tasks: list[Task]
    # Sentence-encoder row sets of the whole batch (models with one): the row each fills, its first slot, and
    # what the encoder reads; one per turn.
    text_rows_of: list[int] = field(default_factory=list)
    text_starts: list[int] = field(default_factory=list)
    encoder_texts: list[str] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


def collate(examples: Sequence[Example], layout: VocabLayout) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), layout.pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE, dtype=torch.long)
    rows, starts, keys = [], [], []
    text_rows_of, text_starts, encoder_texts = [], [], []
    for b, e in enumerate(examples):
        input_ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[b, : len(e.labels)] = torch.tensor(e.labels)
        rows += [b] * len(e.image_starts)
        starts += e.image_starts
        keys += e.image_keys
        for start, text in e.text_slots:
            text_rows_of.append(b)
            text_starts.append(start)
            encoder_texts.append(text)
    mask = MixedMask.from_lists([e.block[0] for e in examples], [e.block[1] for e in examples])
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return Batch(input_ids, labels, mask, as_long(rows), as_long(starts), as_long(keys), [e.task for e in examples],
                 text_rows_of, text_starts, encoder_texts)


def input_embeddings(llm: torch.nn.Module, batch: Batch, image_embeds: Tensor | None,
                     text_rows: Tensor | None = None) -> Tensor:
    """Token embeddings [B, T, C] with each image's projected embeddings [N_bank, image_tokens, C] spliced in, and
    (models with a sentence encoder) the sentence rows `text_rows` [len(batch.encoder_texts), num_rows, C] of each
    of the batch's text slots."""
    embeds = splice_image_embeds(llm.embed(batch.input_ids), image_embeds, batch.image_rows, batch.image_starts)
    if text_rows is None or not batch.text_starts:
        return embeds
    return splice_image_embeds(embeds, text_rows, batch.text_rows_of, batch.text_starts)


class SentenceEmbeddingCache:
    """Frozen sentence-encoder embeddings of training texts, computed once per distinct text (captions repeat)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: object, max_entries: int = 200_000) -> None:
        self.encoder, self.tokenizer, self.max_entries = encoder, tokenizer, max_entries
        self.table: dict[str, Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> Tensor:
        missing = sorted({t for t in texts if t not in self.table})
        if missing:
            ids, mask = self.tokenizer(missing)
            device = next(self.encoder.parameters()).device  # the tokenizer builds host tensors
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                vectors = self.encoder.sentence_embedding(ids, mask).cpu()
            if len(self.table) + len(missing) > self.max_entries:
                self.table.clear()
            self.table.update(zip(missing, vectors))
        return torch.stack([self.table[t] for t in texts])


class CodeTargets:
    """Soft targets for the pose-code positions, from the frozen codebook.

    The shipped codebook is highly redundant: a code's 25 nearest neighbours (L2 < 1) decode on average within
    20 mm of it, while codes are 7.2 apart on average. Plain cross-entropy punishes a near-duplicate as hard as a
    code on the far side of the codebook, so a small model spends its capacity telling duplicates apart (greedy
    code accuracy stayed near 5 %). Here the target of a code position is a Gaussian kernel over codebook
    distance, `q(c) ~ exp(-|e_c - e_target|^2 / (2 sigma^2))` (sigma 0.5: about 15 codes share the mass), and a
    second term pulls the expected code vector under the predicted distribution (what `expected_code` pose
    decoding snaps to the codebook) onto the target code's vector.
    """

    def __init__(self, codebook: Tensor, sigma: float = 0.5, latent_weight: float = 1.0) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma={sigma}: the kernel width must be > 0 (codebook distance units)")
        self.codebook = codebook.detach().float()  # [K, D]
        squared = torch.cdist(self.codebook, self.codebook).pow(2)
        self.kernel = torch.softmax(-squared / (2 * sigma * sigma), dim=1)  # [K, K], rows sum to 1
        self.sigma, self.latent_weight = float(sigma), float(latent_weight)


def sequence_loss(llm: torch.nn.Module, batch: Batch, embeds: Tensor, layout: VocabLayout,
                  code_targets: CodeTargets | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean cross-entropy over the labelled positions, and the greedy accuracy on pose codes and on text.

    With `code_targets`, code positions use the codebook-kernel soft targets plus the expected-vector term
    (see `CodeTargets`); text positions keep the one-hot targets.
    Logits are computed only where a label is: the LM head over the whole vocabulary is the largest matmul of
    this small model, and most positions (the prompt) have no target."""
    out = llm(input_embeds=embeds, mask=batch.mask, logits_positions=None, return_hidden=True)
    where = batch.labels != IGNORE
    logits = llm.lm_head(out.hidden[where]).float()
    targets = batch.labels[where]
    is_code = (targets >= layout.pose_id_offset) & (targets < layout.pose_begin_id)
    # Every step reports the same keys (the log averages them per window): NaN where a batch has no code.
    stats: dict[str, float] = {} if code_targets is None else {"code_latent_mse": float("nan")}
    if code_targets is None or not bool(is_code.any()):
        loss = torch.nn.functional.cross_entropy(logits, targets)
    else:
        log_probs = torch.log_softmax(logits, dim=-1)
        text_nll = -log_probs[~is_code].gather(1, targets[~is_code, None]).sum()
        codes = targets[is_code] - layout.pose_id_offset
        code_range = slice(layout.pose_id_offset, layout.pose_id_offset + layout.codebook_size)
        kernel = code_targets.kernel.to(logits.device)[codes]  # [n_codes, K]
        code_nll = -(kernel * log_probs[is_code][:, code_range]).sum()
        loss = (text_nll + code_nll) / targets.numel()
        book = code_targets.codebook.to(logits.device)
        expected = expected_code_vectors(logits[is_code][:, code_range], book)
        latent_mse = (expected - book[codes]).pow(2).mean()
        loss = loss + code_targets.latent_weight * latent_mse
        stats["code_latent_mse"] = float(latent_mse.detach())
    with torch.no_grad():
        hit = logits.argmax(-1) == targets
        stats = {"loss": float(loss.detach()),
                 "code_accuracy": float(hit[is_code].float().mean()) if bool(is_code.any()) else float("nan"),
                 "text_accuracy": float(hit[~is_code].float().mean()) if bool((~is_code).any()) else float("nan"),
                 **stats}
    return loss, stats


# ---------------------------------------------------------------------------------------------------------------
# Drawing examples from a pool


class ConceptIndex:
    """Which poses of a pool show each everyday concept (`data.everyday` rule: "kneel", "upside_down",
    "left_hand_foot" ...), to draw text-to-pose examples by concept.

    A pool drawn around archetypes shows its concepts very unevenly: in a training pool of 18,000 poses "feet
    together" holds for 4,465, kneeling on both knees for 199, a hand on a foot for 39. Drawing poses uniformly, the
    rare requests a user makes are rare in training too. `draw` picks a concept uniformly among those shown by at
    least `min_poses` poses (fewer would be memorised), then one of its poses, and the caption must state it."""

    def __init__(self, poses_by_rule: dict[str, np.ndarray], min_poses: int = 20) -> None:
        self.poses_by_rule = {name: idx for name, idx in sorted(poses_by_rule.items()) if len(idx) >= min_poses}
        if not self.poses_by_rule:
            raise ValueError(f"no everyday concept is shown by {min_poses} or more poses of the pool")
        self.names = tuple(self.poses_by_rule)

    @classmethod
    def of(cls, pool: Pool, min_poses: int = 20) -> ConceptIndex:
        """Match every rule against every pose of `pool` (~0.1 ms a pose)."""
        from unipose_sdk.data.everyday import matching_rules

        found: dict[str, list[int]] = {}
        for i in range(pool.num_poses):
            for rule in matching_rules(pool.facts[i], pool.joints_m[i]):
                found.setdefault(rule.name, []).append(i)
        return cls({name: np.asarray(idx, dtype=np.int64) for name, idx in found.items()}, min_poses)

    def draw(self, rng: np.random.Generator) -> tuple[str, int]:
        """(concept name, pose index): a concept uniformly, then one of its poses uniformly."""
        name = self.names[int(rng.integers(len(self.names)))]
        poses = self.poses_by_rule[name]
        return name, int(poses[int(rng.integers(len(poses)))])


def draw_turn(pool: Pool, builder: ExampleBuilder, task: Task, rng: np.random.Generator,
              paraphrase: bool) -> Turn:
    """One random turn of `task` from the pool; captions and instruction phrasings are drawn per call."""
    from unipose_sdk.data.captions import caption as make_caption
    from unipose_sdk.data.everyday import everyday_caption

    def shown(text: str) -> str:
        """The caption as the LLM's prompt shows it: left out with probability `caption_dropout`."""
        return "" if builder.caption_dropout and rng.random() < builder.caption_dropout else text

    def asked(caption: str | None = None) -> str:
        return user_turn(task, caption, rng, paraphrase)

    for _attempt in range(32):
        if task in (Task.TEXT_TO_POSE, Task.POSE_DESCRIPTION, Task.POSE_ESTIMATION, Task.IMAGE_DESCRIPTION):
            images = task in (Task.POSE_ESTIMATION, Task.IMAGE_DESCRIPTION)
            i = int(rng.integers(len(pool.image_of_pose) if images else pool.num_poses))
            text = make_caption(pool.facts[i], rng)
            if task is Task.TEXT_TO_POSE and builder.everyday_share and rng.random() < builder.everyday_share:
                if builder.concept_share and rng.random() < builder.concept_share:
                    concept, i = builder.concepts.draw(rng)  # the concept holds for pose i: never None
                    text = everyday_caption(pool.facts[i], rng, joints_m=pool.joints_m[i], include=concept)
                else:
                    text = everyday_caption(pool.facts[i], rng, joints_m=pool.joints_m[i]) or text
            if not text:
                continue
            keys = (int(pool.image_of_pose[i]),) if images else ()
            if task is Task.TEXT_TO_POSE:
                if builder.unconditional_share and rng.random() < builder.unconditional_share:
                    return Turn(task, asked(""), answer_codes=pool.codes[i], encoder_text="")
                return Turn(task, asked(shown(text)), answer_codes=pool.codes[i], encoder_text=text)
            if task is Task.POSE_DESCRIPTION:
                return Turn(task, asked(), poses=(pool.codes[i],), answer_text=text)
            if task is Task.POSE_ESTIMATION:
                return Turn(task, asked(), num_images=1, image_keys=keys, answer_codes=pool.codes[i])
            return Turn(task, asked(), num_images=1, image_keys=keys, answer_text=text)
        images = task is Task.IMAGE_DIFFERENCE
        j = int(rng.integers(len(pool.image_of_pair_a) if images else pool.num_pairs))
        if not pool.pair_texts[j]:
            continue
        text = pool.pair_texts[j][int(rng.integers(len(pool.pair_texts[j])))][0]
        if task is Task.POSE_DIFFERENCE:
            return Turn(task, asked(), poses=(pool.pair_codes_a[j], pool.pair_codes_b[j]), answer_text=text)
        if task is Task.POSE_EDITING:
            return Turn(task, asked(shown(text)), poses=(pool.pair_codes_a[j],), answer_codes=pool.pair_codes_b[j],
                        encoder_text=text)
        keys = (int(pool.image_of_pair_a[j]), int(pool.image_of_pair_b[j]))
        return Turn(task, asked(), num_images=2, image_keys=keys, answer_text=text)
    raise RuntimeError(f"no usable {task.value} example in 32 draws: the pool is degenerate")


def draw_example(pool: Pool, builder: ExampleBuilder, task: Task, rng: np.random.Generator,
                 paraphrase: bool) -> Example:
    """One random one-turn example of `task` from the pool."""
    return builder.build_turns([draw_turn(pool, builder, task, rng, paraphrase)])


# How a follow-up edit asks for a change to the pose the model has just given (the instruction follows).
FOLLOW_UPS = ("{}", "Now {}", "Then {}", "Next, {}", "Change it: {}", "Keep that pose, but {}", "Okay, now {}",
              "From there, {}")


def follow_up_edit(pool: Pool, builder: ExampleBuilder, rng: np.random.Generator, paraphrase: bool) -> list[Turn]:
    """A pose asked for in words and given (pose A of a pair), then the pair's instruction as a follow-up turn
    with no pose in it, answered with pose B: "a person sitting" -> A, "Now raise your left hand" -> B."""
    from unipose_sdk.data.captions import caption as make_caption
    from unipose_sdk.data.everyday import everyday_caption
    from unipose_sdk.data.facts import facts_for_poses
    from unipose_sdk.data.phrasing import in_frame

    for _attempt in range(32):
        j = int(rng.integers(pool.num_pairs))
        if not pool.pair_texts[j]:
            continue
        facts_a = facts_for_poses(pool.pair_a[j:j + 1])[0]
        asked_for = (everyday_caption(facts_a, rng, joints_m=pool.pair_joints_a[j]) if rng.random() < 0.5
                     else None) or make_caption(facts_a, rng)
        instruction = pool.pair_texts[j][int(rng.integers(len(pool.pair_texts[j])))][0].strip()
        if not asked_for or not instruction:
            continue
        follow_up = in_frame(FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))], instruction)
        generate = Turn(Task.TEXT_TO_POSE, user_turn(Task.TEXT_TO_POSE, asked_for, rng, paraphrase),
                        answer_codes=pool.pair_codes_a[j], encoder_text=asked_for)
        return [generate, Turn(Task.POSE_EDITING, follow_up, answer_codes=pool.pair_codes_b[j],
                               encoder_text=instruction)]
    raise RuntimeError("no usable pair for a follow-up edit in 32 draws: the pool is degenerate")


def draw_conversation(pool: Pool, builder: ExampleBuilder, task: Task, rng: np.random.Generator,
                      paraphrase: bool) -> Example:
    """A conversation ending in a turn of `task`: a pose edit is half the time a follow-up to a generated pose
    (`follow_up_edit`); otherwise one or two earlier turns of random tasks, answered, come before the trained
    turn, which must be answered on its own terms whatever came before. Earlier turns that would not fit the
    model's context are left out."""
    if task is Task.POSE_EDITING and rng.random() < 0.5:
        return builder.build_turns(follow_up_edit(pool, builder, rng, paraphrase))
    last = draw_turn(pool, builder, task, rng, paraphrase)
    tasks = list(Task)
    history = [draw_turn(pool, builder, tasks[int(rng.integers(len(tasks)))], rng, paraphrase)
               for _ in range(int(rng.integers(1, 3)))]
    while history:
        try:
            return builder.build_turns([*history, last])
        except InvalidTextError:  # longer than the context: fewer earlier turns
            history = history[1:]
    return builder.build_turns([last])


def draw_batch(pool: Pool, builder: ExampleBuilder, weights: dict[Task, float], batch_size: int,
               rng: np.random.Generator, paraphrase: bool) -> Batch:
    """A batch of ONE task drawn by `weights`: rows of one task have similar lengths, so right-padding wastes
    little (a mixed batch pads every row to the two-pose prompts of the difference task). With the builder's
    `conversation_share`, a batch of conversations ending in that task (`draw_conversation`)."""
    tasks = list(weights)
    p = np.array([weights[t] for t in tasks], dtype=np.float64)
    task = tasks[int(rng.choice(len(tasks), p=p / p.sum()))]
    # A whole batch is conversations or none is: their prompts are several times longer, and padding one-turn rows
    # to them would waste most of the step.
    draw = draw_conversation if builder.conversation_share and rng.random() < builder.conversation_share \
        else draw_example
    examples = [draw(pool, builder, task, rng, paraphrase) for _ in range(batch_size)]
    return collate(examples, builder.layout)


class BatchStream(torch.utils.data.IterableDataset):
    """An endless stream of `draw_batch` batches, drawn in `workers` processes (0: in this one).

    On a GPU the model's step takes a few milliseconds and drawing a batch of 128 (captions, prompts, padding) about
    15 ms of one core, so without workers the GPU mostly waits. Worker w draws from its own generator seeded
    [seed, offset, w] (in-process: [seed, offset]); the loader takes the workers' batches in turn, so a run is
    reproducible for a given worker count. Workers are forked: the pool's arrays are shared, not copied."""

    def __init__(self, pool: Pool, builder: ExampleBuilder, weights: dict[Task, float], batch_size: int,
                 seed: Sequence[int], paraphrase: bool) -> None:
        super().__init__()
        self.pool, self.builder, self.weights, self.batch_size = pool, builder, weights, batch_size
        self.seed, self.paraphrase = list(seed), paraphrase

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed if worker is None else [*self.seed, worker.id])
        while True:
            yield draw_batch(self.pool, self.builder, self.weights, self.batch_size, rng, self.paraphrase)

    def batches(self, workers: int = 0):
        """An iterator over the stream's batches, drawn in `workers` processes."""
        if workers <= 0:
            return iter(self)
        import multiprocessing

        loader = torch.utils.data.DataLoader(self, batch_size=None, num_workers=workers, prefetch_factor=4,
                                             multiprocessing_context=multiprocessing.get_context("fork"))
        return iter(loader)
