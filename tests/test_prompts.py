"""Prompt building: the seven task phrasings, placeholder expansion, image slots, left-padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unipose_sdk.errors import InvalidInputError, InvalidTextError
from unipose_sdk.text.prompts import TASK_TEMPLATES, PromptBuilder, Task, chat_prompt, task_user_turn
from unipose_sdk.text.tokenizer import build_tiny_tokenizer

CORPUS = ["[INST] Generate pose of the description: the person kneels. [/INST]",
          "Output the difference between image and image, pose and pose. Edit pose by description."] * 10
N_IMG = 4  # image embeddings per image in these tests (576 in the real model)

# The reference note's table (shared/design/unipose-reference.md), which is the official pretraining phrasing.
REFERENCE = {
    "image2pose": ("Generate pose of the image: <image>.", "<pose>."),
    "image2text": ("Generate description of the pose in the image: <image>.", "<caption>."),
    "image_difference": ("Output the difference between image <image> and <image>.", "<caption>."),
    "text2pose": ("Generate pose of the description: <caption>.", "<pose>."),
    "pose2text": ("Generate description of the pose <pose>.", "<caption>."),
    "pose_difference": ("Output the difference between pose <poseA> and pose <poseB>.", "<caption>."),
    "pose_edit": ("Edit pose <poseA> by description: <caption>.", "<poseB>."),
}


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    return PromptBuilder(build_tiny_tokenizer(CORPUS, 1024), image_tokens=N_IMG, max_tokens=512)


def codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, size=80)


def test_task_templates_equal_reference() -> None:
    assert {t.value: v for t, v in TASK_TEMPLATES.items()} == REFERENCE
    assert len(Task) == 7


def test_rendered_user_turns() -> None:
    assert chat_prompt("hi") == "[INST] hi [/INST]"
    assert task_user_turn("text2pose", "  the man kneels ") == "Generate pose of the description: the man kneels."
    assert task_user_turn(Task.POSE_EDITING, "raise the arm") == "Edit pose <poseA> by description: raise the arm."
    with pytest.raises(InvalidTextError):
        task_user_turn("text2pose", "  ")


def test_pose_description_ids_follow_official_segmentation(builder: PromptBuilder) -> None:
    tok, layout = builder.tokenizer, builder.layout
    pose = codes(1)
    row = builder.build_task("pose2text", poses=[pose])
    # "<s>" + "[INST] Generate description of the pose " + BEGIN 80 ids END + ". [/INST]": the space before the
    # pose stays with the text, the "." after END starts a new text segment.
    expected = ([layout.bos_id] + tok.encode("[INST] Generate description of the pose ")
                + [layout.pose_begin_id] + [layout.pose_id_offset + int(c) for c in pose] + [layout.pose_end_id]
                + tok.encode(". [/INST]"))
    assert row.input_ids == expected
    assert row.image_starts == []
    assert row.text == "[INST] Generate description of the pose <pose>. [/INST]"


def test_image_prompt_has_slots_between_markers(builder: PromptBuilder) -> None:
    tok, layout = builder.tokenizer, builder.layout
    row = builder.build_task("image_difference")
    head = [layout.bos_id] + tok.encode("[INST] Output the difference between image ")
    middle = tok.encode(" and ")
    image = [layout.image_start_id] + [layout.pad_id] * N_IMG + [layout.image_end_id]
    assert row.input_ids == head + image + middle + image + tok.encode(". [/INST]")
    assert row.image_starts == [len(head) + 1, len(head) + len(image) + len(middle) + 1]


def test_pose_edit_and_difference_order(builder: PromptBuilder) -> None:
    layout = builder.layout
    a, b = codes(2), codes(3)
    row = builder.build_task("pose_difference", poses=[a, b])
    ids = row.input_ids
    begins = [i for i, t in enumerate(ids) if t == layout.pose_begin_id]
    assert len(begins) == 2
    assert [t - layout.pose_id_offset for t in ids[begins[0] + 1:begins[0] + 81]] == a.tolist()
    assert [t - layout.pose_id_offset for t in ids[begins[1] + 1:begins[1] + 81]] == b.tolist()
    edit = builder.build_task("pose_edit", caption="bend the knees", poses=[a]).input_ids
    assert edit.count(layout.pose_begin_id) == 1 and edit.count(layout.pose_end_id) == 1


def test_free_form_placeholders(builder: PromptBuilder) -> None:
    layout = builder.layout
    a, b = codes(4), codes(5)
    two_plain = builder.build("Compare <pose> with <pose>.", poses=[a, b]).input_ids
    explicit = builder.build("Compare <poseA> with <poseB>.", poses={"A": a, "B": b}).input_ids
    assert two_plain == explicit
    # Official meaning: next to <poseA>/<poseB>, <pose> is pose A.
    mixed = builder.build("Is <pose> like <poseB>?", poses=[a, b]).input_ids
    begin = mixed.index(layout.pose_begin_id)
    assert mixed[begin + 1] - layout.pose_id_offset == a[0]
    with pytest.raises(InvalidInputError, match="placeholder"):
        builder.build("Describe <pose>.", poses=[])
    with pytest.raises(InvalidInputError, match="extra pose"):
        builder.build("Describe the person.", poses=[a])
    with pytest.raises(InvalidInputError, match="one image per placeholder"):
        builder.build("Look at <image>.", num_images=2)
    with pytest.raises(InvalidInputError, match="80 integer"):
        builder.build("Describe <pose>.", poses=[np.zeros(79, dtype=int)])
    with pytest.raises(InvalidInputError, match="codes in"):
        builder.build("Describe <pose>.", poses=[np.full(80, 512)])
    with pytest.raises(InvalidTextError):
        builder.build("   ")


def test_too_long_prompt_is_refused(builder: PromptBuilder) -> None:
    with pytest.raises(InvalidTextError, match="at most 512"):
        builder.build("word " * 600)


def test_batch_left_pads_and_places_images(builder: PromptBuilder) -> None:
    layout = builder.layout
    rows = [builder.build_task("text2pose", caption="the person kneels on the floor"),
            builder.build_task("image2pose"),
            builder.build_task("image_difference")]
    batch = builder.batch(rows)
    width = max(len(r.input_ids) for r in rows)
    assert batch.input_ids.shape == (3, width) and batch.lengths == [len(r.input_ids) for r in rows]
    for b, row in enumerate(rows):
        pad = width - len(row.input_ids)
        assert batch.input_ids[b, pad:].tolist() == row.input_ids
        assert not batch.attention_mask[b, :pad].any() and batch.attention_mask[b, pad:].all()
        assert batch.position_ids[b, pad:].tolist() == list(range(len(row.input_ids)))
        assert batch.image_starts[b] == [pad + s for s in row.image_starts]
    assert batch.num_images == 3
    mask = batch.image_mask
    assert mask.sum() == 3 * N_IMG
    # every slot sits right after <im_start> .. before <im_end>
    for b, starts in enumerate(batch.image_starts):
        for s in starts:
            assert batch.input_ids[b, s - 1] == layout.image_start_id
            assert batch.input_ids[b, s + N_IMG] == layout.image_end_id
    assert batch.to("cpu").input_ids.equal(batch.input_ids)
    assert batch.input_ids.dtype == torch.long


def test_the_sentence_encoder_reads_the_caption_of_a_turn_worded_as_a_task() -> None:
    """A free-form turn worded as a task template gives the sentence encoder what build_task gives it (the caption,
    not the fixed wording around it); any other turn is read whole, without its placeholders."""
    from unipose_sdk.text.prompts import encoder_text_of, task_user_turn

    for task, caption in ((Task.TEXT_TO_POSE, "a person squatting with both arms raised"),
                          (Task.POSE_EDITING, "raise the left arm above the head"),
                          (Task.TEXT_TO_POSE, "someone waving. Then bowing")):
        assert encoder_text_of(task_user_turn(task, caption)) == caption
    assert encoder_text_of("Edit pose <pose> by description: kneel.") == "kneel"
    assert encoder_text_of("Generate description of the pose <pose>.") == "Generate description of the pose ."
    assert encoder_text_of("  a person  waving <image> ") == "a person waving"


def test_a_turn_worded_as_a_task_is_recognised_and_pose_answers_are_known() -> None:
    from unipose_sdk.text.prompts import _TEMPLATE_PATTERNS, answers_with_pose, task_of_turn, task_user_turn

    for task in Task:
        turn = task_user_turn(task, "raise the left arm")
        assert task_of_turn(turn) is task and task_of_turn(turn.removesuffix(".") + "  ") is task
        assert sum(bool(p.fullmatch(turn)) for p in _TEMPLATE_PATTERNS.values()) == 1  # no two templates match
        assert answers_with_pose(task) == (task in (Task.POSE_ESTIMATION, Task.TEXT_TO_POSE, Task.POSE_EDITING))
    assert task_of_turn("Edit pose <poseA> by description: kneel.") is Task.POSE_EDITING
    assert task_of_turn("Output the difference between pose <pose> and pose <pose>.") is Task.POSE_DIFFERENCE
    for other in ("Generate pose of the description: .", "Generate pose of the description:   ",
                  "Please generate pose of the image: <image>.", "Show me a squat.", "",
                  "Generate pose of the image: <image>. Then describe it."):
        assert task_of_turn(other) is None, other
    assert not answers_with_pose(None)
