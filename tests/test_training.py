"""Training batches line up with what generation decodes; a few training steps lower the loss; stages resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unipose_sdk import generation
from unipose_sdk.checkpoint.pose_tokenizer import random_tiny_tokenizer
from unipose_sdk.checkpoint.sdk_format import load_model
from unipose_sdk.models.attention import use_attention_impl
from unipose_sdk.models.attention_mask import dense_mask
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.text.prompts import PromptBuilder, Task
from unipose_sdk.training.batches import (
    IGNORE,
    PARAPHRASES,
    CodeTargets,
    ExampleBuilder,
    collate,
    draw_batch,
    draw_example,
    input_embeddings,
    sequence_loss,
    user_turn,
)
from unipose_sdk.training.loop import cosine_lr, run_steps
from unipose_sdk.training.pipeline import TrainSettings, load_text_tokenizer, train
from unipose_sdk.training.pools import PoolSizes, build_pool

CONFIG = get_preset("unipose-tiny")
LAYOUT = CONFIG.vocab
TINY_POOL = PoolSizes(poses=24, pairs=8, pose_images=6, pair_images=3, texts_per_pair=1)


@pytest.fixture(scope="module")
def builder() -> ExampleBuilder:
    return ExampleBuilder(PromptBuilder(load_text_tokenizer(), CONFIG.image_tokens, CONFIG.max_text_tokens))


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    return build_pool(3, TINY_POOL, random_tiny_tokenizer(0))


@pytest.fixture(scope="module")
def llm() -> MistralLM:
    torch.manual_seed(0)
    return MistralLM(CONFIG.llm).eval()


def _codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, LAYOUT.codebook_size, LAYOUT.num_pose_tokens)


def test_pose_answer_targets_sit_where_generation_reads_them(builder: ExampleBuilder) -> None:
    codes = _codes(0)
    example = builder.build(Task.TEXT_TO_POSE, user_turn(Task.TEXT_TO_POSE, "Your knees are bent.", None),
                            answer_codes=codes)
    prompt_length = len(builder.prompts.build_task(Task.TEXT_TO_POSE, caption="Your knees are bent.").input_ids)
    begin = prompt_length  # BEGIN follows the prompt; the queries follow BEGIN
    start, end = example.block
    assert (start, end) == (begin + 1, begin + 81)
    assert example.labels[begin - 1] == LAYOUT.pose_begin_id  # the prompt's last logits choose BEGIN
    assert example.labels[begin] == IGNORE  # BEGIN's logits are never read
    assert example.input_ids[begin] == LAYOUT.pose_begin_id
    assert example.input_ids[start:end] == list(range(LAYOUT.pose_query_offset, LAYOUT.vocab_size))
    assert example.labels[start:end] == [LAYOUT.pose_id_offset + int(c) for c in codes]  # query k -> code k
    assert example.input_ids[end] == LAYOUT.pose_end_id
    assert example.labels[end] == builder.dot_ids[0]  # END -> "."
    assert example.input_ids[-1] == LAYOUT.eos_id and example.labels[-1] == IGNORE
    assert example.labels[-2] == LAYOUT.eos_id
    assert len(example.labels) == len(example.input_ids)


def test_text_answer_labels_are_the_next_tokens(builder: ExampleBuilder) -> None:
    example = builder.build(Task.POSE_DESCRIPTION, user_turn(Task.POSE_DESCRIPTION, None, None), poses=[_codes(1)],
                            answer_text="Your arms are crossed.")
    answer = builder.tokenizer.encode("Your arms are crossed.") + [LAYOUT.eos_id]
    prompt_length = len(example.input_ids) - len(answer)
    assert example.input_ids[prompt_length:] == answer
    assert example.labels[prompt_length - 1:-1] == answer
    assert all(label == IGNORE for label in example.labels[:prompt_length - 1])
    assert example.block == (0, 0)


def test_training_mask_equals_the_pose_step_mask(builder: ExampleBuilder) -> None:
    short = builder.build(Task.TEXT_TO_POSE, "Generate pose of the description: Bent knees.", answer_codes=_codes(2))
    long = builder.build(Task.POSE_EDITING, user_turn(Task.POSE_EDITING, "Raise your left arm.", None),
                         poses=[_codes(3)], answer_codes=_codes(4))
    batch = collate([short, long], LAYOUT)
    width = batch.input_ids.shape[1]
    train_mask = dense_mask(batch.mask, width, width)[:, 0]
    for row, example in enumerate((short, long)):
        begin = example.block[0] - 1
        # generation.pose_step for a row whose BEGIN goes to cache slot `begin`, with no left padding.
        zeros = torch.zeros(1, dtype=torch.int32)
        step_mask = generation.MixedMask(block_start=zeros + begin + 1, block_end=zeros + begin + 81,
                                         key_start=zeros, query_offset=zeros + begin)
        step = dense_mask(step_mask, 81, begin + 81)[0, 0]
        assert torch.equal(train_mask[row, begin:begin + 81, :begin + 81], step)
        # and nothing before BEGIN sees the block (the prompt is causal)
        assert not train_mask[row, :begin, begin:].any()


def test_training_logits_equal_generation_logits(builder: ExampleBuilder, llm: MistralLM) -> None:
    """Teacher forcing computes, at every labelled position, the logits inference computes there."""
    codes = _codes(5)
    example = builder.build(Task.TEXT_TO_POSE, "Generate pose of the description: Your arms are raised.",
                            answer_codes=codes)
    batch = collate([example], LAYOUT)
    with torch.no_grad(), use_attention_impl("sdpa_dense"):
        trained = llm(batch.input_ids, mask=batch.mask).logits[0]  # [T, V]
        begin = example.block[0] - 1
        prompt = torch.tensor(example.input_ids[:begin])
        cache = llm.new_cache(1, begin + 100)
        first, state = generation.prefill(llm, cache, llm.embed(prompt[None]), [begin])
        generation.decode_step  # noqa: B018 - the END step below is a decode step, as in generate()
        query_logits = generation.pose_step(llm, cache, state, LAYOUT, torch.tensor([True]))
        after_end = generation.decode_step(llm, cache, state, torch.tensor([LAYOUT.pose_end_id]), torch.tensor([True]))
    torch.testing.assert_close(trained[begin - 1], first[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trained[begin + 1:begin + 81], query_logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trained[begin + 81], after_end[0], atol=1e-4, rtol=1e-4)


def test_every_task_draws_a_consistent_example(pool, builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    for task in Task:
        for paraphrase in (False, True):
            example = draw_example(pool, builder, task, rng, paraphrase)
            assert example.task is task
            assert len(example.image_keys) == {Task.IMAGE_DIFFERENCE: 2, Task.POSE_ESTIMATION: 1,
                                               Task.IMAGE_DESCRIPTION: 1}.get(task, 0)
            assert all(0 <= k < len(pool.images) for k in example.image_keys)
            labelled = [label for label in example.labels if label != IGNORE]
            assert labelled and labelled[-1] == LAYOUT.eos_id
            has_block = example.block != (0, 0)
            assert has_block == (task in (Task.TEXT_TO_POSE, Task.POSE_EDITING, Task.POSE_ESTIMATION))


def test_paraphrases_keep_the_task_inputs() -> None:
    from unipose_sdk.text.prompts import TASK_INPUTS

    for task, phrasings in PARAPHRASES.items():
        images, poses, caption = TASK_INPUTS[task]
        for text in phrasings:
            assert text.count("<image>") == images
            assert text.count("<pose") == poses
            assert ("<caption>" in text) == caption


def test_images_are_spliced_into_their_slots(pool, builder: ExampleBuilder, llm: MistralLM) -> None:  # type: ignore[no-untyped-def]
    batch = draw_batch(pool, builder, {Task.IMAGE_DIFFERENCE: 1.0}, 2, np.random.default_rng(1), False)
    bank = torch.randn(len(pool.images), CONFIG.image_tokens, CONFIG.llm.hidden_size)
    with torch.no_grad():
        embeds = input_embeddings(llm, batch, bank[batch.image_keys])
    for n in range(len(batch.image_keys)):
        row, start = int(batch.image_rows[n]), int(batch.image_starts[n])
        assert batch.input_ids[row, start - 1] == LAYOUT.image_start_id
        assert torch.equal(embeds[row, start:start + CONFIG.image_tokens], bank[batch.image_keys[n]])
        assert batch.input_ids[row, start + CONFIG.image_tokens] == LAYOUT.image_end_id


def test_a_few_steps_lower_the_loss(pool, builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = MistralLM(CONFIG.llm)
    batch = draw_batch(pool, builder, {Task.TEXT_TO_POSE: 1.0}, 4, np.random.default_rng(2), False)
    losses = []

    def step(_: int):  # type: ignore[no-untyped-def]
        loss, stats = sequence_loss(model, batch, model.embed(batch.input_ids), LAYOUT)
        losses.append(stats["loss"])
        return loss, stats

    with use_attention_impl("sdpa_dense"):
        summary = run_steps("test", list(model.parameters()), 12, 3e-3, seconds=float("inf"), step_fn=step)
    assert summary["steps"] == 12
    assert losses[-1] < 0.6 * losses[0]


def test_cosine_schedule_warms_up_and_decays() -> None:
    values = [cosine_lr(s / 100, 1.0, warmup=0.1) for s in range(101)]
    assert values[0] < 0.05 and values[5] == pytest.approx(0.5) and values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(0.1)


def test_stage_one_runs_and_is_skipped_when_complete(tmp_path: Path) -> None:
    settings = TrainSettings(out=tmp_path, stages=(1,), batch_size=2, pool_sizes=TINY_POOL,
                             steps_override={"stage1": 2})
    first = train(settings)
    info_file = tmp_path / "stage1" / "training.json"
    assert first["stage1"]["language"]["steps"] == 2 and info_file.is_file()
    assert (tmp_path / "stage1" / "model.safetensors").is_file()
    before = info_file.read_text()
    again = train(settings)
    assert info_file.read_text() == before  # not retrained
    assert again["stage1"] == json.loads(before)


def test_code_targets_share_the_target_between_codes_that_decode_alike() -> None:
    book = torch.tensor([[0.0, 0.0], [0.1, 0.0], [4.0, 0.0], [8.0, 0.0]])
    targets = CodeTargets(book, sigma=0.5)
    assert torch.allclose(targets.kernel.sum(1), torch.ones(4))
    assert targets.kernel[0, 1] > 0.4 and targets.kernel[0, 2] < 1e-6  # a near-duplicate shares the mass
    assert targets.kernel[0].argmax() == 0
    with pytest.raises(ValueError, match="sigma=0"):
        CodeTargets(book, sigma=0)


def test_soft_code_loss_trains_and_reports_the_same_keys(pool, builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = MistralLM(CONFIG.llm)
    targets = CodeTargets(torch.randn(LAYOUT.codebook_size, 8, generator=torch.Generator().manual_seed(1)))
    poses = draw_batch(pool, builder, {Task.TEXT_TO_POSE: 1.0}, 4, np.random.default_rng(2), False)
    texts = draw_batch(pool, builder, {Task.POSE_DESCRIPTION: 1.0}, 2, np.random.default_rng(3), False)
    with use_attention_impl("sdpa_dense"):
        loss, stats = sequence_loss(model, poses, model.embed(poses.input_ids), LAYOUT, targets)
        _, text_stats = sequence_loss(model, texts, model.embed(texts.input_ids), LAYOUT, targets)
        plain, _ = sequence_loss(model, texts, model.embed(texts.input_ids), LAYOUT)
        loss.backward()
    assert set(stats) == set(text_stats) == {"loss", "code_accuracy", "text_accuracy", "code_latent_mse"}
    assert stats["code_latent_mse"] > 0 and np.isnan(text_stats["code_latent_mse"])
    assert text_stats["loss"] == pytest.approx(plain.item())  # text-only batches: plain cross-entropy
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()


def test_a_run_continues_from_a_stage_of_an_earlier_run(tmp_path: Path) -> None:
    earlier = TrainSettings(out=tmp_path / "earlier", stages=(1,), batch_size=2, pool_sizes=TINY_POOL,
                            steps_override={"stage1": 2})
    train(earlier)
    start = load_model(tmp_path / "earlier" / "stage1").model.llm.lm_head.weight.clone()
    later = TrainSettings(out=tmp_path / "later", stages=(3,), batch_size=2, pool_sizes=TINY_POOL,
                          steps_override={"stage3": 2}, init_from=tmp_path / "earlier" / "stage1")
    info = train(later)["stage3"]
    assert info["language"]["steps"] == 2 and info["code_sigma"] == 0.5
    assert info["init_from"]["path"] == str(tmp_path / "earlier" / "stage1")
    assert info["init_from"]["records"]["stage1"]["language"]["steps"] == 2
    continued = load_model(tmp_path / "later" / "stage3").model.llm.lm_head.weight
    assert not torch.equal(continued.float(), start.float())  # trained further, from the earlier weights

    # The history follows the weights out of their run: a stage directory copied elsewhere brings its own record
    # (with what it continued from), a shipped model or candidate its records by stage.
    from unipose_sdk.training.pipeline import earlier_records
    from unipose_sdk.training.ship import training_history

    copied = tmp_path / "elsewhere" / "copy-of-stage3"
    shutil.copytree(tmp_path / "later" / "stage3", copied)
    records = earlier_records(copied)
    assert list(records) == ["stage3"] and records["stage3"]["init_from"]["records"]["stage1"]["language"]["steps"] == 2
    assert [name for name, _ in training_history(records)] == ["stage1", "stage3 (continued)"]
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "training.json").write_text(json.dumps(records))
    assert earlier_records(shipped) == records
    # A shipped model copied into a directory named like a run's stage is still a model's records by stage (it
    # was read as one stage's record, nesting the history one level too deep), and an average's stage record
    # copied out of its run (it has no "language") is one stage's record.
    named_like_a_stage = tmp_path / "copy" / "stage3"
    shutil.copytree(shipped, named_like_a_stage)
    assert earlier_records(named_like_a_stage) == records
    averaged = tmp_path / "soup-copy"
    averaged.mkdir()
    (averaged / "training.json").write_text(json.dumps({"stage": 3, "average_of": [], "seconds": 1.0}))
    assert list(earlier_records(averaged)) == ["stage3"]
    assert earlier_records(tmp_path / "nothing-recorded") == {}
    with pytest.raises(FileNotFoundError, match="not an SDK model directory"):
        train(TrainSettings(out=tmp_path / "bad", stages=(3,), pool_sizes=TINY_POOL, steps_override={"stage3": 1},
                            init_from=tmp_path / "nowhere"))


@pytest.mark.parametrize("value", ["-1", "nan", "wide"])
def test_train_cli_refuses_a_bad_code_sigma_before_doing_anything(value: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-o", str(tmp_path / "run"), "--code-sigma", value])
    assert exit_info.value.code == 2
    assert f"--code-sigma {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flag", "value"), [("--lr", "0"), ("--lr", "inf"), ("--language-steps", "0"),
                                             ("--language-steps", "2.5"), ("--pool-scale", "-1"),
                                             ("--pool-scale", "nan"), ("--workers", "-1"),
                                             ("--conversation-share", "1.5"), ("--everyday-share", "-0.1"),
                                             ("--caption-dropout", "nan"), ("--concept-share", "2")])
def test_train_cli_refuses_bad_run_sizes_before_doing_anything(flag: str, value: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-o", str(tmp_path / "run"), flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pool_sizes_scale_every_count_but_the_texts_per_pair() -> None:
    scaled = PoolSizes().scaled(1.5)
    assert (scaled.poses, scaled.pairs, scaled.pose_images, scaled.pair_images) == (18000, 4500, 12000, 1500)
    assert scaled.texts_per_pair == PoolSizes().texts_per_pair
    with pytest.raises(ValueError, match="pool scale"):
        PoolSizes().scaled(0)


def test_language_steps_replace_the_budget_plan_of_the_language_stages_only() -> None:
    settings = TrainSettings(out=Path("unused"), budget_minutes=10, language_steps=123)
    assert settings.plan("stage3", 0.5, {"cpu": 0.3}) == (123, 300.0)
    assert settings.plan("vision", 0.5, {"cpu": 0.3}) == (1000, 300.0)


def test_worker_processes_draw_reproducible_batches(pool, builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.training.batches import BatchStream

    weights = {Task.TEXT_TO_POSE: 1.0, Task.POSE_DESCRIPTION: 1.0}

    def first(workers: int, count: int = 4) -> list[torch.Tensor]:
        batches = BatchStream(pool, builder, weights, 4, [5, 3], paraphrase=True).batches(workers)
        return [next(batches).input_ids for _ in range(count)]

    in_process = first(0)
    assert all(a.equal(b) for a, b in zip(in_process, first(0)))
    two_workers = first(2)
    assert all(a.equal(b) for a, b in zip(two_workers, first(2)))
    # Worker w draws from [seed, offset, w]: its batches differ from the in-process stream's.
    assert not all(a.shape == b.shape and a.equal(b) for a, b in zip(in_process, two_workers))



# ---- conversations -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_builder() -> ExampleBuilder:
    """A builder for a model with a sentence encoder (4 rows per turn), conversations in every batch."""
    prompts = PromptBuilder(load_text_tokenizer(), CONFIG.image_tokens, CONFIG.max_text_tokens, text_rows=4)
    return ExampleBuilder(prompts, everyday_share=0.5, caption_dropout=0.3, conversation_share=1.0)


def test_a_conversation_example_is_the_assistants_prompt_with_the_last_answer_trained(
        encoder_builder: ExampleBuilder) -> None:
    from unipose_sdk.text.prompts import ConversationTurn
    from unipose_sdk.training.batches import Turn

    a, b = _codes(11), _codes(12)
    generate = Turn(Task.TEXT_TO_POSE, "a person sitting on the floor", answer_codes=a,
                    encoder_text="a person sitting on the floor")
    describe = Turn(Task.POSE_DESCRIPTION, "Describe <pose>.", poses=(b,), answer_text="Their knees are bent.")
    edit = Turn(Task.POSE_EDITING, "Now raise your left hand", answer_codes=b, encoder_text="raise your left hand")
    example = encoder_builder.build_turns([generate, describe, edit])
    # The history is what an Assistant writes back after generating: the pose as its codes, then ".".
    layout = encoder_builder.layout
    generated = [layout.pose_begin_id, *(layout.pose_id_offset + int(c) for c in a), layout.pose_end_id,
                 *encoder_builder.dot_ids, layout.eos_id]
    assert encoder_builder.history_answer(generate) == encoder_builder.prompts.answer_pieces(generated)
    row = encoder_builder.prompts.build_conversation(
        [ConversationTurn(generate.user, answer=encoder_builder.prompts.answer_pieces(generated)),
         ConversationTurn(describe.user, [b], answer=("Their knees are bent.",)),
         ConversationTurn(edit.user)], encoder_text="raise your left hand")
    assert example.input_ids[:len(row.input_ids)] == row.input_ids
    # Only the last answer has labels: BEGIN from the prompt's last position, then the codes, ".", eos.
    labelled = [t for t, label in enumerate(example.labels) if label != IGNORE]
    assert labelled[0] == len(row.input_ids) - 1 and example.labels[labelled[0]] == layout.pose_begin_id
    assert [example.labels[t] - layout.pose_id_offset for t in range(*example.block)] == [int(c) for c in b]
    # One sentence-encoder row set per turn; the open turn's reads its encoder text, not the prompt.
    assert [text for _, text in example.text_slots] == ["a person sitting on the floor", "Describe .",
                                                        "raise your left hand"]
    assert all(example.input_ids[start] == layout.pad_id for start, _ in example.text_slots)


def test_a_history_turn_without_an_answer_is_refused(encoder_builder: ExampleBuilder) -> None:
    from unipose_sdk.training.batches import Turn

    unanswered = Turn(Task.POSE_DESCRIPTION, "Describe <pose>.", poses=(_codes(3),))
    last = Turn(Task.TEXT_TO_POSE, "a person waving", answer_codes=_codes(4), encoder_text="a person waving")
    with pytest.raises(ValueError, match="neither answer codes nor an answer text"):
        encoder_builder.build_turns([unanswered, last])


def test_every_task_draws_a_consistent_conversation(pool, encoder_builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.training.batches import draw_conversation

    rng = np.random.default_rng(4)
    turns_seen = set()
    for task in Task:
        for _ in range(6):
            example = draw_conversation(pool, encoder_builder, task, rng, paraphrase=True)
            assert example.task is task
            assert len(example.image_keys) == len(example.image_starts)
            assert all(0 <= k < len(pool.images) for k in example.image_keys)
            labelled = [label for label in example.labels if label != IGNORE]
            assert labelled and labelled[-1] == LAYOUT.eos_id
            assert labelled.count(LAYOUT.eos_id) == 1  # earlier answers are context, not targets
            assert (example.block != (0, 0)) == (task in (Task.TEXT_TO_POSE, Task.POSE_EDITING, Task.POSE_ESTIMATION))
            prompt_length = next(t for t, label in enumerate(example.labels) if label != IGNORE) + 1
            assert prompt_length <= CONFIG.max_text_tokens
            assert len(example.input_ids) <= CONFIG.llm.max_position_embeddings
            turns_seen.add(len(example.text_slots))
    assert turns_seen >= {2, 3}


def test_a_follow_up_edit_answers_the_pair_with_no_pose_in_the_turn(pool, encoder_builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.training.batches import follow_up_edit

    rng = np.random.default_rng(7)
    for _ in range(10):
        generate, edit = follow_up_edit(pool, encoder_builder, rng, paraphrase=True)
        assert generate.task is Task.TEXT_TO_POSE and edit.task is Task.POSE_EDITING
        assert "<pose" not in edit.user and not edit.poses and edit.encoder_text.lower() in edit.user.lower()
        assert any(np.array_equal(generate.answer_codes, pool.pair_codes_a[j])
                   and np.array_equal(edit.answer_codes, pool.pair_codes_b[j])
                   and any(text.strip() == edit.encoder_text for text, _ in pool.pair_texts[j])
                   for j in range(pool.num_pairs))


def test_conversation_batches_splice_every_turns_sentence_rows(pool, encoder_builder: ExampleBuilder,  # type: ignore[no-untyped-def]
                                                               llm: MistralLM) -> None:
    batch = draw_batch(pool, encoder_builder, {Task.POSE_EDITING: 1.0}, 3, np.random.default_rng(2), True)
    assert len(batch.encoder_texts) > 3  # more row sets than rows: earlier turns have theirs
    rows = torch.randn(len(batch.encoder_texts), 4, CONFIG.llm.hidden_size)
    bank = torch.randn(len(pool.images), CONFIG.image_tokens, CONFIG.llm.hidden_size)
    with torch.no_grad():
        embeds = input_embeddings(llm, batch, bank[batch.image_keys] if batch.image_keys.numel() else None, rows)
    for n, (row, start) in enumerate(zip(batch.text_rows_of, batch.text_starts)):
        assert torch.equal(embeds[row, start:start + 4], rows[n])


def test_no_conversation_share_draws_the_one_turn_batches_as_before(pool, builder: ExampleBuilder) -> None:  # type: ignore[no-untyped-def]
    weights = {Task.TEXT_TO_POSE: 1.0, Task.POSE_EDITING: 1.0}
    batch = draw_batch(pool, builder, weights, 4, np.random.default_rng(9), True)
    rng = np.random.default_rng(9)
    rng.choice(2, p=[0.5, 0.5])  # the batch's task
    task = Task.TEXT_TO_POSE if batch.tasks[0] is Task.TEXT_TO_POSE else Task.POSE_EDITING
    examples = [draw_example(pool, builder, task, rng, True) for _ in range(4)]
    assert torch.equal(collate(examples, LAYOUT).input_ids, batch.input_ids)


# ---- drawing poses by concept --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concept_pool():  # type: ignore[no-untyped-def]
    from unipose_sdk.data.archetypes import TRAINING_ARCHETYPE_NAMES
    from unipose_sdk.data.poses import TRAINING_MIX

    return build_pool(4, PoolSizes(poses=400, pairs=4, pose_images=2, pair_images=2, texts_per_pair=1),
                      random_tiny_tokenizer(0), TRAINING_ARCHETYPE_NAMES, TRAINING_MIX)


def test_the_concept_index_lists_exactly_the_poses_that_show_each_concept(concept_pool) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.data.everyday import matching_rules
    from unipose_sdk.training.batches import ConceptIndex

    index = ConceptIndex.of(concept_pool, min_poses=5)
    shown: dict[str, set[int]] = {}
    for i in range(concept_pool.num_poses):
        for rule in matching_rules(concept_pool.facts[i], concept_pool.joints_m[i]):
            shown.setdefault(rule.name, set()).add(i)
    assert set(index.names) == {name for name, poses in shown.items() if len(poses) >= 5}
    for name in index.names:
        assert set(index.poses_by_rule[name].tolist()) == shown[name]
    with pytest.raises(ValueError, match="no everyday concept"):
        ConceptIndex.of(concept_pool, min_poses=concept_pool.num_poses + 1)


def test_concept_draws_even_out_common_and_rare_concepts(concept_pool) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.training.batches import ConceptIndex

    index = ConceptIndex.of(concept_pool, min_poses=5)
    sizes = {name: len(poses) for name, poses in index.poses_by_rule.items()}
    assert max(sizes.values()) >= 5 * min(sizes.values())  # the pool itself is uneven
    rng = np.random.default_rng(0)
    draws = 200 * len(index.names)
    counts: dict[str, int] = {}
    for _ in range(draws):
        name, i = index.draw(rng)
        assert i in index.poses_by_rule[name]
        counts[name] = counts.get(name, 0) + 1
    assert set(counts) == set(index.names)
    assert all(120 <= n <= 280 for n in counts.values()), counts


def test_a_concept_drawn_example_answers_a_pose_that_shows_what_its_text_says(concept_pool) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.data.everyday import RULES, matching_rules
    from unipose_sdk.training.batches import ConceptIndex, draw_turn

    prompts = PromptBuilder(load_text_tokenizer(), CONFIG.image_tokens, CONFIG.max_text_tokens, text_rows=4)
    class Recorded(ConceptIndex):
        def draw(self, rng):  # type: ignore[no-untyped-def]
            self.last = super().draw(rng)
            return self.last

    index = Recorded(ConceptIndex.of(concept_pool, min_poses=5).poses_by_rule, min_poses=5)
    builder = ExampleBuilder(prompts, everyday_share=1.0, concepts=index, concept_share=1.0)
    by_name = {rule.name: rule for rule in RULES}
    rng = np.random.default_rng(3)
    for _ in range(40):
        turn = draw_turn(concept_pool, builder, Task.TEXT_TO_POSE, rng, paraphrase=False)
        name, i = index.last
        assert np.array_equal(turn.answer_codes, concept_pool.codes[i])
        assert name in {r.name for r in matching_rules(concept_pool.facts[i], concept_pool.joints_m[i])}
        phrasings = [re.escape(p.lower()).replace(re.escape("{p}"), "(their|his|her|your)")
                     for p in (*by_name[name].doing, *by_name[name].commands)]
        assert any(re.search(p, turn.encoder_text.lower()) for p in phrasings), (name, turn.encoder_text)
    with pytest.raises(ValueError, match="needs a ConceptIndex"):
        ExampleBuilder(prompts, everyday_share=1.0, concept_share=0.5)


# ---- deepening the LLM of a continued run --------------------------------------------------------------------


@pytest.mark.parametrize("layers", [4, 5, 6, 8])
def test_a_deepened_llm_computes_what_it_computed_before(layers: int) -> None:
    from unipose_sdk.models.unipose import UniPoseModel
    from unipose_sdk.training.pipeline import deepen_llm

    torch.manual_seed(0)
    model = UniPoseModel.from_config(CONFIG).eval()
    deeper = deepen_llm(model, layers).eval()
    assert deeper.config.llm.num_hidden_layers == layers == len(deeper.llm.model.layers)
    ids = torch.randint(3, LAYOUT.text_vocab_size, (2, 17))
    with torch.no_grad():
        assert torch.equal(model.llm(ids).logits, deeper.llm(ids).logits)
    # Everything outside the LLM's layers is the model's own.
    theirs = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in deeper.state_dict().items() if ".layers." not in k
               or not k.startswith("llm."))
    new = [j for j in range(layers) if j not in {i * layers // 4 for i in range(4)}]
    for j in new:
        layer = deeper.llm.model.layers[j]
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.any()  # a copy of the layer before, not an empty layer


def test_a_deepened_llms_new_layers_learn() -> None:
    from unipose_sdk.models.unipose import UniPoseModel
    from unipose_sdk.training.pipeline import deepen_llm

    torch.manual_seed(1)
    deeper = deepen_llm(UniPoseModel.from_config(CONFIG), 6)
    ids = torch.randint(3, LAYOUT.text_vocab_size, (2, 9))
    deeper.llm(ids).logits.square().mean().backward()
    assert deeper.llm.model.layers[1].self_attn.o_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="added, not removed"):
        deepen_llm(UniPoseModel.from_config(CONFIG), 3)


def test_a_run_deepens_the_model_it_continues_and_records_it(tmp_path: Path) -> None:
    train(TrainSettings(out=tmp_path / "earlier", stages=(1,), batch_size=2, pool_sizes=TINY_POOL,
                        steps_override={"stage1": 1}))
    info = train(TrainSettings(out=tmp_path / "deeper", stages=(3,), batch_size=2, pool_sizes=TINY_POOL,
                               steps_override={"stage3": 1}, init_from=tmp_path / "earlier" / "stage1",
                               llm_layers=6))["stage3"]
    assert info["llm_layers_deepened"] == [4, 6]
    assert load_model(tmp_path / "deeper" / "stage3").config.llm.num_hidden_layers == 6
    from unipose_sdk.training.ship import training_history

    rows = dict(training_history({"stage3": info}))
    assert rows["stage3 (continued)"]["llm_layers_deepened"] == [4, 6]


@pytest.mark.parametrize(("layers", "init", "message"), [("6", False, "needs a model to continue from"),
                                                          ("2", True, "added, not removed")])
def test_train_cli_refuses_llm_layers_it_cannot_reach_before_doing_anything(
        layers: str, init: bool, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.checkpoint.embedded import EMBEDDED_DIR
    from unipose_sdk.cli import main

    extra = ["--init-from", str(EMBEDDED_DIR)] if init else []
    assert main(["train", "-o", str(tmp_path / "run"), "--stages", "3", "--llm-layers", layers, *extra]) == 2
    err = capsys.readouterr().err
    assert f"--llm-layers {layers}" in err and message in err
    assert not (tmp_path / "run").exists()


def test_vision_pretraining_holds_renders_out_and_measures_the_joint_heads_on_them(tmp_path: Path) -> None:
    from unipose_sdk.training.pipeline import initial_model
    from unipose_sdk.training.vision import HELD_OUT_SHARE, pretrain_vision, split_held_out

    usable = np.arange(0, 200, 2)
    trained, held = split_held_out(usable, seed=5)
    assert len(held) == int(len(usable) * HELD_OUT_SHARE) and not set(trained) & set(held)
    assert sorted([*trained, *held]) == list(usable)
    assert len(split_held_out(np.arange(10), seed=5)[1]) == 0  # too few to spare one

    sizes = PoolSizes(poses=40, pairs=2, pose_images=40, pair_images=1, texts_per_pair=1)
    pool = build_pool(8, sizes, random_tiny_tokenizer(0))
    settings = TrainSettings(out=tmp_path, stages=(2,), batch_size=4, pool_sizes=sizes, seed=5,
                             steps_override={"vision": 2})
    drawn: list[set[float]] = []  # per Pose-ViT call, a fingerprint of each render it saw
    model = initial_model(5)
    original = model.vision.pose_vit.forward

    def recording(pixels: torch.Tensor) -> torch.Tensor:
        drawn.append({round(float(v), 3) for v in pixels.double().sum(dim=(1, 2, 3))})
        return original(pixels)

    model.vision.pose_vit.forward = recording  # type: ignore[method-assign]
    summary = pretrain_vision(model, pool, load_text_tokenizer(), settings)
    assert summary["steps"] == 2 and summary["held_out_images"] == 2
    # two steps of 2 x batch_size renders, then the two held-out ones, which no step saw
    assert [len(d) for d in drawn] == [8, 8, 2] and not drawn[2] & (drawn[0] | drawn[1])
    assert 0 < summary["held_out_joint_error_mm"] < 5000 and 0 < summary["held_out_clip_joint_error_mm"] < 5000


def test_unconditional_examples_are_the_guidance_prompt_answered_with_a_pool_pose(pool) -> None:  # type: ignore[no-untyped-def]
    from unipose_sdk.training.batches import draw_example

    prompts = PromptBuilder(load_text_tokenizer(), CONFIG.image_tokens, CONFIG.max_text_tokens, text_rows=4)
    builder = ExampleBuilder(prompts, everyday_share=0.5, caption_dropout=0.3, unconditional_share=0.5)
    unconditional = prompts.build_unconditional(Task.TEXT_TO_POSE)
    rng = np.random.default_rng(9)
    examples = [draw_example(pool, builder, Task.TEXT_TO_POSE, rng, paraphrase=False) for _ in range(60)]
    bare = [e for e in examples if e.text_slots[0][1] == ""]
    assert 15 <= len(bare) <= 45  # about half
    pool_codes = {tuple(int(c) for c in codes) for codes in pool.codes}
    for example in bare:
        # Exactly the prompt the Generator guides away from, then a pose of the pool as the answer.
        assert example.input_ids[:len(unconditional.input_ids)] == unconditional.input_ids
        answer = tuple(example.labels[t] - LAYOUT.pose_id_offset for t in range(*example.block))
        assert answer in pool_codes
    # Everything else reads a caption, and without a sentence encoder there is nothing to leave out.
    assert all(e.text_slots[0][1] for e in examples if e not in bare)
    plain = ExampleBuilder(PromptBuilder(load_text_tokenizer(), CONFIG.image_tokens, CONFIG.max_text_tokens),
                           unconditional_share=0.5)
    assert plain.unconditional_share == 0.0
