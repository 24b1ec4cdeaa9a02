"""The fused model (`MistralLM.fuse()`, the attention router, the per-call plan) computes what the unfused model
computes with the reference attention: per call kind (decode step, left-padded prefill, pose step at per-row
offsets, one-pass prefill + pose block), packed and unpacked weights, every attention route; greedy tokens equal
the reference-2 path (unfused model, dense masked SDPA); the fused copies follow the parameters; a decode step
issues no dtype casts and no fused-attention call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.profiler import profile
from unipose_sdk.kernels import ops

import unipose_sdk.models.attention as attention
import unipose_sdk.models.llm as llm_module
from unipose_sdk.generation import GenerationConfig, generate
from unipose_sdk.models.attention import resolve_attention_impl, use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, VocabLayout
from unipose_sdk.models.llm import KVCache, MistralLM, RMSNorm, rope_cos_sin
from unipose_sdk.runtime.torch_lm import FastLM

VOCAB = VocabLayout(text_vocab_size=64, codebook_size=32, num_pose_tokens=80)
# Grouped-query attention with two KV heads and batches of two exercise the bias and head grouping paths.
CONFIG = LLMConfig(vocab_size=VOCAB.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
                   max_position_embeddings=512)
ATOL = 2e-5  # float32 logits of order 1: summation order differs (matmul layout, attention), nothing else


@pytest.fixture(scope="module")
def model() -> MistralLM:
    """The unfused reference (never fused: tests fuse copies)."""
    torch.manual_seed(0)
    lm = MistralLM(CONFIG).eval()
    with torch.no_grad():
        for name, param in lm.named_parameters():
            param.normal_(1.0, 0.1) if name.endswith("norm.weight") else param.normal_(0.0, 0.2)
    return lm


def fused_copy(model: MistralLM, pack: bool | None = None) -> MistralLM:
    return copy.deepcopy(model).fuse(pack)


def run_both(reference: MistralLM, fused: MistralLM, calls: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the same call sequence on two caches: the unfused model with the reference attention, and `fused` with
    the default route. Returns the logits pairs."""
    batch = calls[0]["positions"].shape[0]
    reference_cache, fused_cache = reference.new_cache(batch, 256), fused.new_cache(batch, 256)
    pairs = []
    with torch.no_grad():
        for call in calls:
            with use_attention_impl("sdpa_dense"):
                expected = reference(**call, cache=reference_cache).logits
            pairs.append((expected, fused(**call, cache=fused_cache).logits))
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
def test_fused_model_matches_the_reference_call_by_call(model: MistralLM, pack: bool) -> None:
    fused = fused_copy(model, pack)
    assert fused.is_fused is pack
    for expected, got in run_both(model, fused, padded_prefill_then_steps()):
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_batch_one_without_padding_attends_without_a_mask_and_matches(model: MistralLM) -> None:
    """Nothing masked in the attended slots: decode steps pass no mask to SDPA (decided on the host)."""
    zero = torch.zeros(1, dtype=torch.int32)
    calls = [dict(input_ids=torch.randint(0, CONFIG.vocab_size, (1, 7)), positions=torch.arange(7).unsqueeze(0),
                  mask=MixedMask(zero, zero, zero, zero), kv_length=7)]
    for slot in (7, 8):
        calls.append(dict(input_ids=torch.tensor([[slot]]), positions=torch.tensor([[slot]]), kv_length=slot + 1,
                          mask=MixedMask(zero, zero, zero, zero + slot)))
    fused = fused_copy(model)
    for expected, got in run_both(model, fused, calls):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    cache = fused.new_cache(1, 16)
    with torch.no_grad():
        fused(**calls[0], cache=cache)
        with profile() as prof:
            fused(**calls[1], cache=cache)
    names = {event.name for event in prof.events()}
    assert "aten::scaled_dot_product_attention" in names and "aten::masked_fill_" not in names


def test_unfused_model_with_the_default_route_matches_the_reference(model: MistralLM) -> None:
    for expected, got in run_both(model, model, padded_prefill_then_steps()):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_device_side_mask_path_matches(model: MistralLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU the mask is never read on the host (no device sync): run that path here by pretending."""
    monkeypatch.setattr(llm_module, "mask_on_host", lambda mask: None)
    for expected, got in run_both(model, fused_copy(model), padded_prefill_then_steps()):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_the_router_decides_by_device_and_call_size(monkeypatch: pytest.MonkeyPatch) -> None:
    long_cpu = "fused" if ops.cpu_extension_built() else "sdpa"
    assert resolve_attention_impl("cpu", 1, 4096) == "sdpa"  # a decode step, however long the cache
    assert resolve_attention_impl("cpu", 110, 110) == "sdpa"  # the tiny model's one-pass prefill + pose block
    assert resolve_attention_impl("cpu", 301, 300) == long_cpu
    assert resolve_attention_impl("cuda", 1000, 1000) == ("fused" if ops.FUSED_IS_CUDA_DEFAULT else "sdpa")
    with use_attention_impl("sdpa_dense"):
        assert resolve_attention_impl("cpu", 1, 10) == "sdpa_dense"
    monkeypatch.setattr(attention, "SDPA_MAX_SCORES", 0)
    assert resolve_attention_impl("cpu", 2, 2) == long_cpu and resolve_attention_impl("cpu", 1, 2) == "sdpa"


def test_long_multi_token_calls_take_the_fused_kernel_and_still_match(model: MistralLM,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not ops.cpu_extension_built():
        pytest.skip("the C++ kernel is not built: long calls take SDPA")
    calls = padded_prefill_then_steps()
    monkeypatch.setattr(attention, "SDPA_MAX_SCORES", 0)  # every multi-token call above the SDPA limit
    fused = fused_copy(model)
    with profile() as prof:
        pairs = run_both(model, fused, calls)
    assert any(event.name == "unipose::mixed_attention" for event in prof.events())
    for expected, got in pairs:
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_one_token_query_without_any_key_gives_the_reference_zeros(model: MistralLM) -> None:
    """key_start past the query slot: the reference attends nothing (output 0); the bias path must not give NaN."""
    zeros = torch.zeros(2, dtype=torch.int32)
    call = dict(input_ids=torch.tensor([[3], [4]]), positions=torch.tensor([[0], [4]]), kv_length=6,
                mask=MixedMask(zeros, zeros, torch.tensor([5, 0], dtype=torch.int32),
                               torch.tensor([4, 4], dtype=torch.int32)))
    ((expected, got),) = run_both(model, fused_copy(model), [call])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_calls_without_a_cache_match_and_keys_are_the_calls_tokens(model: MistralLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9))
    block = MixedMask.from_lists([3, 4], [7, 9])
    with torch.no_grad(), use_attention_impl("sdpa_dense"):
        expected = model(ids, mask=block).logits
    with torch.no_grad():
        torch.testing.assert_close(fused_copy(model)(ids, mask=block).logits, expected, atol=ATOL, rtol=1e-5)


def test_rope_table_and_folded_norm_are_the_plain_models_values(model: MistralLM) -> None:
    fused = fused_copy(model)
    positions = torch.tensor([[0, 1, 7, 300, 511]])
    cos, sin = rope_cos_sin(positions, CONFIG.head_dim, CONFIG.rope_theta, torch.float32)
    rows = fused.rope_table(512)[positions[0]]
    dim, half = CONFIG.head_dim, CONFIG.head_dim // 2
    assert torch.equal(rows[:, :dim], cos[0])
    assert torch.equal(rows[:, dim + half :], sin[0, :, half:])
    assert torch.equal(rows[:, dim : dim + half], -sin[0, :, :half])
    x = torch.randn(5, CONFIG.hidden_size) * 3
    norm: RMSNorm = fused.model.layers[0].input_layernorm
    assert norm.folded_constants is not None
    with torch.no_grad():
        assert torch.equal(norm(x, True) * norm.weight, norm(x))  # folded: the weight lives in the packed matmul
    assert fused.rope_table(2048).shape[0] == 2048  # grows for caches longer than the configured context
    assert fused.rope_table(10).shape[0] == 2048  # and is kept


def test_fuse_keeps_the_state_dict_and_unfuse_is_the_reference_again(model: MistralLM) -> None:
    fused = fused_copy(model)
    assert fused.state_dict().keys() == model.state_dict().keys()
    ids = torch.randint(0, CONFIG.vocab_size, (1, 6))
    with torch.no_grad():
        assert not torch.equal(fused(ids).logits, model(ids).logits)  # summation order differs
        assert torch.equal(fused.unfuse()(ids).logits, model(ids).logits)
    assert not fused.is_fused


def test_greedy_tokens_equal_reference_two_for_text_pose_and_one_pass_fallback(model: MistralLM) -> None:
    prompts = [[1, 5, 6, 7, 9, 11], [1, 30, 31], [1, 8, 9, 20, 4, 4, 4, 4]]
    for config in (GenerationConfig(100, one_pass=False), GenerationConfig(100, one_pass=True),
                   GenerationConfig(100, start_with_pose=True, one_pass=True)):
        with use_attention_impl("sdpa_dense"):
            reference = generate(model, prompts, VOCAB, config)
        for pack in (True, False):
            results = generate(FastLM(copy.deepcopy(model), pack=pack), prompts, VOCAB, config)
            for got, want in zip(results, reference):
                assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
                assert [c.tolist() for c in got.pose_codes] == [c.tolist() for c in want.pose_codes]


def test_fused_copies_follow_the_parameters() -> None:
    lm = MistralLM(CONFIG).eval()
    fast = FastLM(lm)
    prompt = [[1, 5, 6, 7]]
    generate(fast, prompt, VOCAB, GenerationConfig(4))
    packed_qkv = lm.model.layers[0].self_attn.fused_qkv
    generate(fast, prompt, VOCAB, GenerationConfig(4))
    assert lm.model.layers[0].self_attn.fused_qkv is packed_qkv  # unchanged weights: not rebuilt
    reference = MistralLM(CONFIG).eval()

    def check_against_reference() -> None:
        with use_attention_impl("sdpa_dense"):
            expected = generate(reference, prompt, VOCAB, GenerationConfig(8, one_pass=False))
        assert generate(fast, prompt, VOCAB, GenerationConfig(8))[0].token_ids == expected[0].token_ids
        assert lm.is_fused and lm.model.layers[0].self_attn.fused_qkv is not packed_qkv

    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0.0, 0.3)
    lm.load_state_dict(reference.state_dict())  # in-place copies: the copies are dropped at once
    assert not lm.is_fused
    check_against_reference()
    packed_qkv = lm.model.layers[0].self_attn.fused_qkv
    with torch.no_grad():  # edited in place: caught by the version counters at the next generation
        for model in (lm, reference):
            model.model.layers[1].mlp.up_proj.weight.mul_(-1.5)
    check_against_reference()
    packed_qkv = lm.model.layers[0].self_attn.fused_qkv
    lm.load_state_dict(reference.state_dict(), assign=True)  # replaced tensors
    check_against_reference()
    lm.to(torch.float64)  # moved or cast: dropped, rebuilt in the new dtype
    assert not lm.is_fused
    reference.to(torch.float64)
    packed_qkv = lm.model.layers[0].self_attn.fused_qkv
    check_against_reference()
    assert lm.model.layers[0].self_attn.fused_qkv.dtype == torch.float64


def test_loading_a_parent_state_dict_drops_the_copies(model: MistralLM) -> None:
    parent = torch.nn.ModuleDict({"llm": fused_copy(model)})
    parent.load_state_dict(parent.state_dict())
    assert not parent["llm"].is_fused


def test_calls_with_gradients_run_the_parameters(model: MistralLM) -> None:
    fused = fused_copy(model)
    call = padded_prefill_then_steps()[0]
    with torch.enable_grad():  # training-style call: the fused copies are detached
        out = fused(**call, cache=fused.new_cache(2, 64))
    assert out.logits.requires_grad
    with torch.no_grad():
        hidden = fused(**call, cache=fused.new_cache(2, 64), return_hidden=True).hidden
        expected = model(**call, cache=model.new_cache(2, 64), return_hidden=True).hidden
    torch.testing.assert_close(hidden, expected, atol=ATOL, rtol=1e-5)  # the final norm with its weight


def test_model_built_on_the_meta_device_runs_once_loaded(model: MistralLM) -> None:
    with torch.device("meta"):
        lm = MistralLM(CONFIG)
    lm.load_state_dict(model.state_dict(), assign=True)
    ids = torch.randint(0, CONFIG.vocab_size, (1, 5))
    with torch.no_grad():
        assert torch.equal(lm.eval()(ids).logits, model(ids).logits)


@pytest.mark.parametrize("same_offset", [True, False])
@pytest.mark.parametrize("num_tokens", [1, 3])
def test_cache_writes_agree_in_place_and_out_of_place(same_offset: bool, num_tokens: int) -> None:
    """The copy (one offset known on the host), the scatter, and the out-of-place cache of export."""
    batch, heads, slots, dim = 2, 2, 8, 4
    offsets = torch.tensor([3, 3] if same_offset else [1, 4], dtype=torch.int32)
    new = torch.randn(batch * num_tokens, heads, dim)
    expected = torch.zeros(batch, heads, slots, dim)
    for b in range(batch):
        for t in range(num_tokens):
            expected[b, :, int(offsets[b]) + t] = new[b * num_tokens + t]
    for host in (offsets.tolist(), None):
        cache = KVCache.from_tensors([torch.zeros(batch, heads, slots, dim)], [torch.zeros(batch, heads, slots, dim)])
        write = cache.writer(offsets, num_tokens, None, host)
        with profile() as prof:
            k, v = write(0, new, new)
        scattered = any(event.name == "aten::scatter_" for event in prof.events())
        assert scattered is not (host is not None and same_offset)
        assert torch.equal(k, expected) and k is cache.k[0] and torch.equal(v, expected)
        k, _ = cache.writer(offsets, num_tokens, 7, host)(0, new, new)  # kv_length: the first 7 slots
        assert torch.equal(k, expected[:, :, :7])
        inputs = [torch.zeros(batch, heads, slots, dim)]
        functional = KVCache.from_tensors(inputs, inputs, in_place=False)
        k, _ = functional.writer(offsets, num_tokens, None, host)(0, new, new)
        assert torch.equal(k, expected) and functional.k[0] is k and not inputs[0].any()


def test_decode_step_has_no_casts_and_no_fused_attention_call(model: MistralLM) -> None:
    fused = fused_copy(model)
    calls = padded_prefill_then_steps()
    cache = fused.new_cache(2, 256)
    with torch.no_grad():
        fused(**calls[0], cache=cache)
        with profile() as prof:
            fused(**calls[1], cache=cache)
    names = [event.name for event in prof.events() if event.cpu_parent is None]
    assert not {"aten::to", "aten::_to_copy", "unipose::mixed_attention", "aten::cos"} & set(names)
    # ~45 ops per layer (6 per RMSNorm, 4 matmuls, attention, cache writes, views) plus a few per call
    assert len(names) <= 60 * CONFIG.num_hidden_layers + 30, names


def test_embedded_tiny_model_decodes_the_reference_tokens() -> None:
    from unipose_sdk.options import BaseOptions
    from unipose_sdk.session import UniPose
    from unipose_sdk.text.prompts import Task

    session = UniPose.load(BaseOptions(device="cpu", compile=False))
    vocab = session.config.vocab
    raw = copy.deepcopy(session.runtime.llm.llm).unfuse()
    rows = session.embed_rows([session.prompts.build_task(Task.TEXT_TO_POSE, caption="a person squatting")], None)
    with torch.inference_mode():
        with use_attention_impl("sdpa_dense"):
            reference = generate(raw, rows, vocab, GenerationConfig(32, one_pass=False))
            reference_pose = generate(raw, rows, vocab, GenerationConfig(100, start_with_pose=True, one_pass=False))
        fast = FastLM(copy.deepcopy(raw))
        assert fast.llm.is_fused  # the tiny model's weights are small enough to pack on the CPU
        assert generate(fast, rows, vocab, GenerationConfig(32))[0].token_ids == reference[0].token_ids
        got = generate(fast, rows, vocab, GenerationConfig(100, start_with_pose=True, one_pass=True))[0]
    assert got.token_ids == reference_pose[0].token_ids
    assert np.array_equal(got.pose_codes[0].numpy(), reference_pose[0].pose_codes[0].numpy())
