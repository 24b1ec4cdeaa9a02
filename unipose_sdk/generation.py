"""Greedy generation with UniPose pose blocks, as free functions over the model (gpt-fast style).

The loop decodes text greedily. When a row emits the pose BEGIN token, the next model call for that row is the
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

Only `prefill`, `decode_step` and `pose_step` touch the model; a Runtime can stand in for it later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError, InvalidTextError
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, VocabLayout
from unipose_sdk.models.llm import KVCache, LMOutput

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
        budget left is dropped rather than leaving a pose block cut short).
    """

    token_ids: list[int] = field(default_factory=list)
    pose_codes: list[Tensor] = field(default_factory=list)
    finish_reason: str | None = None
    # True when `first_token` forced an answer start that greedy decoding would not have chosen.
    forced_first_token: bool = False


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
def decode_step(model: LanguageModel, cache: KVCache, state: DecodeState, tokens: Tensor, active: Tensor) -> Tensor:
    """Feed one token per row (tokens [B]); rows with active[b] False compute but do not advance.

    Returns the next-token logits [B, V].
    """
    zeros = torch.zeros_like(state.next_slot)
    mask = MixedMask(block_start=zeros, block_end=zeros, key_start=state.key_start, query_offset=state.next_slot)
    out = model(tokens.unsqueeze(1), positions=state.next_position.unsqueeze(1), mask=mask, cache=cache)
    state.advance(active, 1)
    return out.logits[:, -1]


@torch.no_grad()
def pose_step(model: LanguageModel, cache: KVCache, state: DecodeState, vocab: VocabLayout, active: Tensor) -> Tensor:
    """Feed BEGIN + the learned pose queries as one (1 + Q)-token call, Q = vocab.num_pose_tokens.

    BEGIN is causal; the Q query positions form one bidirectional block. Only rows with active[b] True advance.
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
        logits_positions=slice(1, None),
    )
    state.advance(active, 1 + num_queries)
    return out.logits


def pose_codes_from_logits(query_logits: Tensor, vocab: VocabLayout) -> Tensor:
    """Logits at the pose-query positions [B, Q, V] -> codebook indices [B, Q] (int64).

    The argmax is taken over the codebook's ids only. The official decoding (greedy_search in
    posegpt_full_mask.py) takes the argmax over the whole vocabulary and then parses each id as
    `<pose_id_k>` to feed k to the VQ-VAE; any id outside the codebook range (text, BEGIN/END, the queries)
    breaks that step. Restricting the range gives the same codes whenever the official decoding succeeds, and
    a valid code instead of a failure otherwise.
    """
    first = vocab.pose_id_offset
    return query_logits[..., first : first + vocab.codebook_size].argmax(dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def left_pad(rows: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """Rows of embeddings [L_b, C] -> left-padded [B, P, C] (zeros before each row) and the lengths."""
    lengths = [int(row.shape[0]) for row in rows]
    padded = max(lengths)
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
    if max_new_tokens < 1:
        raise InvalidInputError.make(f"max_new_tokens={max_new_tokens}", "an integer >= 1", "Raise max_new_tokens.")
    longest = max(lengths)
    if longest + max_new_tokens > max_context:
        raise InvalidTextError.make(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} = {longest + max_new_tokens}",
            f"at most {max_context} tokens (the model's context)",
            f"Shorten the prompt or lower max_new_tokens to {max(0, max_context - longest)} or less.",
        )


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompts: Sequence[PromptRow],
    vocab: VocabLayout,
    max_new_tokens: int,
    *,
    max_context: int | None = None,
    first_token: int | None = None,
) -> list[GenerationResult]:
    """Greedy generation for a batch of prompts (ids [L_b] or embeddings [L_b, C] per row).

    max_new_tokens bounds each row's generated id stream (a pose block counts 82 ids: BEGIN, 80 codes, END).
    max_context: limit on prompt + max_new_tokens; default the model's max_position_embeddings.
    first_token: force every row's first generated token (BEGIN for the pose tasks, whose answer template starts
        with a pose); each result says whether greedy decoding would have chosen otherwise.
    """
    device = model.device
    rows = _prompt_embeddings(model, prompts, device)
    prompt_embeds, lengths = left_pad(rows)
    max_context = max_context if max_context is not None else model.config.max_position_embeddings
    _check_lengths(lengths, max_new_tokens, max_context)

    batch, padded = len(rows), prompt_embeds.shape[1]
    pose_block_ids = vocab.num_pose_tokens + 2  # BEGIN, the codes, END
    cache = model.new_cache(batch, padded + max_new_tokens + vocab.num_pose_tokens)  # slack: see module docstring
    results = [GenerationResult() for _ in range(batch)]
    pending = [vocab.pad_id] * batch  # the token each row feeds next

    def accept(b: int, token: int) -> None:
        """Append a sampled token to row b's stream, or finish the row."""
        out = results[b]
        if token == vocab.pose_begin_id and len(out.token_ids) + pose_block_ids > max_new_tokens:
            out.finish_reason = "length"
            return
        out.token_ids.append(token)
        if token == vocab.eos_id:
            out.finish_reason = "eos"
        elif len(out.token_ids) >= max_new_tokens:
            out.finish_reason = "length"
        pending[b] = token

    logits, state = prefill(model, cache, prompt_embeds, lengths)
    for b, token in enumerate(logits.argmax(dim=-1).tolist()):
        if first_token is not None:
            results[b].forced_first_token = token != first_token
            token = first_token
        accept(b, token)

    while True:
        running = [out.finish_reason is None for out in results]
        if not any(running):
            return results
        posing = [running[b] and pending[b] == vocab.pose_begin_id for b in range(batch)]
        if any(posing):
            # The rows that emitted BEGIN run their pose step; the others wait (they do not advance).
            query_logits = pose_step(model, cache, state, vocab, torch.tensor(posing, device=device))
            codes = pose_codes_from_logits(query_logits, vocab).cpu()
            for b in (b for b in range(batch) if posing[b]):
                out = results[b]
                out.pose_codes.append(codes[b].clone())
                out.token_ids.extend(vocab.pose_token_ids(codes[b]).tolist() + [vocab.pose_end_id])
                pending[b] = vocab.pose_end_id  # fed next, never predicted
                if len(out.token_ids) >= max_new_tokens:
                    out.finish_reason = "length"
            running = [out.finish_reason is None for out in results]
            if not any(running):
                return results
        tokens = torch.tensor([pending[b] if running[b] else vocab.pad_id for b in range(batch)], device=device)
        logits = decode_step(model, cache, state, tokens, torch.tensor(running, device=device))
        for b, token in enumerate(logits.argmax(dim=-1).tolist()):
            if running[b]:
                accept(b, token)
