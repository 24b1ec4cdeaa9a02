"""Generation with UniPose pose blocks, as free functions over the model (gpt-fast style).

The loop decodes text greedily (the official behaviour; `GenerationConfig.temperature` > 0 samples instead).
When a row emits the pose BEGIN token, the next model call for that row is the
pose step: BEGIN plus the 80 learned query embeddings as ONE 81-token call, BEGIN causal and the 80 query
positions one bidirectional block. The argmax of the logits at query k is pose token k (unshifted). END is
appended without being predicted and fed as the next decode input, after which text decoding continues
(usually "." then `</s>`). Text-to-pose therefore costs one prefill, one pose step and a few decode steps.

Batching. Prompts are left-padded to one length P and prefilled together. Every later call runs the whole batch
with static shapes ([B, 1] decode, [B, 81] pose step), and each row keeps its own cache write slot and RoPE
position. A row that is not part of a call (it waits while another row runs its pose step, or it has finished)
still computes, but its slot and position do not advance: what it wrote lands at or after its next slot, which
it overwrites before any of its queries can see it (the mask is causal in slots). The cache therefore has
NUM_POSE_QUERIES slots of slack past P + max_new_tokens for such scratch writes.

One pass for pose answers. Text-to-pose, estimation and editing answer with a pose first, so `generate` can
append BEGIN and the 80 queries to the prompt and run prefill and pose block as ONE forward
(`prefill_with_pose`): the prompt's rows are causal, so their states (and the logits at the last prompt
position) do not depend on what follows, and the 81 appended rows land exactly where the pose step would have
written them (slots P..P+80, since left padding puts every row's prompt end at P-1). A row keeps its block when
the logit at its last prompt position says BEGIN (greedy decoding would have chosen it) or BEGIN is forced;
otherwise its offsets are simply not advanced, so the appended rows are scratch that the row overwrites before
any of its queries can see them (the same argument as for waiting rows above), and it continues step by step.
Either way the tokens are those of the step-by-step path: one weight pass instead of two per pose answer.

What a call does is one `GenerationConfig`, built by the caller (the task classes build it from their options) and
read here as given. Timing is the caller's: the loop wraps its stages in the caller's `on_stage` callback
(`unipose_sdk.timing.StageTimer.stage`) and holds no clock.

Conversations (`continue_generation`): one row whose KV cache (`PrefixCache`) is kept between calls; a new call
computes only the slots after the longest prefix the cache already holds, then decodes as above, yielding each
token and pose block as it is accepted (streaming).

Guidance (`GenerationConfig.pose_guidance` w > 0): each pose block's query logits become cond + w (cond - uncond),
where uncond are the query logits of the task's prompt with its condition left out (`unconditional_query_logits`,
one forward the caller computes once and keeps: the prompt without a condition is the same for every call). This
is classifier-free guidance: what the description changes in the model's belief is amplified, and the pull
towards the poses the model gives any description (a small model's blur towards the average pose) is cancelled.

Only `prefill`, `prefill_with_pose`, `extend`, `decode_step` and `pose_step` touch the model. A model may define
`prompt_length_bucket(P) -> P'` (P' >= P): prompts are then left-padded to P' so that a compiled prefill sees
only a few shapes (`unipose_sdk.runtime.torch_lm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError, InvalidTextError
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import (
    LLMConfig,
    VocabLayout,
    check_pose_candidates,
    check_pose_code_temperature,
    check_pose_guidance,
)
from unipose_sdk.models.llm import KVCache, LMOutput
from unipose_sdk.timing import OnStage, untimed

PromptRow = Tensor | Sequence[int]  # token ids [L], or input embeddings [L, C] with images spliced in


class LanguageModel(Protocol):
    """What generation needs from the model (MistralLM satisfies it)."""

    config: LLMConfig

    @property
    def device(self) -> torch.device: ...

    def __call__(self, input_ids: Tensor | None = None, **kwargs: object) -> LMOutput: ...

    def embed(self, input_ids: Tensor) -> Tensor: ...

    def embed_pose_queries(self, num_queries: int = ...) -> Tensor: ...

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache: ...


# Candidate pose codes of a call's pose-block rows [B, C, Q] and which rows of the call they are -> the kept codes
# [B, Q] (`GenerationConfig.pose_candidates`).
ChoosePose = Callable[[Tensor, Sequence[int]], Tensor]


def pose_block_length(vocab: VocabLayout) -> int:
    """Ids one pose block takes in a generated stream: BEGIN, the codes, END (82 for the released layout)."""
    return vocab.num_pose_tokens + 2


@dataclass(frozen=True)
class GenerationConfig:
    """What one `generate` call does; built once by the caller and read by the loop as given.

    max_new_tokens: most ids each row generates, every pose block counting `pose_block_length` ids (82). A row
        that emits BEGIN without room left for its whole block ends there ("length") instead of a cut block.
    start_with_pose: force every row's first generated token to be BEGIN (the pose tasks, whose answer template
        starts with a pose); each result says whether greedy decoding would have chosen otherwise.
    text_only: never generate BEGIN (the text tasks, whose answer template is text): the answer holds no pose.
    stop_after_pose: end a row after its first pose block (finish_reason "pose"): the text after a pose answer
        ("." then eos) carries nothing and costs decode steps.
    one_pass: run the prompt and a pose block as one forward (`prefill_with_pose`). With `start_with_pose` every
        row keeps its block; without, the block is speculative: rows whose greedy first token is not BEGIN drop
        it (their text answers pay 81 extra prefill rows) and continue step by step. Same tokens either way;
        False is the step-by-step reference. Skipped when max_new_tokens leaves no room for a block.

    temperature: 0 (the default) decodes greedily, the official behaviour: the argmax for text, and for pose codes
        `pose_codes_from_logits` (argmax or expected code, as the model's config says). Above 0 every text token
        and every pose code is sampled from the softmax of logits / temperature (pose codes over the codebook ids
        only, each query on its own), restricted by top_p.
    top_p: nucleus sampling: draw only from the most likely ids whose probabilities add up to top_p (1.0: all).
    pose_code_temperature: greedy expected-code decoding only: each query's softmax over the codes is taken of
        code logits / this. 1 is the plain expectation; below 1 it leans towards the likeliest codes (towards the
        argmax as it nears 0), so an uncertain query commits instead of landing between the poses it weighs.
    seed: the sampling stream's seed: the same seed, prompt and config give the same tokens on the same backend
        and device. None: a fresh stream from torch's global generator (torch.manual_seed makes it repeatable).
    pose_guidance: classifier-free guidance weight w for pose blocks (module docstring): every block's query
        logits become cond + w (cond - uncond) before codes are chosen (greedy or sampled); `generate` then needs
        the task's `unconditional_query_logits`. 0 (the default): the logits as they are.
    max_text_tokens / max_poses: None, or the most text ids (pose blocks not counted) / pose blocks a row may
        hold; reaching either ends the row ("length"), within max_new_tokens, which still bounds all ids.
    pose_candidates: greedy decoding only: (pose guidance, code temperature) pairs; each pose block is decoded at
        every pair and `generate`'s `choose_pose` keeps one candidate per row (the session's text-pose matcher
        does, `UniPose.pose_chooser`). Empty (the default): the one decoding above. The pair settings replace
        pose_guidance and pose_code_temperature; guidance above 0 in any pair needs the unconditional logits.
    """

    max_new_tokens: int
    start_with_pose: bool = False
    text_only: bool = False
    stop_after_pose: bool = False
    one_pass: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    pose_code_temperature: float = 1.0
    pose_guidance: float = 0.0
    seed: int | None = None
    max_text_tokens: int | None = None
    max_poses: int | None = None
    no_repeated_sentences: bool = True
    pose_candidates: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or (
                self.max_new_tokens < 1):
            raise InvalidInputError.make(f"max_new_tokens={self.max_new_tokens!r}", "an integer >= 1",
                                         "Raise max_new_tokens.")
        for name in ("start_with_pose", "text_only", "stop_after_pose", "one_pass", "no_repeated_sentences"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError.make(f"{name}={getattr(self, name)!r}", "True or False",
                                             f"Pass {name}=True or False.")
        if self.start_with_pose and self.text_only:
            raise InvalidInputError.make("start_with_pose=True with text_only=True",
                                         "at most one of them (a pose answer, or a text answer)",
                                         "Drop one of the two.")
        check_sampling(self.temperature, self.top_p, self.seed)
        check_pose_code_temperature(self.pose_code_temperature)
        check_pose_guidance(self.pose_guidance)
        if self.pose_candidates != ():
            object.__setattr__(self, "pose_candidates", check_pose_candidates(self.pose_candidates))
        for name in ("max_text_tokens", "max_poses"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError.make(f"{name}={value!r}", "None or an integer >= 0",
                                             f"Pass {name}=None for no limit of its own.")

    @property
    def sampling(self) -> bool:
        """True when tokens are drawn at random (temperature > 0); False: greedy."""
        return self.temperature > 0

    @property
    def guided(self) -> bool:
        """Whether any pose decoding of this config guides (and so needs the unconditional query logits)."""
        return self.pose_guidance > 0 or any(w > 0 for w, _ in self.pose_candidates)


def check_sampling(temperature: object, top_p: object, seed: object) -> None:
    """The sampling fields' types and ranges (shared by GenerationConfig and the options that fill it)."""
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(temperature) or not 0.0 <= float(temperature) <= 100.0:  # type: ignore[arg-type]
        raise InvalidInputError.make(f"temperature={temperature!r}", "a number in [0, 100] (0: greedy)",
                                     "Pass temperature=0 for greedy decoding, or e.g. 0.7 to sample.")
    if not number(top_p) or not 0.0 < float(top_p) <= 1.0:  # type: ignore[arg-type]
        raise InvalidInputError.make(f"top_p={top_p!r}", "a number in (0, 1]", "Pass e.g. top_p=0.9 (1.0: no cut).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidInputError.make(f"seed={seed!r}", "None or an integer in [0, 2**63)", "Pass e.g. seed=0.")


def sample_ids(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> Tensor:
    """One id per row of logits [..., V] drawn from softmax(logits / temperature) cut to the top_p nucleus.

    Drawn on the CPU in float32 from `generator` (a CPU generator), so a seed gives the same ids whatever device
    computed the logits."""
    shape = logits.shape[:-1]
    probs = torch.softmax(logits.detach().float().cpu().reshape(-1, logits.shape[-1]) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely ids
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the most likely id always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).view(shape)


class SentenceLedger:
    """The sentences one row's answer has stated, kept up to date with the ids added since the last look, so a
    decode step costs the length of the sentence being written, not of the whole answer.

    ends_by_prefix maps a stated sentence without its last id to the ids that ended it; current is the sentence
    being written."""

    def __init__(self) -> None:
        self.seen = 0
        self.ends_by_prefix: dict[tuple[int, ...], set[int]] = {}
        self.current: list[int] = []

    def update(self, history: Sequence[int], sentence_end_ids: frozenset[int]) -> None:
        if len(history) < self.seen:  # not the answer this ledger followed: start over
            self.__init__()  # type: ignore[misc]
        for token in history[self.seen:]:
            self.current.append(int(token))
            if int(token) in sentence_end_ids:
                self.ends_by_prefix.setdefault(tuple(self.current[:-1]), set()).add(self.current[-1])
                self.current = []
        self.seen = len(history)

    def banned(self, eos_id: int) -> list[int]:
        """The ids that would end the current sentence as a copy of a stated one, and eos when the current
        sentence already is such a copy (without its end)."""
        if not self.current or not self.ends_by_prefix:
            return []
        prefix = tuple(self.current)
        ids = sorted(self.ends_by_prefix.get(prefix, ()))
        return ids + [eos_id] if ids else []


def ban_repeated_sentences(logits: Tensor, histories: Sequence[Sequence[int]], sentence_end_ids: frozenset[int],
                           eos_id: int, ledgers: list[SentenceLedger] | None = None) -> Tensor:
    """Logits [B, V] where, for each row, every id that would end the current sentence as a copy of a sentence the
    row's answer already holds is -inf (and eos, when the current sentence already is such a copy without its end).

    A small model describing a pose tends to state its most likely sentence twice ("Their left arm is stretched
    out in front." twice); banning the copy's last id makes it say something else. Sentences are runs of ids
    ended by an id in `sentence_end_ids` (ids whose text ends in ".", "!" or "?"). `ledgers`: one SentenceLedger
    per row kept across the steps of a call (each step then reads only the new ids); None reads the histories
    whole. Returns `logits` itself when nothing is banned."""
    if ledgers is None:
        ledgers = [SentenceLedger() for _ in histories]
    banned: list[tuple[int, int]] = []
    for row, (history, ledger) in enumerate(zip(histories, ledgers)):
        ledger.update(history, sentence_end_ids)
        banned += [(row, token) for token in ledger.banned(eos_id)]
    if not banned:
        return logits
    logits = logits.clone()
    rows, ids = zip(*banned)
    logits[list(rows), list(ids)] = float("-inf")
    return logits


class TokenPicker:
    """How one call turns logits into ids: greedy (argmax / `pose_codes_from_logits`) or sampled (`sample_ids`)
    from one seeded stream per call."""

    def __init__(self, config: GenerationConfig, vocab: VocabLayout, code_vectors: Tensor | None = None,
                 sentence_end_ids: frozenset[int] = frozenset(), unconditional_query_logits: Tensor | None = None,
                 choose_pose: ChoosePose | None = None) -> None:
        self.config = config
        self.vocab = vocab
        self.code_vectors = code_vectors
        self.choose_pose = choose_pose if config.pose_candidates and not config.sampling else None
        if config.pose_candidates and not config.sampling and choose_pose is None:
            raise InvalidInputError.make(
                f"pose_candidates={config.pose_candidates} without choose_pose",
                "a function that keeps one candidate per row (the session's text-pose matcher)",
                "Pass choose_pose, or pose_candidates=() for the one decoding.")
        if config.guided and unconditional_query_logits is None:
            raise InvalidInputError.make(
                f"pose_guidance={config.pose_guidance} without unconditional_query_logits",
                "the query logits of the task's prompt without its condition",
                "Pass unconditional_query_logits=pose_query_logits(model, prompt, vocab), or pose_guidance=0.")
        self.unconditional_query_logits = unconditional_query_logits
        self.sentence_end_ids = sentence_end_ids if config.no_repeated_sentences else frozenset()
        self.generator: torch.Generator | None = None
        self.ledgers: list[SentenceLedger] = []  # per row of this call, for the ban on repeated sentences
        if config.sampling:
            seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self.generator = torch.Generator().manual_seed(seed)

    def tokens(self, logits: Tensor, histories: Sequence[Sequence[int]] | None = None,
               ) -> tuple[list[int], list[float]]:
        """Next-token logits [B, V] -> one id per row and its log-probability (`GenerationResult.token_logprobs`);
        `histories`: each row's answer so far (for the ban on repeated sentences)."""
        if histories is not None and self.sentence_end_ids:
            self.ledgers += [SentenceLedger() for _ in range(len(histories) - len(self.ledgers))]
            logits = ban_repeated_sentences(logits, histories, self.sentence_end_ids, self.vocab.eos_id,
                                            self.ledgers)
        if self.config.text_only:
            logits = logits.clone()
            logits[:, self.vocab.pose_begin_id] = float("-inf")
        if self.generator is None:
            ids = logits.argmax(dim=-1)
        else:
            ids = sample_ids(logits, self.config.temperature, self.config.top_p, self.generator)
        scores = logits.float()
        logprobs = scores.gather(-1, ids[:, None])[:, 0] - scores.logsumexp(dim=-1)  # no [B, V] log-softmax built
        # One host transfer for both (float64 holds every id exactly): the stop check needs the ids anyway.
        ids_and_logprobs = torch.stack([ids.double(), logprobs.double()]).tolist()
        return [int(i) for i in ids_and_logprobs[0]], ids_and_logprobs[1]

    def codes(self, query_logits: Tensor, rows: Sequence[int] | None = None) -> Tensor:
        """Logits at the pose queries [B, Q, V] -> codebook indices [B, Q] (int64, CPU). rows: which rows of the
        call these are (for `choose_pose`; default all, in order)."""
        if self.choose_pose is not None:
            rows = list(range(query_logits.shape[0])) if rows is None else list(rows)
            return self.choose_pose(self._candidate_codes(query_logits), rows)
        if self.generator is None:
            return self._greedy_codes(query_logits, self.config.pose_guidance, self.config.pose_code_temperature)
        if self.config.pose_guidance > 0:
            query_logits = guided_query_logits(query_logits, self.unconditional_query_logits,
                                               self.config.pose_guidance)
        first = self.vocab.pose_id_offset
        code_logits = query_logits[..., first:first + self.vocab.codebook_size]
        return sample_ids(code_logits, self.config.temperature, self.config.top_p, self.generator)

    def _candidate_codes(self, query_logits: Tensor) -> Tensor:
        """[B, Q, V] -> the codes of every `config.pose_candidates` decoding [B, C, Q] (int64, CPU), all in one
        batch of tensor operations (the same numbers `_greedy_codes` computes one setting at a time). Only the
        code ids' logits are read, so only they are guided."""
        codes = slice(self.vocab.pose_id_offset, self.vocab.pose_id_offset + self.vocab.codebook_size)
        code_logits = query_logits[..., codes][:, None]  # [B, 1, Q, K]
        weights = torch.tensor([w for w, _ in self.config.pose_candidates], device=code_logits.device)
        temperatures = torch.tensor([t for _, t in self.config.pose_candidates], device=code_logits.device)
        if self.config.guided:
            code_logits = guided_query_logits(code_logits, self.unconditional_query_logits[..., codes],
                                              weights[:, None, None])  # [B, C, Q, K]
        code_logits = code_logits.expand(-1, len(weights), -1, -1)
        return codes_from_code_logits(code_logits, self.code_vectors, temperatures[:, None, None]).cpu()

    def _greedy_codes(self, query_logits: Tensor, guidance: float, temperature: float) -> Tensor:
        if guidance > 0:
            query_logits = guided_query_logits(query_logits, self.unconditional_query_logits, guidance)
        return pose_codes_from_logits(query_logits, self.vocab, self.code_vectors, temperature).cpu()


@dataclass
class DecodeState:
    """Per-row positions of a batch in flight; all [B] tensors on the model's device."""

    key_start: Tensor  # int32: first cache slot holding a real token (the left padding lies before it)
    next_slot: Tensor  # int32: cache slot the row's next token is written to
    next_position: Tensor  # int64: RoPE position of the row's next token

    def advance(self, active: Tensor, num_tokens: int) -> None:
        """Move the rows in `active` [B] bool past `num_tokens` written tokens; the others stay where they are."""
        step = active.to(torch.int32) * num_tokens
        self.next_slot = self.next_slot + step
        self.next_position = self.next_position + step.to(torch.long)


@dataclass
class GenerationResult:
    """One row's output.

    token_ids: the generated id stream; each pose appears as BEGIN, 80 pose ids, END. Ends with eos when
        finish_reason is "eos".
    pose_codes: one int64 tensor [80] of codebook indices per pose block, in stream order.
    finish_reason: "eos", or "length" when max_new_tokens ran out (a BEGIN emitted with fewer than 82 ids of
        budget left is dropped rather than leaving a pose block cut short), or "pose" when `stop_after_pose`
        ended the row after its first pose block (the stream then ends with END).
    forced_first_token: True when `start_with_pose` forced a BEGIN that greedy decoding would not have chosen.
    token_logprobs: one per id of token_ids: the natural log of the probability the model gave the id where it
        was picked (its softmax over the logits as the picker read them: after the ban on repeated sentences and
        text_only's ban on BEGIN, before any sampling temperature); NaN for ids the loop did not pick (a forced
        BEGIN, the ids of a pose block). How sure the model was of each sentence (`text.sentences.confident_sentences`).
    """

    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    pose_codes: list[Tensor] = field(default_factory=list)
    finish_reason: str | None = None
    forced_first_token: bool = False
    prompt_tokens: int = 0  # continue_generation: the prompt's length, and how much of it the kept cache held
    reused_tokens: int = 0

    def ids_and_logprobs(self, without: int) -> tuple[list[int], list[float]]:
        """token_ids and token_logprobs, leaving out every `without` id (eos: it ends an answer, it is no part of
        its text). A result built without log-probabilities (by hand, as the Assistant rebuilds its history) gives
        NaN for every id."""
        logprobs = self.token_logprobs or [math.nan] * len(self.token_ids)
        kept = [(t, lp) for t, lp in zip(self.token_ids, logprobs, strict=True) if t != without]
        return [t for t, _ in kept], [lp for _, lp in kept]


# ---------------------------------------------------------------------------------------------------------------
# The three model calls


@torch.no_grad()
def prefill(
    model: LanguageModel, cache: KVCache, prompt_embeds: Tensor, lengths: Sequence[int]
) -> tuple[Tensor, DecodeState]:
    """Run left-padded prompts [B, P, C] (row b's real tokens are its last lengths[b]) from cache slot 0.

    Returns the next-token logits [B, V] and the per-row state after the prompt.
    """
    batch, padded, _ = prompt_embeds.shape
    device = prompt_embeds.device
    length = torch.tensor(list(lengths), dtype=torch.long, device=device)
    key_start = (padded - length).to(torch.int32)
    # HF convention: a real token's RoPE position is its index among the row's real tokens (pads clamp to 0).
    positions = (torch.arange(padded, device=device).unsqueeze(0) - key_start.unsqueeze(1).long()).clamp(min=0)
    zeros = torch.zeros(batch, dtype=torch.int32, device=device)
    mask = MixedMask(block_start=zeros, block_end=zeros, key_start=key_start, query_offset=zeros)
    out = model(
        input_embeds=prompt_embeds,
        positions=positions,
        mask=mask,
        cache=cache,
        kv_length=padded,  # nothing past the prompt is written yet
        logits_positions=slice(-1, None),  # left padding puts every row's last real token at slot P-1
    )
    state = DecodeState(key_start=key_start, next_slot=torch.full_like(zeros, padded), next_position=length)
    return out.logits[:, -1], state


@torch.no_grad()
def prefill_with_pose(
    model: LanguageModel, cache: KVCache, prompt_embeds: Tensor, lengths: Sequence[int], vocab: VocabLayout
) -> tuple[Tensor, Tensor, DecodeState]:
    """Prefill and pose step in ONE forward: left-padded prompts [B, P, C], then BEGIN and the Q pose queries.

    Returns the next-token logits at the last prompt position [B, V], the logits at the query positions
    [B, Q, V] and the state after the PROMPT: the caller advances the rows that keep their block by 1 + Q
    (`DecodeState.advance`); the others stay at slot P and overwrite the appended rows as they go.
    """
    batch, padded, _ = prompt_embeds.shape
    device = prompt_embeds.device
    num_queries = vocab.num_pose_tokens
    length = torch.tensor(list(lengths), dtype=torch.long, device=device)
    key_start = (padded - length).to(torch.int32)
    begin = model.embed(torch.full((batch, 1), vocab.pose_begin_id, dtype=torch.long, device=device))
    queries = model.embed_pose_queries(num_queries).unsqueeze(0).expand(batch, -1, -1)
    embeds = torch.cat([prompt_embeds.to(begin.dtype), begin, queries.to(begin.dtype)], dim=1)  # [B, P+1+Q, C]
    total = padded + 1 + num_queries
    # Prompt positions as in `prefill`; BEGIN and the queries continue each row's sequence (as in `pose_step`).
    positions = (torch.arange(total, device=device).unsqueeze(0) - key_start.unsqueeze(1).long()).clamp(min=0)
    zeros = torch.zeros(batch, dtype=torch.int32, device=device)
    mask = MixedMask(
        block_start=torch.full_like(zeros, padded + 1),
        block_end=torch.full_like(zeros, total),
        key_start=key_start,
        query_offset=zeros,
    )
    out = model(
        input_embeds=embeds,
        positions=positions,
        mask=mask,
        cache=cache,
        kv_length=total,
        logits_positions=slice(padded - 1, None),  # last prompt token, BEGIN (unused), the Q queries
    )
    state = DecodeState(key_start=key_start, next_slot=torch.full_like(zeros, padded), next_position=length)
    return out.logits[:, 0], out.logits[:, 2:], state


@torch.no_grad()
def decode_step(model: LanguageModel, cache: KVCache, state: DecodeState, tokens: Tensor, active: Tensor,
                kv_length: int | None = None) -> Tensor:
    """Feed one token per row (tokens [B]); rows with active[b] False compute but do not advance.

    kv_length: attend only the first kv_length cache slots (every row's written slots; None: the whole cache).
    Returns the next-token logits [B, V].
    """
    zeros = torch.zeros_like(state.next_slot)
    mask = MixedMask(block_start=zeros, block_end=zeros, key_start=state.key_start, query_offset=state.next_slot)
    out = model(tokens.unsqueeze(1), positions=state.next_position.unsqueeze(1), mask=mask, cache=cache,
                kv_length=kv_length)
    state.advance(active, 1)
    return out.logits[:, -1]


@torch.no_grad()
def pose_step(model: LanguageModel, cache: KVCache, state: DecodeState, vocab: VocabLayout, active: Tensor,
              kv_length: int | None = None) -> Tensor:
    """Feed BEGIN + the learned pose queries as one (1 + Q)-token call, Q = vocab.num_pose_tokens.

    BEGIN is causal; the Q query positions form one bidirectional block. Only rows with active[b] True advance.
    kv_length: as in `decode_step`.
    Returns the logits at the query positions [B, Q, V]: query k predicts pose token k (no shift).
    """
    batch = state.next_slot.shape[0]
    num_queries = vocab.num_pose_tokens
    begin = model.embed(torch.full((batch, 1), vocab.pose_begin_id, dtype=torch.long, device=state.next_slot.device))
    queries = model.embed_pose_queries(num_queries).unsqueeze(0).expand(batch, -1, -1)  # [B, Q, C]
    embeds = torch.cat([begin, queries.to(begin.dtype)], dim=1)  # [B, 1 + Q, C]
    steps = torch.arange(1 + num_queries, device=state.next_slot.device)
    # The block covers the query slots; waiting rows get it too, their outputs are discarded.
    mask = MixedMask(
        block_start=state.next_slot + 1,
        block_end=state.next_slot + 1 + num_queries,
        key_start=state.key_start,
        query_offset=state.next_slot,
    )
    out = model(
        input_embeds=embeds,
        positions=state.next_position.unsqueeze(1) + steps,  # positions stay sequential (plain RoPE)
        mask=mask,
        cache=cache,
        kv_length=kv_length,
        logits_positions=slice(1, None),
    )
    state.advance(active, 1 + num_queries)
    return out.logits


def guided_query_logits(query_logits: Tensor, unconditional_query_logits: Tensor, weight: float | Tensor) -> Tensor:
    """Classifier-free guidance of pose-query logits [B, Q, V] by the unconditional prompt's [Q, V]: cond +
    weight * (cond - uncond), computed in float32. A weight tensor broadcasts (several weights at once)."""
    cond = query_logits.float()
    return cond + weight * (cond - unconditional_query_logits.to(device=cond.device, dtype=torch.float32))


def expected_code_vectors(code_logits: Tensor, codebook: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """The codebook vector [..., D] expected under the softmax of the code logits [..., K] / temperature: what
    expected-code pose decoding snaps to the codebook, and (at temperature 1) what training pulls onto the
    target code (training.CodeTargets)."""
    return torch.softmax(code_logits.float() / temperature, dim=-1) @ codebook


def pose_codes_from_logits(query_logits: Tensor, vocab: VocabLayout, code_vectors: Tensor | None = None,
                           temperature: float = 1.0) -> Tensor:
    """Logits at the pose-query positions [B, Q, V] -> codebook indices [B, Q] (int64).

    code_vectors: None for the argmax per query (the official decoding, below). With the codebook [K, D] (config
    `pose_decoding="expected_code"`), each query's softmax over the K code ids weights the code vectors, and the
    code nearest (L2) to that expected vector is chosen: where the model spreads its belief over codes that
    decode alike, the argmax picks one member of the spread at random while the expected vector lands in its
    middle. On the embedded model this lowers text-to-pose MPJPE from 189 to 154 mm on the evaluation set.
    temperature (`GenerationConfig.pose_code_temperature`) divides the code logits before that softmax.

    The argmax is taken over the codebook's ids only. The official decoding (greedy_search in
    posegpt_full_mask.py) takes the argmax over the whole vocabulary and then parses each id as
    `<pose_id_k>` to feed k to the VQ-VAE; any id outside the codebook range (text, BEGIN/END, the queries)
    breaks that step. Restricting the range gives the same codes whenever the official decoding succeeds, and
    a valid code instead of a failure otherwise.
    """
    first = vocab.pose_id_offset
    return codes_from_code_logits(query_logits[..., first : first + vocab.codebook_size], code_vectors, temperature)


def codes_from_code_logits(code_logits: Tensor, code_vectors: Tensor | None = None,
                           temperature: float | Tensor = 1.0) -> Tensor:
    """Logits over the codebook's ids [..., K] -> codebook indices [...] (int64), as `pose_codes_from_logits`
    decodes them. A temperature tensor broadcasts against the logits (several temperatures at once)."""
    if code_vectors is None:
        return code_logits.argmax(dim=-1)
    book = code_vectors.to(device=code_logits.device, dtype=torch.float32)
    expected = expected_code_vectors(code_logits, book, temperature)  # [..., D]
    # |e - b|^2 = |e|^2 - 2 e.b + |b|^2; |e|^2 is the same for every code of a query, so it can be left out.
    distance = book.pow(2).sum(-1) - 2 * expected @ book.T  # [..., K]
    return distance.argmin(dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def left_pad(rows: Sequence[Tensor], padded_length: int | None = None) -> tuple[Tensor, list[int]]:
    """Rows of embeddings [L_b, C] -> left-padded [B, P, C] (zeros before each row) and the lengths.

    P is the longest row, or `padded_length` when given (a bucket length >= the longest row)."""
    lengths = [int(row.shape[0]) for row in rows]
    padded = max(lengths) if padded_length is None else max(padded_length, max(lengths))
    out = rows[0].new_zeros(len(rows), padded, rows[0].shape[1])
    for b, row in enumerate(rows):
        out[b, padded - lengths[b] :] = row
    return out, lengths


def _prompt_embeddings(model: LanguageModel, prompts: Sequence[PromptRow], device: torch.device) -> list[Tensor]:
    if len(prompts) == 0:
        raise InvalidInputError.make("an empty list of prompts", "at least one prompt", "Pass one prompt per row.")
    rows = []
    for b, prompt in enumerate(prompts):
        row = prompt if isinstance(prompt, Tensor) else torch.tensor(list(prompt), dtype=torch.long)
        if row.shape[0] == 0:
            raise InvalidTextError.make(f"an empty prompt in row {b}", "at least one token", "Start prompts with bos.")
        if row.dim() == 1 and not row.is_floating_point():
            rows.append(model.embed(row.to(device).unsqueeze(0))[0])
        elif row.dim() == 2 and row.is_floating_point():
            rows.append(row.to(device))
        else:
            raise InvalidInputError.make(
                f"row {b} of shape {tuple(row.shape)} and dtype {row.dtype}",
                "token ids [L] (integers) or input embeddings [L, C] (floating point)",
                "Tokenize the prompt, or splice embeddings into a [L, C] tensor.",
            )
    return rows


def _check_lengths(lengths: list[int], max_new_tokens: int, max_context: int) -> None:
    longest = max(lengths)
    if longest + max_new_tokens > max_context:
        raise InvalidTextError.make(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} = {longest + max_new_tokens}",
            f"at most {max_context} tokens (the model's context)",
            f"Shorten the prompt or lower max_new_tokens to {max(0, max_context - longest)} or less.",
        )


class AnswerStreams:
    """The per-row bookkeeping of greedy generation: the id streams, the token each row feeds next, and when a row
    ends. (Every accepted token passes through `accept` / `take_pose`: the place a streaming caller would hook.)

    A row ends on eos, when config.max_new_tokens is reached (a pose block counts 82 ids; a BEGIN without room for
    its whole block ends the row instead of leaving a block cut short), or after its first pose when
    config.stop_after_pose.
    """

    def __init__(self, batch: int, vocab: VocabLayout, config: GenerationConfig) -> None:
        self.results = [GenerationResult() for _ in range(batch)]
        self.pending = [vocab.pad_id] * batch  # the token each row feeds next
        self.vocab = vocab
        self.config = config
        self.max_new_tokens = config.max_new_tokens
        self.pose_block_ids = pose_block_length(vocab)

    def accept(self, b: int, token: int, logprob: float = math.nan) -> None:
        """Append a sampled token (and its log-probability) to row b's stream, or finish the row."""
        out = self.results[b]
        begin = token == self.vocab.pose_begin_id
        if begin and (len(out.token_ids) + self.pose_block_ids > self.max_new_tokens or (
                self.config.max_poses is not None and len(out.pose_codes) >= self.config.max_poses)):
            out.finish_reason = "length"
            return
        out.token_ids.append(token)
        out.token_logprobs.append(logprob)
        text_ids = len(out.token_ids) - self.pose_block_ids * len(out.pose_codes)
        if token == self.vocab.eos_id:
            out.finish_reason = "eos"
        elif len(out.token_ids) >= self.max_new_tokens or (
                not begin and self.config.max_text_tokens is not None and text_ids >= self.config.max_text_tokens):
            out.finish_reason = "length"
        self.pending[b] = token

    def accept_first(self, picked: tuple[Sequence[int], Sequence[float]]) -> None:
        """The prefill's greedy tokens (`TokenPicker.tokens`), or BEGIN in their place with `start_with_pose`
        (flagged where they differ)."""
        begin = self.vocab.pose_begin_id
        for b, (token, logprob) in enumerate(zip(*picked)):
            if self.config.start_with_pose:
                self.results[b].forced_first_token = token != begin
                token, logprob = begin, logprob if token == begin else math.nan
            self.accept(b, token, logprob)

    def accept_running(self, picked: tuple[Sequence[int], Sequence[float]], running: Sequence[bool]) -> None:
        for b, (token, logprob) in enumerate(zip(*picked)):
            if running[b]:
                self.accept(b, token, logprob)

    def take_pose(self, b: int, codes: Tensor) -> None:
        """Row b ran its pose step with these codes [Q]: append the block; END is fed next, never predicted."""
        out = self.results[b]
        out.pose_codes.append(codes.clone())
        out.token_ids.extend(self.vocab.pose_token_ids(codes).tolist() + [self.vocab.pose_end_id])
        out.token_logprobs.extend([math.nan] * (len(codes) + 1))
        self.pending[b] = self.vocab.pose_end_id
        if self.config.stop_after_pose:
            out.finish_reason = "pose"
        elif len(out.token_ids) >= self.max_new_tokens:
            out.finish_reason = "length"

    def running(self) -> list[bool]:
        return [out.finish_reason is None for out in self.results]

    def posing(self) -> list[bool]:
        """Rows that emitted BEGIN and still run: their next call is the pose step."""
        return [out.finish_reason is None and token == self.vocab.pose_begin_id
                for out, token in zip(self.results, self.pending)]

    def next_tokens(self) -> list[int]:
        """The token each row feeds to the next decode step (padding for finished rows)."""
        return [token if out.finish_reason is None else self.vocab.pad_id
                for out, token in zip(self.results, self.pending)]


@torch.no_grad()
def pose_query_logits(model: LanguageModel, prompt: PromptRow, vocab: VocabLayout) -> Tensor:
    """The pose-query logits [Q, V] (float32) of one prompt: the prompt, BEGIN and the queries as one forward,
    exactly as `generate` computes a one-pass pose block. Called with a task's prompt without its condition, it
    gives what `pose_guidance` guides away from."""
    rows = _prompt_embeddings(model, [prompt], model.device)
    bucket = getattr(model, "prompt_length_bucket", None)
    length = int(rows[0].shape[0])
    prompt_embeds, lengths = left_pad(rows, bucket(length) if bucket is not None else None)
    cache = model.new_cache(1, prompt_embeds.shape[1] + 1 + vocab.num_pose_tokens)
    _, query_logits, _ = prefill_with_pose(model, cache, prompt_embeds, lengths, vocab)
    return query_logits[0].float()


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompts: Sequence[PromptRow],
    vocab: VocabLayout,
    config: GenerationConfig,
    *,
    max_context: int | None = None,
    pose_code_vectors: Tensor | None = None,
    on_stage: OnStage | None = None,
    sentence_end_ids: frozenset[int] = frozenset(),
    unconditional_query_logits: Tensor | None = None,
    choose_pose: ChoosePose | None = None,
) -> list[GenerationResult]:
    """Greedy generation for a batch of prompts (ids [L_b] or embeddings [L_b, C] per row), as `config` says.

    max_context: limit on prompt + config.max_new_tokens; default the model's max_position_embeddings.
    sentence_end_ids: the tokenizer's ids that end a sentence; with config.no_repeated_sentences no answer states
        a sentence twice (`ban_repeated_sentences`). Empty: no ban.
    pose_code_vectors: the codebook [K, D] for expected-code pose decoding (`pose_codes_from_logits`); None:
        argmax per query. (A property of the model, not of the call: the session passes its own.)
    on_stage: called as `with on_stage(name):` around each stage: "prefill", or "prefill_pose" for the one-pass
        forward, then one "pose_step" per separate pose step and one "decode" per decode step
        (`unipose_sdk.timing.StageTimer.stage` times and counts them); None: untimed.
    unconditional_query_logits: [Q, V], what `config.pose_guidance` guides away from (`pose_query_logits`
        of the task's prompt without its condition); required when the guidance is above 0, unused otherwise.
    choose_pose: keeps one of the candidate decodings of `config.pose_candidates` per row; required with them.
    """
    stage = on_stage if on_stage is not None else untimed
    device = model.device
    rows = _prompt_embeddings(model, prompts, device)
    bucket = getattr(model, "prompt_length_bucket", None)
    longest = max(int(row.shape[0]) for row in rows)
    prompt_embeds, lengths = left_pad(rows, bucket(longest) if bucket is not None else None)
    max_context = max_context if max_context is not None else model.config.max_position_embeddings
    max_new_tokens = config.max_new_tokens
    _check_lengths(lengths, max_new_tokens, max_context)

    batch, padded = len(rows), prompt_embeds.shape[1]
    cache = model.new_cache(batch, padded + max_new_tokens + vocab.num_pose_tokens)  # slack: see module docstring
    streams = AnswerStreams(batch, vocab, config)
    # Host copy of every row's next cache slot (no device sync needed): a call of T tokens writes slots up to
    # max(slots) + T, so attending that many slots instead of the whole cache skips the unwritten tail.
    slots = [padded] * batch
    # Without room for a whole block, a BEGIN ends the row: the appended rows would be computed for nothing.
    one_pass = config.one_pass and max_new_tokens >= streams.pose_block_ids
    picker = TokenPicker(config, vocab, pose_code_vectors, sentence_end_ids, unconditional_query_logits,
                         choose_pose)

    with stage("prefill_pose" if one_pass else "prefill"):
        if one_pass:
            logits, query_logits, state = prefill_with_pose(model, cache, prompt_embeds, lengths, vocab)
        else:
            logits, state = prefill(model, cache, prompt_embeds, lengths)
        streams.accept_first(picker.tokens(logits))
        if one_pass:
            keep = streams.posing()
            if any(keep):
                codes = picker.codes(query_logits)
                state.advance(torch.tensor(keep, device=device), 1 + vocab.num_pose_tokens)
                for b in (b for b in range(batch) if keep[b]):
                    streams.take_pose(b, codes[b])
                    slots[b] += 1 + vocab.num_pose_tokens
            # Rows that did not keep the block stay at slot P: their appended rows are scratch (module docstring).

    while True:
        if not any(streams.running()):
            return streams.results
        posing = streams.posing()
        if any(posing):
            # The rows that emitted BEGIN run their pose step; the others wait (they do not advance).
            with stage("pose_step"):
                query_logits = pose_step(model, cache, state, vocab, torch.tensor(posing, device=device),
                                         kv_length=max(slots) + 1 + vocab.num_pose_tokens)
                codes = picker.codes(query_logits)
                for b in (b for b in range(batch) if posing[b]):
                    streams.take_pose(b, codes[b])
                    slots[b] += 1 + vocab.num_pose_tokens
            if not any(streams.running()):
                return streams.results
        with stage("decode"):
            running = streams.running()
            tokens = torch.tensor(streams.next_tokens(), device=device)
            logits = decode_step(model, cache, state, tokens, torch.tensor(running, device=device),
                                 kv_length=max(slots) + 1)
            slots = [slot + 1 if running[b] else slot for b, slot in enumerate(slots)]
            # The one host synchronisation per token: the stop check needs the sampled ids.
            streams.accept_running(picker.tokens(logits, [out.token_ids for out in streams.results]), running)


# ---------------------------------------------------------------------------------------------------------------
# Conversations: one row whose KV cache is kept across calls


Key = Hashable  # what one cache slot holds: a token id, or a marker for an image slot / a pose query


class PrefixCache:
    """One conversation's KV cache, kept between calls: slot i holds the state of the token whose key is keys[i].

    A call hands `continue_generation` the keys of its whole prompt (the conversation so far plus the new turn);
    the longest prefix that the cache already holds is reused as it is, everything after it is computed again
    (and overwrites whatever the cache held there). The cache is the caller's own (`new_private_cache` where the
    model shares its cache between calls, as the torch runtime's FastLM does), grows in steps of `step` slots and
    never shrinks.
    """

    def __init__(self, model: LanguageModel, step: int = 256, max_length: int | None = None) -> None:
        """max_length: the most slots to allocate (the rounding to `step` stops there): exported decoders are
        built for a longest cache (the TensorRT profiles allow config.max_text_tokens + 160 keys)."""
        self.model = model
        self.step = step
        self.max_length = max_length
        self.cache: Any = None
        self.keys: list[Key] = []

    @property
    def capacity(self) -> int:
        return 0 if self.cache is None else int(self.cache.max_length)

    def clear(self) -> None:
        """Forget what the slots hold (the memory stays for the next conversation)."""
        self.keys = []

    def release(self) -> None:
        self.cache = None
        self.keys = []

    def reusable(self, keys: Sequence[Key]) -> int:
        """How many leading slots `keys` can reuse: the common prefix with what the cache holds, leaving at least
        the last key to compute (its logits choose the first new token)."""
        limit = min(len(self.keys), len(keys) - 1)
        common = 0
        while common < limit and self.keys[common] == keys[common]:
            common += 1
        return common

    def reserve(self, length: int) -> None:
        """Room for `length` slots; a larger cache takes over the slots already held."""
        if length <= self.capacity:
            return
        size = -(-length // self.step) * self.step
        if self.max_length is not None:
            size = max(length, min(size, self.max_length))
        make = getattr(self.model, "new_private_cache", None)
        cache = make(1, size) if make is not None else self.model.new_cache(1, size)
        held = len(self.keys)
        if self.cache is not None and held:
            for new, old in ((cache.k, self.cache.k), (cache.v, self.cache.v)):
                for layer in range(len(new)):
                    new[layer][:, :, :held] = old[layer][:, :, :held]
        self.cache = cache


@dataclass
class StreamEvent:
    """One step of `continue_generation`: an accepted text token ("token"), a finished pose block ("pose", its
    codes [Q]), or the end ("end", the row's result)."""

    kind: str
    token: int | None = None
    codes: Tensor | None = None
    result: GenerationResult | None = None


@torch.no_grad()
def extend(model: LanguageModel, cache: KVCache, state: DecodeState, embeds: Tensor) -> Tensor:
    """Feed T more tokens (embeds [B, T, C]) causally after what the cache holds: positions and slots continue
    from `state`. Returns the next-token logits [B, V] after the last one."""
    num_tokens = embeds.shape[1]
    zeros = torch.zeros_like(state.next_slot)
    mask = MixedMask(block_start=zeros, block_end=zeros, key_start=state.key_start, query_offset=state.next_slot)
    steps = torch.arange(num_tokens, device=state.next_slot.device)
    kv_length = int(state.next_slot.max().item()) + num_tokens
    # A turn's length never repeats: a compiling model runs it uncompiled rather than compile a graph per length.
    run = getattr(model, "eager", model)
    out = run(input_embeds=embeds, positions=state.next_position.unsqueeze(1) + steps, mask=mask, cache=cache,
                kv_length=kv_length, logits_positions=slice(-1, None))
    state.advance(torch.ones_like(state.next_slot, dtype=torch.bool), num_tokens)
    return out.logits[:, -1]


def continue_generation(
    model: LanguageModel,
    prefix: PrefixCache,
    keys: Sequence[Key],
    embed_from: Callable[[int], Tensor],
    vocab: VocabLayout,
    config: GenerationConfig,
    *,
    max_context: int,
    pose_code_vectors: Tensor | None = None,
    on_stage: OnStage | None = None,
    sentence_end_ids: frozenset[int] = frozenset(),
    unconditional_query_logits: Tensor | None = None,
    choose_pose: ChoosePose | None = None,
) -> Iterator[StreamEvent]:
    """Generate one answer for one row whose prompt's slots are `keys`, reusing the slots `prefix` holds.

    embed_from(start) returns the prompt's input embeddings [len(keys) - start, C] from slot `start` on (images
    spliced in); only those are computed. Yields each accepted text token and each pose block as it completes,
    then "end" with the GenerationResult (its `reused_tokens` says how many prompt slots came from the cache).
    The answer's tokens are those `generate` gives for the same prompt and config (greedy or under a seed); the
    cache's contents follow each step, so a caller that stops early leaves it consistent for the next call.
    unconditional_query_logits: as in `generate`, for `config.pose_guidance`.
    choose_pose: as in `generate`, for `config.pose_candidates`.
    """
    if len(keys) == 0:
        raise InvalidTextError.make("an empty prompt", "at least one token", "Start prompts with bos.")
    _check_lengths([len(keys)], config.max_new_tokens, max_context)
    stage = on_stage if on_stage is not None else untimed
    device = model.device
    num_queries = vocab.num_pose_tokens
    start = prefix.reusable(keys)
    prefix.keys = prefix.keys[:start]
    prefix.reserve(len(keys) + config.max_new_tokens + 1)
    cache = prefix.cache
    streams = AnswerStreams(1, vocab, config)
    picker = TokenPicker(config, vocab, pose_code_vectors, sentence_end_ids, unconditional_query_logits,
                         choose_pose)
    one = torch.zeros(1, dtype=torch.int32, device=device)
    state = DecodeState(key_start=one, next_slot=one + start, next_position=(one + start).to(torch.long))
    active = torch.ones(1, dtype=torch.bool, device=device)
    with stage("prefill"):
        embeds = embed_from(start).to(device)
        logits = extend(model, cache, state, embeds.unsqueeze(0))
        prefix.keys.extend(keys[start:])
        streams.accept_first(picker.tokens(logits))
    result = streams.results[0]
    result.prompt_tokens, result.reused_tokens = len(keys), start
    if result.token_ids:
        yield StreamEvent("token", token=result.token_ids[-1])
    while streams.running()[0]:
        if streams.posing()[0]:
            with stage("pose_step"):
                query_logits = pose_step(model, cache, state, vocab, active,
                                         kv_length=len(prefix.keys) + 1 + num_queries)
                codes = picker.codes(query_logits)[0]
                prefix.keys.extend([vocab.pose_begin_id, *(("pose_query", k) for k in range(num_queries))])
                streams.take_pose(0, codes)
            yield StreamEvent("pose", codes=codes)
            if not streams.running()[0]:
                break
        with stage("decode"):
            token = streams.next_tokens()[0]
            logits = decode_step(model, cache, state, torch.tensor([token], device=device), active,
                                 kv_length=len(prefix.keys) + 1)
            prefix.keys.append(token)
            before = len(result.token_ids)
            ids, logprobs = picker.tokens(logits, [streams.results[0].token_ids])
            streams.accept(0, ids[0], logprobs[0])
        if len(result.token_ids) > before:
            yield StreamEvent("token", token=result.token_ids[-1])
    yield StreamEvent("end", result=result)


# ---------------------------------------------------------------------------------------------------------------
# ChatPose: a pose regressed wherever an answer holds the pose token


@torch.no_grad()
def pose_params_at_pose_tokens(model: LanguageModel, prompt: Tensor, answer_ids: Sequence[int],
                               pose_token_id: int) -> Tensor:
    """ChatPose's pose decoding: the pose head's outputs [K, P] (float32) at the K positions whose NEXT input token
    is the pose token `[SEG]` (ChatPose's rule: the last layer's hidden state one step before the pose token, through
    the head), in answer order; [0, 0] when the answer holds none.

    prompt: the row's input embeddings [L, C] (images spliced in); answer_ids: the ids that followed it. One
    forward over the prompt and the answer up to its last pose token, on a fresh cache, with the head's outputs
    (`LMOutput.pose`) from the last prompt position on. Separate from the loop: any answer (greedy, sampled,
    streamed, or a pose token forced by the caller) is regressed the same way, and causal attention makes the
    states those of the decoding steps.
    """
    hits = [j for j, token in enumerate(answer_ids) if token == pose_token_id]
    if not hits:
        return prompt.new_zeros((0, 0), dtype=torch.float32)
    device = model.device
    prompt = prompt.to(device)
    length = int(prompt.shape[0])
    before = torch.tensor(list(answer_ids[: hits[-1]]), dtype=torch.long, device=device)
    feed = torch.cat([prompt, model.embed(before.unsqueeze(0))[0].to(prompt.dtype)]) if len(before) else prompt
    total = int(feed.shape[0])
    cache = model.new_cache(1, total)
    zeros = torch.zeros(1, dtype=torch.int32, device=device)
    out = model(input_embeds=feed.unsqueeze(0), positions=torch.arange(total, device=device).unsqueeze(0),
                mask=MixedMask(block_start=zeros, block_end=zeros, key_start=zeros, query_offset=zeros),
                cache=cache, kv_length=total, logits_positions=slice(length - 1, None))
    if out.pose is None:
        raise InvalidInputError.make(f"a pose token (id {pose_token_id}) for a language model without pose head "
                                     "outputs", "a ChatPose model whose calls return LMOutput.pose",
                                     "Run ChatPose on the eager torch backend or an export that has the head.")
    return out.pose[0, hits]  # row j of the call is the position whose next token is answer_ids[j]
