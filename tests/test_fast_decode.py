"""FastLM's lean eager forward computes what the plain MistralLM computes: per call kind (decode step, left-padded
prefill, pose step at per-row offsets, one-pass prefill + pose block), packed and unpacked weights, both attention
paths of multi-token calls; greedy tokens equal the reference-2 path (plain model, dense masked SDPA); the weights
it copies follow the model's; a decode step issues no dtype casts and no fused-attention call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import profile

import unipose_sdk.runtime.compiled as compiled
from unipose_sdk.generation import generate
from unipose_sdk.models.attention import use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, VocabLayout
from unipose_sdk.models.llm import MistralLM, RMSNorm, rope_cos_sin
from unipose_sdk.runtime.compiled import FastLM

VOCAB = VocabLayout(text_vocab_size=64, codebook_size=32, num_pose_tokens=80)
# Grouped-query attention with two KV heads and batches of two exercise the bias and head grouping paths.
CONFIG = LLMConfig(vocab_size=VOCAB.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
                   max_position_embeddings=512)
ATOL = 2e-5  # float32 logits of order 1: summation order differs (matmul layout, attention), nothing else


@pytest.fixture(scope="module")
def model() -> MistralLM:
    torch.manual_seed(0)
    lm = MistralLM(CONFIG).eval()
    with torch.no_grad():
        for name, param in lm.named_parameters():
            param.normal_(1.0, 0.1) if name.endswith("norm.weight") else param.normal_(0.0, 0.2)
    return lm


def run_both(model: MistralLM, fast: FastLM, calls: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the same call sequence on two caches (plain model, FastLM); return the logits pairs."""
    batch = calls[0]["positions"].shape[0]
    plain_cache, fast_cache = model.new_cache(batch, 256), fast.new_cache(batch, 256)
    pairs = []
    with torch.no_grad():
        for call in calls:
            pairs.append((model(**call, cache=plain_cache).logits, fast(**call, cache=fast_cache).logits))
    return pairs


def padded_prefill_then_steps() -> list[dict]:
    """Row 0: 3 pad slots then 9 tokens; row 1: 12 tokens. Prefill (its pad queries see no key: zero attention);
    a decode step; a pose step with the rows at
    different slots (row 1 waited one step: the scatter path); decode steps at different slots, the last one over
    the whole cache (kv_length None). RoPE positions are slot - key_start throughout."""
    key_start = torch.tensor([3, 0], dtype=torch.int32)
    zeros = torch.zeros(2, dtype=torch.int32)

    def offsets(*slots: int) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.int32)

    def positions(slot: torch.Tensor, count: int = 1) -> torch.Tensor:
        return (slot - key_start).long().unsqueeze(1) + torch.arange(count)

    calls = [dict(input_embeds=torch.randn(2, 12, CONFIG.hidden_size),
                  positions=positions(offsets(0, 0), 12).clamp(min=0),
                  mask=MixedMask(zeros, zeros, key_start, zeros), kv_length=12)]  # logits everywhere, pads too
    calls.append(dict(input_ids=torch.tensor([[5], [6]]), positions=positions(offsets(12, 12)), kv_length=13,
                      mask=MixedMask(zeros, zeros, key_start, offsets(12, 12))))
    slot = offsets(13, 12)
    calls.append(dict(input_embeds=torch.randn(2, 81, CONFIG.hidden_size), positions=positions(slot, 81),
                      mask=MixedMask(slot + 1, slot + 81, key_start, slot), kv_length=13 + 81,
                      logits_positions=slice(1, None)))
    for step, slot in enumerate((offsets(94, 93), offsets(95, 94))):
        calls.append(dict(input_ids=torch.tensor([[7 + step], [9]]), positions=positions(slot),
                          mask=MixedMask(zeros, zeros, key_start, slot), kv_length=None if step else 95))
    return calls


@pytest.mark.parametrize("pack", [True, False])
def test_lean_forward_matches_the_plain_model_call_by_call(model: MistralLM, pack: bool) -> None:
    fast = FastLM(model, pack=pack)
    for plain, lean in run_both(model, fast, padded_prefill_then_steps()):
        assert lean.shape == plain.shape and lean.dtype == torch.float32
        torch.testing.assert_close(lean, plain, atol=ATOL, rtol=1e-5)
    assert fast.lean_forward().packed is pack


def test_device_side_mask_path_matches(model: MistralLM) -> None:
    """Off the CPU the mask is never read on the host (no device sync): run that path here by pretending."""
    fast = FastLM(model, pack=False)
    fast.lean_forward().on_cpu = False
    for plain, lean in run_both(model, fast, padded_prefill_then_steps()):
        torch.testing.assert_close(lean, plain, atol=ATOL, rtol=1e-5)


def test_long_multi_token_calls_take_the_fused_kernel_and_still_match(model: MistralLM,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = padded_prefill_then_steps()
    reference = run_both(model, FastLM(model), calls)
    monkeypatch.setattr(compiled, "SDPA_MAX_SCORES", 0)  # every multi-token call above the SDPA limit
    for (plain, _), (_, fused) in zip(reference, run_both(model, FastLM(model), calls)):
        torch.testing.assert_close(fused, plain, atol=ATOL, rtol=1e-5)


def test_one_token_query_without_any_key_gives_the_reference_zeros(model: MistralLM) -> None:
    """key_start past the query slot: the reference attends nothing (output 0); the bias path must not give NaN."""
    fast = FastLM(model)
    zeros = torch.zeros(2, dtype=torch.int32)
    call = dict(input_ids=torch.tensor([[3], [4]]), positions=torch.tensor([[0], [4]]), kv_length=6,
                mask=MixedMask(zeros, zeros, torch.tensor([5, 0], dtype=torch.int32),
                               torch.tensor([4, 4], dtype=torch.int32)))
    ((plain, lean),) = run_both(model, fast, [call])
    assert torch.isfinite(lean).all()
    torch.testing.assert_close(lean, plain, atol=ATOL, rtol=1e-5)


def test_rope_table_and_norm_are_the_plain_models_values(model: MistralLM) -> None:
    lean = FastLM(model).lean_forward()
    positions = torch.tensor([[0, 1, 7, 300, 511]])
    cos, sin = rope_cos_sin(positions, CONFIG.head_dim, CONFIG.rope_theta, torch.float32)
    rows = lean.rope_table[positions[0]]
    half = CONFIG.head_dim // 2
    assert torch.equal(rows[:, : CONFIG.head_dim], cos[0])
    assert torch.equal(rows[:, CONFIG.head_dim + half :], sin[0, :, half:])
    assert torch.equal(rows[:, CONFIG.head_dim : CONFIG.head_dim + half], -sin[0, :, :half])
    x = torch.randn(5, CONFIG.hidden_size) * 3
    norm: RMSNorm = model.model.layers[0].input_layernorm
    unfolded = FastLM(model, pack=False).lean_forward()
    assert lean.folded and not unfolded.folded
    with torch.no_grad():
        assert torch.equal(unfolded._norm(x, norm), norm(x))
        assert torch.equal(lean._norm(x, norm) * norm.weight, norm(x))  # the weight lives in the packed matmul
    lean.ensure_positions(2048)  # grows for caches longer than the configured context
    assert lean.rope_table.shape[0] == 2048 and lean.key_ids.shape[0] == 2048


def test_greedy_tokens_equal_reference_two_for_text_pose_and_one_pass_fallback(model: MistralLM) -> None:
    prompts = [[1, 5, 6, 7, 9, 11], [1, 30, 31], [1, 8, 9, 20, 4, 4, 4, 4]]
    for options in (dict(one_pass=False), dict(one_pass=True), dict(first_token=VOCAB.pose_begin_id)):
        with use_attention_impl("sdpa_dense"):
            reference = generate(model, prompts, VOCAB, 100, **options)
        for pack in (True, False):
            results = generate(FastLM(model, pack=pack), prompts, VOCAB, 100, **options)
            for got, want in zip(results, reference):
                assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
                assert [c.tolist() for c in got.pose_codes] == [c.tolist() for c in want.pose_codes]


def test_copied_weights_follow_the_model() -> None:
    lm = MistralLM(CONFIG).eval()
    fast = FastLM(lm)
    prompt = [[1, 5, 6, 7]]
    generate(fast, prompt, VOCAB, 4)
    built = fast.lean_forward()
    assert fast.lean_forward() is built  # unchanged weights: not rebuilt
    other = MistralLM(CONFIG).eval()
    with torch.no_grad():
        for param in other.parameters():
            param.normal_(0.0, 0.3)
    lm.load_state_dict(other.state_dict())  # in-place copies: the packed copies are stale now
    with use_attention_impl("sdpa_dense"):
        reference = generate(lm, prompt, VOCAB, 8, one_pass=False)
    assert generate(fast, prompt, VOCAB, 8)[0].token_ids == reference[0].token_ids
    assert fast.lean_forward() is not built
    lm.load_state_dict(MistralLM(CONFIG).state_dict(), assign=True)  # replaced tensors
    with use_attention_impl("sdpa_dense"):
        reference = generate(lm, prompt, VOCAB, 8, one_pass=False)
    assert generate(fast, prompt, VOCAB, 8)[0].token_ids == reference[0].token_ids


def test_calls_outside_the_lean_path_run_the_plain_model(model: MistralLM) -> None:
    fast = FastLM(model)
    call = padded_prefill_then_steps()[0]
    with torch.enable_grad():  # training-style call: the lean forward's weights are detached
        out = fast(**call, cache=fast.new_cache(2, 64))
    assert out.logits.requires_grad
    with torch.no_grad():
        hidden = fast(**call, cache=fast.new_cache(2, 64), return_hidden=True).hidden
    assert hidden is not None and hidden.shape == (2, 12, CONFIG.hidden_size)


def test_decode_step_has_no_casts_and_no_fused_attention_call(model: MistralLM) -> None:
    fast = FastLM(model)
    calls = padded_prefill_then_steps()
    cache = fast.new_cache(2, 256)
    with torch.no_grad():
        fast(**calls[0], cache=cache)
        with profile() as prof:
            fast(**calls[1], cache=cache)
    names = [event.name for event in prof.events() if event.cpu_parent is None]
    assert not {"aten::to", "aten::_to_copy", "unipose::mixed_attention", "aten::cos"} & set(names)
    # ~45 ops per layer (6 per RMSNorm, 4 matmuls, attention, cache writes, views) plus a few per call
    assert len(names) <= 60 * CONFIG.num_hidden_layers + 30, names


def test_embedded_tiny_model_decodes_the_reference_tokens() -> None:
    from unipose_sdk.options import BaseOptions
    from unipose_sdk.session import UniPose
    from unipose_sdk.text.prompts import Task

    session = UniPose.load(BaseOptions(device="cpu", compile=False))
    raw, vocab = session.runtime.llm.llm, session.config.vocab
    rows = session.embed_rows([session.prompts.build_task(Task.TEXT_TO_POSE, caption="a person squatting")], None)
    with torch.inference_mode():
        with use_attention_impl("sdpa_dense"):
            reference = generate(raw, rows, vocab, 32, one_pass=False)
            reference_pose = generate(raw, rows, vocab, 100, first_token=vocab.pose_begin_id, one_pass=False)
        fast = FastLM(raw)
        assert fast.lean_forward().packed  # the tiny model's weights are small enough to pack on the CPU
        assert generate(fast, rows, vocab, 32)[0].token_ids == reference[0].token_ids
        got = generate(fast, rows, vocab, 100, first_token=vocab.pose_begin_id)[0]
    assert got.token_ids == reference_pose[0].token_ids
    assert np.array_equal(got.pose_codes[0].numpy(), reference_pose[0].pose_codes[0].numpy())
