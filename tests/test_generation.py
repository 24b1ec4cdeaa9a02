"""Greedy generation with pose blocks, on a tiny random model whose next-token choices are programmed."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest
import torch

from unipose_sdk.errors import InvalidInputError, InvalidTextError
from unipose_sdk.generation import (
    GenerationConfig,
    generate,
    guided_query_logits,
    pose_codes_from_logits,
    pose_query_logits,
    prefill_with_pose,
)
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, VocabLayout
from unipose_sdk.models.llm import MistralLM

VOCAB = VocabLayout(text_vocab_size=64, codebook_size=32, num_pose_tokens=80)  # 180 ids; BEGIN 96, END 97
CONFIG = LLMConfig(
    vocab_size=VOCAB.vocab_size,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10_000.0,
    max_position_embeddings=256,
)
BEGIN, END, EOS, DOT = VOCAB.pose_begin_id, VOCAB.pose_end_id, VOCAB.eos_id, 13

# Next-token program: token -> the token the model emits after it (whatever came before).
PROGRAM = {
    7: BEGIN,  # "... description:" -> a pose
    END: DOT,  # after the pose block: "."
    DOT: EOS,  # then </s>
    20: 21,
    21: 7,  # 20 -> 21 -> 7 -> BEGIN: this row reaches its pose two steps later than a row ending in 7
    30: 31,
    31: 32,
    32: EOS,  # a text-only answer
    40: 41,
    41: 40,  # never stops by itself
    50: 51,
    51: 52,
    52: 53,
    53: 54,
    54: EOS,  # still decoding text when the late row runs its pose step
}
TEXT_TO_POSE = [1, 5, 6, 7]
LATE_POSE = [1, 8, 9, 10, 11, 12, 20]
TEXT_ONLY = [1, 30]
ENDLESS = [1, 40]
LONG_TEXT = [1, 50]


@pytest.fixture(scope="module")
def model() -> MistralLM:
    """Random weights (so attention over the context matters), plus one strong channel per programmed step.

    Transition t -> n gets its own hidden axis i: embed[t] += A e_i and lm_head[n] += A e_i. The residual
    stream at a token t is dominated by A e_i, so logit n wins by a wide margin. The pose queries are not
    programmed: their codes come from the random weights and depend on the whole context.
    """
    torch.manual_seed(0)
    lm = MistralLM(CONFIG).eval()
    strength = 20.0
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.1)
        embed, head = lm.model.embed_tokens.weight, lm.lm_head.weight
        for axis, (token, next_token) in enumerate(PROGRAM.items()):
            embed[token, axis] += strength
            head[next_token, axis] += strength
    return lm


@contextlib.contextmanager
def count_calls(lm: MistralLM) -> Iterator[list[int]]:
    """Yields a list that receives the number of new tokens T of every model forward inside the block."""
    lengths: list[int] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args and args[0] is not None else kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs["input_embeds"]
        lengths.append(int(tokens.shape[1]))

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield lengths
    finally:
        handle.remove()


def test_text_to_pose_is_one_prefill_one_pose_step_and_two_decode_steps(model: MistralLM) -> None:
    with count_calls(model) as calls:
        (result,) = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(100))
    assert calls == [len(TEXT_TO_POSE), 81, 1, 1]  # prefill, pose step, END -> ".", "." -> </s>

    ids = result.token_ids
    assert len(ids) == 84 and ids[0] == BEGIN and ids[81:] == [END, DOT, EOS]
    assert result.finish_reason == "eos"
    assert len(result.pose_codes) == 1
    codes = result.pose_codes[0]
    assert codes.shape == (80,) and codes.dtype == torch.long
    assert ids[1:81] == VOCAB.pose_token_ids(codes).tolist()
    assert all(VOCAB.is_pose_id(i) for i in ids[1:81])
    assert len(set(codes.tolist())) > 1  # the codes depend on the query position

    # The codes are the pose-range argmax of ONE dense masked forward over prompt + BEGIN + 80 queries.
    with torch.no_grad():
        prompt_len = len(TEXT_TO_POSE)
        sequence = torch.cat(
            [model.embed(torch.tensor([TEXT_TO_POSE + [BEGIN]])), model.embed_pose_queries(80).unsqueeze(0)], dim=1
        )
        block = MixedMask.from_lists([prompt_len + 1], [prompt_len + 81])
        logits = model(input_embeds=sequence, mask=block, logits_positions=slice(prompt_len + 1, None)).logits
    assert torch.equal(pose_codes_from_logits(logits, VOCAB)[0], codes)


def test_batch_with_different_prompt_lengths_equals_each_row_alone(model: MistralLM) -> None:
    prompts = [TEXT_TO_POSE, LATE_POSE, TEXT_ONLY, LONG_TEXT]
    with count_calls(model) as calls:
        batch = generate(model, prompts, VOCAB, GenerationConfig(90))
    # Row 0 runs its pose step right after prefill, row 1 two decode steps later; the other rows wait each time.
    assert calls == [len(LATE_POSE), 81, 1, 1, 81, 1, 1]

    for prompt, in_batch in zip(prompts, batch):
        (alone,) = generate(model, [prompt], VOCAB, GenerationConfig(90))
        assert in_batch.token_ids == alone.token_ids
        assert in_batch.finish_reason == alone.finish_reason
        assert len(in_batch.pose_codes) == len(alone.pose_codes)
        for a, b in zip(in_batch.pose_codes, alone.pose_codes):
            assert torch.equal(a, b)

    assert batch[1].token_ids[:3] == [21, 7, BEGIN] and batch[1].token_ids[-3:] == [END, DOT, EOS]
    assert batch[2].token_ids == [31, 32, EOS] and batch[2].pose_codes == []
    assert batch[3].token_ids == [51, 52, 53, 54, EOS]


def test_stops_at_max_new_tokens(model: MistralLM) -> None:
    with count_calls(model) as calls:
        (result,) = generate(model, [ENDLESS], VOCAB, GenerationConfig(5))
    assert result.token_ids == [41, 40, 41, 40, 41]
    assert result.finish_reason == "length"
    assert calls == [2, 1, 1, 1, 1]  # the last sampled token is never fed


def test_stops_at_eos(model: MistralLM) -> None:
    with count_calls(model) as calls:
        (result,) = generate(model, [TEXT_ONLY], VOCAB, GenerationConfig(50))
    assert result.token_ids == [31, 32, EOS]
    assert result.finish_reason == "eos"
    assert calls == [2, 1, 1]


def test_begin_without_room_for_the_pose_block_stops_the_row(model: MistralLM) -> None:
    with count_calls(model) as calls:
        (cut,) = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(81))
        (exact,) = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(82))
    assert cut.token_ids == [] and cut.pose_codes == [] and cut.finish_reason == "length"
    assert len(exact.token_ids) == 82 and exact.token_ids[-1] == END and exact.finish_reason == "length"
    assert calls == [4, 4, 81]  # no pose step for the cut row; no decode after the last END


def test_prompt_as_embeddings_equals_prompt_as_ids(model: MistralLM) -> None:
    with torch.no_grad():
        embeds = model.embed(torch.tensor(LATE_POSE))  # [L, C]: where a caller would splice image embeddings
    (from_ids,) = generate(model, [torch.tensor(LATE_POSE)], VOCAB, GenerationConfig(90))
    (from_embeds,) = generate(model, [embeds], VOCAB, GenerationConfig(90))
    assert from_ids.token_ids == from_embeds.token_ids


def test_pose_codes_take_the_argmax_over_codebook_ids_only() -> None:
    logits = torch.zeros(1, 2, VOCAB.vocab_size)
    logits[0, :, 5] = 100.0  # a text id wins the full-vocabulary argmax
    logits[0, :, BEGIN] = 90.0
    logits[0, 0, VOCAB.pose_id_offset + 3] = 1.0
    logits[0, 1, VOCAB.pose_id_offset + VOCAB.codebook_size - 1] = 1.0
    assert pose_codes_from_logits(logits, VOCAB).tolist() == [[3, VOCAB.codebook_size - 1]]


def test_expected_code_decoding_lands_between_the_codes_the_model_hesitates_over() -> None:
    # Codes on a line: code k sits at x = k. A query split evenly between codes 2 and 6 decodes to code 4 (the
    # expected vector), where the argmax would pick one end; a confident query keeps its argmax.
    book = torch.zeros(VOCAB.codebook_size, 2)
    book[:, 0] = torch.arange(VOCAB.codebook_size, dtype=torch.float32)
    logits = torch.full((1, 3, VOCAB.vocab_size), -30.0)
    logits[0, :, 5] = 50.0  # text ids never take part
    first = VOCAB.pose_id_offset
    logits[0, 0, first + 2] = logits[0, 0, first + 6] = 10.0
    logits[0, 1, first + 9] = 10.0
    logits[0, 2, first + 1] = 10.0
    logits[0, 2, first + 3] = 10.0 + torch.log(torch.tensor(3.0))  # weights 1:3 -> x = 2.5 -> code 2 or 3
    codes = pose_codes_from_logits(logits, VOCAB, book)
    assert codes[0, :2].tolist() == [4, 9]
    assert codes[0, 2].item() in (2, 3)
    assert pose_codes_from_logits(logits, VOCAB).tolist()[0][:2] in ([2, 9], [6, 9])
    # A codebook of one distinct vector per code and a confident model: both decodings agree.
    confident = torch.randn(2, 80, VOCAB.vocab_size) * 40
    assert torch.equal(pose_codes_from_logits(confident, VOCAB, torch.eye(VOCAB.codebook_size) * 100),
                       pose_codes_from_logits(confident, VOCAB))


def test_pose_code_temperature_moves_expected_code_decoding_towards_the_argmax() -> None:
    # Codes on a line (code k at x = k); a query weighing codes 2 and 6 as 1:3 lands at x = 5 at temperature 1,
    # nearer 6 as the temperature falls (weights 1:9 at 0.5 -> x = 5.6), and on the argmax as it nears 0.
    book = torch.zeros(VOCAB.codebook_size, 2)
    book[:, 0] = torch.arange(VOCAB.codebook_size, dtype=torch.float32)
    logits = torch.full((1, 1, VOCAB.vocab_size), -30.0)
    first = VOCAB.pose_id_offset
    logits[0, 0, first + 2] = 10.0
    logits[0, 0, first + 6] = 10.0 + torch.log(torch.tensor(3.0))
    assert pose_codes_from_logits(logits, VOCAB, book).item() == 5
    assert pose_codes_from_logits(logits, VOCAB, book, 1.0).item() == 5
    assert pose_codes_from_logits(logits, VOCAB, book, 0.5).item() == 6  # 5.6 rounds to the nearer code
    assert pose_codes_from_logits(logits, VOCAB, book, 0.05).item() == pose_codes_from_logits(logits, VOCAB).item()
    # Above 1 the spread widens: weights 1:sqrt(3) at 2 -> x = 4.5 -> code 4 or 5.
    assert pose_codes_from_logits(logits, VOCAB, book, 2.0).item() in (4, 5)


@pytest.mark.parametrize("value", [0, 0.01, -1, 11, float("nan"), float("inf"), True, "0.7", None])
def test_generation_config_refuses_a_pose_code_temperature_out_of_range(value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"pose_code_temperature={value!r}"):
        GenerationConfig(8, pose_code_temperature=value)  # type: ignore[arg-type]


def test_generate_decodes_pose_codes_at_the_configs_temperature(model: MistralLM,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import unipose_sdk.generation as generation

    book = torch.randn(VOCAB.codebook_size, 4, generator=torch.Generator().manual_seed(0))
    seen = []

    def recording(query_logits: torch.Tensor, vocab: VocabLayout, code_vectors: torch.Tensor | None = None,
                  temperature: float = 1.0) -> torch.Tensor:
        seen.append(temperature)
        return pose_codes_from_logits(query_logits, vocab, code_vectors, temperature)

    monkeypatch.setattr(generation, "pose_codes_from_logits", recording)
    cold = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90, pose_code_temperature=0.3),
                    pose_code_vectors=book)[0]
    plain = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90), pose_code_vectors=book)[0]
    assert seen == [0.3, 1.0]
    assert len(cold.pose_codes) == len(plain.pose_codes) == 1


@pytest.mark.parametrize("value", [-0.5, 10.5, float("nan"), float("inf"), True, "2", None])
def test_generation_config_refuses_a_pose_guidance_out_of_range(value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"pose_guidance={value!r}.*expected a number in"):
        GenerationConfig(8, pose_guidance=value)  # type: ignore[arg-type]


def test_guided_logits_amplify_what_the_condition_changes() -> None:
    cond = torch.tensor([[[1.0, 3.0, 0.0]]])
    uncond = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.equal(guided_query_logits(cond, uncond, 0.0), cond)
    # Code 0, which the prompt without a condition favours, falls behind: code 1's lead over it grows from 2 to 8.
    assert torch.equal(guided_query_logits(cond, uncond, 2.0), torch.tensor([[[-1.0, 7.0, 0.0]]]))
    assert guided_query_logits(cond.half(), uncond, 1.0).dtype == torch.float32  # half-precision logits too


def test_guided_generation_decodes_cond_plus_weight_times_the_difference(model: MistralLM) -> None:
    book = torch.randn(VOCAB.codebook_size, 4, generator=torch.Generator().manual_seed(0))
    unconditional = [1, 5, 6]  # the text-to-pose prompt without its last ids
    uncond = pose_query_logits(model, unconditional, VOCAB)
    assert uncond.shape == (80, VOCAB.vocab_size) and uncond.dtype == torch.float32
    # The unconditional logits are those a one-pass pose block gives that prompt inside `generate`.
    embeds = model.embed(torch.tensor([unconditional]))
    _, inside, _ = prefill_with_pose(model, model.new_cache(1, 3 + 81), embeds, [3], VOCAB)
    torch.testing.assert_close(uncond, inside[0].float())
    config = GenerationConfig(90, start_with_pose=True, stop_after_pose=True, one_pass=True)
    cond = prefill_with_pose(model, model.new_cache(1, 4 + 81), model.embed(torch.tensor([TEXT_TO_POSE])), [4],
                             VOCAB)[1]
    for weight in (0.5, 2.0):
        guided = generate(model, [TEXT_TO_POSE], VOCAB, dataclasses.replace(config, pose_guidance=weight),
                          pose_code_vectors=book, unconditional_query_logits=uncond)[0]
        want = pose_codes_from_logits(cond + weight * (cond - uncond), VOCAB, book)[0]
        assert torch.equal(guided.pose_codes[0], want)
    plain = generate(model, [TEXT_TO_POSE], VOCAB, config, pose_code_vectors=book)[0]
    assert torch.equal(plain.pose_codes[0], pose_codes_from_logits(cond, VOCAB, book)[0])
    # The step-by-step path (no one-pass block) guides its pose step the same way.
    stepwise = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90, pose_guidance=2.0),
                        pose_code_vectors=book, unconditional_query_logits=uncond)[0]
    assert torch.equal(stepwise.pose_codes[0], pose_codes_from_logits(cond + 2.0 * (cond - uncond), VOCAB, book)[0])


def test_guidance_without_the_unconditional_logits_is_refused(model: MistralLM) -> None:
    with pytest.raises(InvalidInputError, match="pose_guidance=1.5 without unconditional_query_logits"):
        generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90, pose_guidance=1.5))


def test_generate_uses_the_codebook_when_given(model: MistralLM) -> None:
    book = torch.randn(VOCAB.codebook_size, 4, generator=torch.Generator().manual_seed(0))
    plain = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90))[0]
    soft = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(90), pose_code_vectors=book)[0]
    assert len(soft.pose_codes) == len(plain.pose_codes) == 1
    assert int(soft.pose_codes[0].max()) < VOCAB.codebook_size
    assert len(soft.token_ids) == len(plain.token_ids)


def test_length_and_input_errors(model: MistralLM) -> None:
    with pytest.raises(InvalidTextError, match="max_new_tokens"):
        generate(model, [[1] * 200], VOCAB, GenerationConfig(57))  # 257 > 256 positions
    with pytest.raises(InvalidTextError, match="at most 100"):
        generate(model, [TEXT_ONLY], VOCAB, GenerationConfig(99), max_context=100)
    with pytest.raises(InvalidInputError, match="max_new_tokens=0"):
        generate(model, [TEXT_ONLY], VOCAB, GenerationConfig(0))
    with pytest.raises(InvalidTextError, match="empty prompt"):
        generate(model, [TEXT_ONLY, []], VOCAB, GenerationConfig(4))
    with pytest.raises(InvalidInputError, match="token ids"):
        generate(model, [torch.zeros(2, 3, 4)], VOCAB, GenerationConfig(4))
    with pytest.raises(InvalidInputError, match="at least one prompt"):
        generate(model, [], VOCAB, GenerationConfig(4))
    # Exactly at the limit is fine.
    (result,) = generate(model, [TEXT_ONLY], VOCAB, GenerationConfig(98), max_context=100)
    assert result.finish_reason == "eos"


def test_each_picked_id_carries_its_log_probability(model: MistralLM) -> None:
    """token_logprobs: the model's log-softmax at each id the loop picked (a teacher-forced forward gives the same
    numbers), NaN for the ids of a pose block and for a forced BEGIN."""
    text, pose = generate(model, [TEXT_ONLY, TEXT_TO_POSE], VOCAB, GenerationConfig(100))
    assert len(text.token_logprobs) == len(text.token_ids) and len(pose.token_logprobs) == len(pose.token_ids)
    with torch.no_grad():
        sequence = torch.tensor([TEXT_ONLY + text.token_ids])
        logits = model(input_ids=sequence, mask=MixedMask.causal(1)).logits[0]
    expected = logits.float().log_softmax(-1)[len(TEXT_ONLY) - 1:-1].gather(1, torch.tensor(text.token_ids)[:, None])
    torch.testing.assert_close(torch.tensor(text.token_logprobs), expected[:, 0], atol=1e-4, rtol=1e-4)
    assert all(lp <= 0 for lp in text.token_logprobs)
    assert pose.token_logprobs[0] <= 0  # BEGIN, picked
    assert all(torch.isnan(torch.tensor(pose.token_logprobs[1:82])))  # 80 codes and END: not picked one by one
    assert all(lp <= 0 for lp in pose.token_logprobs[82:])
    (forced,) = generate(model, [TEXT_ONLY], VOCAB, GenerationConfig(100, start_with_pose=True))
    assert forced.forced_first_token and torch.isnan(torch.tensor(forced.token_logprobs[0]))
