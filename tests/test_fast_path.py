"""The fast path gives exactly the step-by-step greedy results: one-pass prefill + pose block, stop after the pose,
the reused static cache and the compiled wrapper (traced with the "eager" backend: fast, checks full graphs)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from unipose_sdk.body.examples import load_example_pose
from unipose_sdk.generation import GenerationConfig, GenerationResult, generate
from unipose_sdk.models.config import LLMConfig, VocabLayout
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.runtime.torch_lm import FastLM
from unipose_sdk.tasks import Editor, Estimator, Generator
from unipose_sdk.timing import StageTimer

VOCAB = VocabLayout(text_vocab_size=64, codebook_size=32, num_pose_tokens=80)
CONFIG = LLMConfig(vocab_size=VOCAB.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
                   max_position_embeddings=256)
BEGIN, END, EOS, DOT = VOCAB.pose_begin_id, VOCAB.pose_end_id, VOCAB.eos_id, 13
# token -> the token the programmed model emits after it
PROGRAM = {7: BEGIN, END: DOT, DOT: EOS, 20: 21, 21: 7, 30: 31, 31: 32, 32: EOS, 50: 51, 51: 52, 52: EOS}
TEXT_TO_POSE = [1, 5, 6, 7]  # greedy answers BEGIN right away
LATE_POSE = [1, 8, 9, 20]  # greedy answers 21, 7, then BEGIN: the one-pass block must be dropped
TEXT_ONLY = [1, 30]  # never a pose
LONG_TEXT = [1, 4, 4, 4, 4, 4, 50]


@pytest.fixture(scope="module")
def model() -> MistralLM:
    """Random weights plus one strong hidden channel per programmed transition (see test_generation)."""
    torch.manual_seed(0)
    lm = MistralLM(CONFIG).eval()
    with torch.no_grad():
        for name, param in lm.named_parameters():
            param.fill_(1.0) if name.endswith("norm.weight") else param.normal_(0.0, 0.1)
        for axis, (token, next_token) in enumerate(PROGRAM.items()):
            lm.model.embed_tokens.weight[token, axis] += 20.0
            lm.lm_head.weight[next_token, axis] += 20.0
    return lm


@contextlib.contextmanager
def count_calls(lm: MistralLM) -> Iterator[list[int]]:
    """Number of new tokens T of every forward of `lm` inside the block."""
    lengths: list[int] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args and args[0] is not None else kwargs.get("input_ids")
        lengths.append(int((tokens if tokens is not None else kwargs["input_embeds"]).shape[1]))

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield lengths
    finally:
        handle.remove()


def assert_same(a: list[GenerationResult], b: list[GenerationResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
        assert x.finish_reason == y.finish_reason
        assert x.forced_first_token == y.forced_first_token
        assert len(x.pose_codes) == len(y.pose_codes)
        for cx, cy in zip(x.pose_codes, y.pose_codes):
            assert torch.equal(cx, cy)


def test_one_pass_keeps_the_block_when_greedy_says_begin(model: MistralLM) -> None:
    with count_calls(model) as step_calls:
        reference = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(100, one_pass=False))
    with count_calls(model) as fast_calls:
        fast = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(100, one_pass=True))
    assert_same(fast, reference)
    assert reference[0].token_ids[0] == BEGIN and reference[0].token_ids[-3:] == [END, DOT, EOS]
    assert step_calls == [4, 81, 1, 1]
    assert fast_calls == [4 + 81, 1, 1]  # prefill and pose block in one forward over the weights


def test_mixed_batch_with_speculation_drops_the_block_where_greedy_does_not_say_begin(model: MistralLM) -> None:
    prompts = [TEXT_TO_POSE, LATE_POSE, TEXT_ONLY, LONG_TEXT]
    reference = generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=False))
    with count_calls(model) as calls:
        fast = generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=True))
    assert_same(fast, reference)
    padded = len(LONG_TEXT)
    # Row 0 keeps its block; rows 1-3 drop theirs and continue step by step; row 1 runs a pose step later.
    assert calls == [padded + 81, 1, 1, 81, 1, 1]
    assert fast[1].token_ids[:3] == [21, 7, BEGIN] and len(fast[1].pose_codes) == 1
    assert fast[2].token_ids == [31, 32, EOS] and fast[3].token_ids == [51, 52, EOS]


def test_fallback_alone_is_the_step_by_step_path(model: MistralLM) -> None:
    for prompt, later_pose_steps in ((TEXT_ONLY, 0), (LATE_POSE, 1)):
        reference = generate(model, [prompt], VOCAB, GenerationConfig(100, one_pass=False))
        with count_calls(model) as calls:
            fast = generate(model, [prompt], VOCAB, GenerationConfig(100, one_pass=True))
        assert_same(fast, reference)
        assert calls[0] == len(prompt) + 81 and calls[1:].count(81) == later_pose_steps


def test_forced_begin_keeps_the_block_even_where_greedy_would_not(model: MistralLM) -> None:
    prompts = [TEXT_ONLY, TEXT_TO_POSE]
    reference = generate(model, prompts, VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=False))
    with count_calls(model) as calls:
        fast = generate(model, prompts, VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=True))
    assert_same(fast, reference)
    assert [r.forced_first_token for r in fast] == [True, False]
    assert calls[0] == len(TEXT_TO_POSE) + 81 and 81 not in calls


def test_stop_after_pose_is_the_prefix_up_to_end(model: MistralLM) -> None:
    prompts = [TEXT_TO_POSE, TEXT_ONLY]
    full = generate(model, prompts, VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=False))
    with count_calls(model) as calls:
        short = generate(model, prompts, VOCAB,
                         GenerationConfig(100, start_with_pose=True, stop_after_pose=True, one_pass=True))
    assert calls == [len(TEXT_TO_POSE) + 81]  # no decode step at all
    for s, f in zip(short, full):
        assert s.finish_reason == "pose"
        assert s.token_ids == f.token_ids[:82] and s.token_ids[-1] == END
        assert torch.equal(s.pose_codes[0], f.pose_codes[0])


def test_no_one_pass_without_room_for_the_block(model: MistralLM) -> None:
    with count_calls(model) as calls:
        (cut,) = generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(81, start_with_pose=True, one_pass=True))
    assert calls == [4] and cut.finish_reason == "length" and cut.token_ids == []


def test_timings_name_the_stages(model: MistralLM) -> None:
    timer = StageTimer()
    generate(model, [TEXT_TO_POSE], VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=True),
             on_stage=timer.stage)
    assert set(timer.ms) == {"prefill_pose", "decode"} and timer.counts["decode"] == 2
    timer = StageTimer()
    generate(model, [LATE_POSE], VOCAB, GenerationConfig(100), on_stage=timer.stage)
    assert set(timer.ms) == {"prefill", "pose_step", "decode"}
    assert timer.counts["pose_step"] == 1 and all(v >= 0 for v in timer.ms.values())


def test_fast_lm_reuses_its_static_cache_and_matches(model: MistralLM) -> None:
    fast = FastLM(copy.deepcopy(model))  # fused in place: the fixture stays the unfused reference
    prompts = [TEXT_TO_POSE, LATE_POSE, TEXT_ONLY, LONG_TEXT]
    reference = generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=False))
    assert_same(generate(fast, prompts, VOCAB, GenerationConfig(100, one_pass=True)), reference)
    cache = fast.new_cache(4, 10)
    assert cache.max_length % fast.cache_step == 0
    # A second call (different prompts first, so the cache holds stale rows) reuses the same tensors.
    generate(fast, [LONG_TEXT, TEXT_ONLY, TEXT_ONLY, TEXT_ONLY], VOCAB, GenerationConfig(100))
    assert fast.new_cache(4, 10) is cache
    assert_same(generate(fast, prompts, VOCAB, GenerationConfig(100, one_pass=True)), reference)
    assert fast.new_cache(4, cache.max_length + 1) is not cache  # grows when a call needs more


def test_compiled_wrapper_traces_full_graphs_with_buckets_and_matches(model: MistralLM) -> None:
    fast = FastLM(model, compile=True, backend="eager", bucket=16)
    assert fast.prompt_length_bucket(5) == 16 and fast.prompt_length_bucket(16) == 16
    prompts = [TEXT_TO_POSE, LATE_POSE]  # one-pass prefill, a kept and a dropped block, a pose step, decode steps
    reference = generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=False))
    assert_same(generate(fast, prompts, VOCAB, GenerationConfig(100, one_pass=True)), reference)
    assert fast.warmup_ms > 0
    warm = fast.warmup_ms
    assert_same(generate(fast, prompts, VOCAB, GenerationConfig(100, one_pass=True)), reference)
    assert fast.warmup_ms == warm  # no new shapes on the second call: nothing traced again


# ---------------------------------------------------------------------------------------------------------------
# Through the task classes on the embedded tiny model

@pytest.fixture(scope="module")
def image_rgb() -> np.ndarray:
    return (np.random.default_rng(1).random((120, 90, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("task", ["generate", "estimate", "edit"])
def test_pose_tasks_fast_path_equals_step_by_step(task: str, image_rgb: np.ndarray) -> None:
    cls = {"generate": Generator, "estimate": Estimator, "edit": Editor}[task]
    fast = cls.from_pretrained(max_new_tokens=8)  # defaults: one pass, pose only
    full = cls.from_pretrained(max_new_tokens=8, pose_only=False)  # one pass, then the trailing text
    reference = cls.from_pretrained(max_new_tokens=8, pose_only=False, one_pass=False)

    def run(obj):  # type: ignore[no-untyped-def]
        if task == "generate":
            return obj.generate(["a person squatting", "someone waving with the right hand"])
        if task == "estimate":
            return obj.estimate([image_rgb, image_rgb[::-1].copy()])
        return obj.edit([load_example_pose("sitting"), load_example_pose("walking_stride")], "raise the left arm")

    out_fast, out_full, out_ref = run(fast), run(full), run(reference)
    for f, u, r in zip(out_fast, out_full, out_ref):
        assert f.pose_codes == u.pose_codes == r.pose_codes
        assert u.text == r.text and u.text.startswith("<pose>")
        assert f.text == "<pose>"  # nothing decoded after the pose block
        assert np.array_equal(f.joints_m, r.joints_m)
    assert "prefill_pose" in out_fast[0].timing_ms and "decode" not in out_fast[0].timing_ms
    assert "prefill" in out_ref[0].timing_ms and "pose_step" in out_ref[0].timing_ms


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_cuda_graphs_match_eager_on_the_tiny_model() -> None:
    """On CUDA: inductor + CUDA graphs (mode reduce-overhead) give the eager tokens (float32, so kernels that
    fuse differently cannot flip a near tie), on the first call (capture) and on replays."""
    from unipose_sdk.options import BaseOptions
    from unipose_sdk.session import UniPose
    from unipose_sdk.text.prompts import Task

    session = UniPose.load(BaseOptions(device="cuda", dtype="float32", compile=False))
    raw = session.runtime.llm.llm
    vocab = session.config.vocab
    rows = session.embed_rows([session.prompts.build_task(Task.TEXT_TO_POSE, caption="a person squatting"),
                               session.prompts.build_task(Task.TEXT_TO_POSE, caption="arms up")], None)
    compiled = FastLM(raw, compile=True)
    assert compiled.mode == "reduce-overhead"
    for start_with_pose in (True, False):
        reference = generate(raw, rows, vocab, GenerationConfig(96, start_with_pose=start_with_pose))
        for _ in range(3):
            assert_same(generate(compiled, rows, vocab, GenerationConfig(96, start_with_pose=start_with_pose,
                                                                         one_pass=start_with_pose)), reference)
