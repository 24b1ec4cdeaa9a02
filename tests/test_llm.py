"""MistralLM: HF key names and RoPE convention, cache consistency, left padding, the pose step, 7B size."""

from __future__ import annotations

import pytest
import torch

from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, get_preset
from unipose_sdk.models.llm import KVCache, MistralLM

TINY = LLMConfig(
    vocab_size=180,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10_000.0,
    max_position_embeddings=512,
)
NUM_QUERIES = 80


def tiny_model(seed: int = 0) -> MistralLM:
    torch.manual_seed(seed)
    model = MistralLM(TINY).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, norm
                param.copy_(1.0 + 0.1 * torch.randn_like(param))  # non-trivial norm scales catch a missed weight
            else:
                param.normal_(0.0, 0.1)
    return model


def causal_prefill_mask(lengths: list[int], padded: int) -> MixedMask:
    """Left-padded prompts written from slot 0: row b's real tokens start at slot padded - lengths[b]."""
    zeros = [0] * len(lengths)
    return MixedMask.from_lists(zeros, zeros, key_start=[padded - n for n in lengths], query_offset=zeros)


def real_positions(lengths: list[int], padded: int) -> torch.Tensor:
    """RoPE position of a real token = its index among the row's real tokens (pads clamp to 0)."""
    slots = torch.arange(padded).unsqueeze(0)
    return (slots - torch.tensor([padded - n for n in lengths]).unsqueeze(1)).clamp(min=0)


@torch.no_grad()
def test_matches_transformers_mistral_with_same_weights() -> None:
    transformers = pytest.importorskip("transformers")
    model = tiny_model()
    hf_config = transformers.MistralConfig(
        vocab_size=TINY.vocab_size,
        hidden_size=TINY.hidden_size,
        intermediate_size=TINY.intermediate_size,
        num_hidden_layers=TINY.num_hidden_layers,
        num_attention_heads=TINY.num_attention_heads,
        num_key_value_heads=TINY.num_key_value_heads,
        head_dim=TINY.head_dim,
        rope_theta=TINY.rope_theta,
        rms_norm_eps=TINY.rms_norm_eps,
        max_position_embeddings=TINY.max_position_embeddings,
        tie_word_embeddings=False,
        sliding_window=None,
        attn_implementation="eager",
    )
    reference = transformers.MistralForCausalLM(hf_config).eval()
    # strict=True proves every key name and shape matches the HF layout both ways.
    reference.load_state_dict(model.state_dict(), strict=True)
    ids = torch.randint(0, TINY.vocab_size, (2, 23))
    expected = reference(input_ids=ids).logits
    ours = model(ids).logits
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_prefill_then_decode_steps_equal_one_full_forward() -> None:
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 17))
    full = model(ids).logits  # [B, 17, V]

    prompt_len, batch = 11, 2
    cache = KVCache(TINY, batch, max_length=32)
    prefill = model(ids[:, :prompt_len], mask=MixedMask.causal(batch), cache=cache, logits_positions=slice(-1, None))
    torch.testing.assert_close(prefill.logits[:, 0], full[:, prompt_len - 1], rtol=1e-5, atol=1e-5)
    for slot in range(prompt_len, ids.shape[1]):
        step = model(ids[:, slot : slot + 1], mask=MixedMask.causal(batch, query_offset=slot), cache=cache)
        torch.testing.assert_close(step.logits[:, 0], full[:, slot], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone() -> None:
    model = tiny_model()
    lengths = [9, 4, 6]
    padded = max(lengths)
    rows = [torch.randint(3, TINY.vocab_size, (n,)) for n in lengths]
    batch_ids = torch.zeros(len(rows), padded, dtype=torch.long)  # pad id 0
    for b, row in enumerate(rows):
        batch_ids[b, padded - len(row) :] = row
    next_ids = torch.randint(3, TINY.vocab_size, (len(rows), 3))  # three decode steps per row

    cache = KVCache(TINY, len(rows), max_length=16)
    batch_prefill = model(
        batch_ids,
        positions=real_positions(lengths, padded),
        mask=causal_prefill_mask(lengths, padded),
        cache=cache,
        logits_positions=slice(-1, None),
    ).logits
    batch_steps = []
    for step in range(next_ids.shape[1]):
        slot = padded + step
        step_mask = MixedMask.from_lists([0] * 3, [0] * 3, [padded - n for n in lengths], [slot] * 3)
        positions = torch.tensor(lengths).unsqueeze(1) + step
        batch_steps.append(model(next_ids[:, step : step + 1], positions=positions, mask=step_mask, cache=cache).logits)

    for b, row in enumerate(rows):
        alone = model(torch.cat([row, next_ids[b]]).unsqueeze(0)).logits[0]  # [n + 3, V]
        torch.testing.assert_close(batch_prefill[b, 0], alone[len(row) - 1], rtol=1e-5, atol=1e-5)
        for step, logits in enumerate(batch_steps):
            torch.testing.assert_close(logits[b, 0], alone[len(row) + step], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_pose_step_logits_equal_one_dense_masked_forward() -> None:
    model = tiny_model()
    begin_id = 150
    prompt = torch.randint(3, 100, (1, 13))
    prompt_len = prompt.shape[1]
    queries = model.embed_pose_queries(NUM_QUERIES)  # [80, C]
    assert torch.equal(queries, model.model.embed_tokens.weight[TINY.vocab_size - NUM_QUERIES :])

    # Reference: the whole sequence in one call, no cache, the block mask over the 80 query positions.
    sequence = torch.cat([model.embed(prompt), model.embed(torch.tensor([[begin_id]])), queries.unsqueeze(0)], dim=1)
    block = MixedMask.from_lists([prompt_len + 1], [prompt_len + 1 + NUM_QUERIES])
    dense = model(input_embeds=sequence, mask=block).logits[:, prompt_len + 1 :]  # [1, 80, V]

    # Cached: prefill the prompt, then ONE 81-token step (BEGIN causal, the 80 queries bidirectional).
    cache = KVCache(TINY, 1, max_length=prompt_len + 1 + NUM_QUERIES)
    model(prompt, mask=MixedMask.causal(1), cache=cache, logits_positions=None)
    pose_mask = MixedMask.from_lists([prompt_len + 1], [prompt_len + 1 + NUM_QUERIES], [0], [prompt_len])
    step = model(
        input_embeds=sequence[:, prompt_len:], mask=pose_mask, cache=cache, logits_positions=slice(1, None)
    ).logits
    torch.testing.assert_close(step, dense, rtol=1e-5, atol=1e-5)

    # The block really is bidirectional: a causal forward gives different logits at the query positions.
    causal = model(input_embeds=sequence).logits[:, prompt_len + 1 :]
    assert not torch.allclose(causal[:, :-1], dense[:, :-1], atol=1e-3)


@torch.no_grad()
def test_hidden_states_and_logit_selection() -> None:
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 7))
    out = model(ids, logits_positions=None, return_hidden=True)
    assert out.logits is None and out.hidden is not None and out.hidden.shape == (2, 7, TINY.hidden_size)
    last = model(ids, logits_positions=slice(-1, None)).logits
    torch.testing.assert_close(last[:, 0], model.lm_head(out.hidden[:, -1]))


def test_unipose_7b_parameter_count_on_meta_device() -> None:
    config = get_preset("unipose-7b").llm
    with torch.device("meta"):
        model = MistralLM(config)
    # embed_tokens and lm_head: 2 x 34132 x 4096 = 279,609,344
    # per layer: q 4096x4096 + k 4096x1024 + v 4096x1024 + o 4096x4096 = 41,943,040
    #            gate/up/down 3 x 4096x14336 = 176,160,768; two RMSNorms 2 x 4096 = 8,192 -> 218,112,000
    # 32 layers = 6,979,584,000; final norm 4,096.
    expected = 2 * 34132 * 4096 + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096
    assert expected == 7_259_197_440
    assert sum(p.numel() for p in model.parameters()) == expected
    assert all(p.device.type == "meta" for p in model.parameters())
