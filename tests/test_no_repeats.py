"""Descriptions state nothing twice: the generation loop's ban on exact sentence copies and the text policy."""

from __future__ import annotations

import re

import torch

from unipose_sdk.data.captions import parse_facts
from unipose_sdk.generation import ban_repeated_sentences
from unipose_sdk.text.sentences import drop_repeated_sentences

END, EOS = 9, 2


def test_the_id_that_would_end_a_copy_is_banned() -> None:
    logits = torch.zeros(3, 12)
    histories = [
        [5, 6, END, 5, 6],  # "A B. A B" -> ending now would copy "A B."
        [5, 6, END, 5, 7],  # "A B. A C" -> no copy in reach
        [5, 6],             # no sentence stated yet
    ]
    out = ban_repeated_sentences(logits, histories, frozenset({END}), EOS)
    assert out[0, END] == float("-inf") and out[0, EOS] == float("-inf")
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()
    assert torch.isfinite(logits).all()  # the caller's logits are not changed
    assert ban_repeated_sentences(logits, [[1, 2]], frozenset({END}), EOS) is logits


def test_ledgers_kept_across_steps_ban_what_a_whole_reading_bans() -> None:
    """The per-call ledgers read only the new ids of each step and ban exactly what reading every row's whole
    answer bans, step after step (two end ids, rows of different lengths, a row that restarts)."""
    from unipose_sdk.generation import SentenceLedger

    ends = frozenset({END, 10})
    generator = torch.Generator().manual_seed(0)
    streams = [torch.randint(3, 12, (300,), generator=generator).tolist() for _ in range(3)]
    ledgers = [SentenceLedger() for _ in streams]
    logits = torch.zeros(3, 12)
    steps_with_bans = 0
    for step in range(1, 301):
        histories = [stream[: step if row != 2 else step % 120] for row, stream in enumerate(streams)]
        whole = ban_repeated_sentences(logits, histories, ends, EOS)
        kept = ban_repeated_sentences(logits, histories, ends, EOS, ledgers)
        assert torch.equal(whole, kept), step
        steps_with_bans += whole is not logits
    assert steps_with_bans > 20 and ledgers[0].seen == 300 and len(ledgers[0].ends_by_prefix) > 10


def test_text_policy_drops_restated_clauses_and_keeps_the_rest() -> None:
    facts = lambda clause: {f.key for f in parse_facts(clause)}  # noqa: E731
    text = ("The person is in a deep squat; their right arm is stretched out in front. Their right arm is "
            "stretched out in front. Their left arm is pointing down, and their left arm is hanging down while "
            "their right knee is fully bent.")
    assert drop_repeated_sentences(text, facts) == (
        "The person is in a deep squat; their right arm is stretched out in front. Their left arm is pointing "
        "down while their right knee is fully bent.")
    assert drop_repeated_sentences("Move 3.5 cm to the left. Then raise your arm!") == \
        "Move 3.5 cm to the left. Then raise your arm!"
    assert drop_repeated_sentences("") == ""


def test_a_clause_contradicting_an_earlier_one_about_the_same_body_part_is_dropped() -> None:
    from unipose_sdk.tasks.describer import stated_topics

    text = ("Their left arm is pointing forward. Their right knee is deeply bent. Their left arm is pointing down. "
            "Their right hand is above their head, and their right knee is fully extended. Their left arm is "
            "stretched upwards while their left knee is slightly bent.")
    assert drop_repeated_sentences(text, stated_topics) == (
        "Their left arm is pointing forward. Their right knee is deeply bent. Their right hand is above their "
        "head. Their left knee is slightly bent.")
    # The left and right of a part are different topics; so are an arm's direction and its hand's height.
    kept = "Their left arm is pointing down. Their right arm is pointing up. Their left hand is at waist level."
    assert drop_repeated_sentences(kept, stated_topics) == kept
    assert stated_topics("Their left arm is pointing down.") == {("arm_direction", "left")}
    assert stated_topics("Move 3.5 cm to the left.") == set()


def _statements(text: str) -> list[str]:
    pieces = re.split(r"[.;!?]\s*|,\s*and\s+|\s+and\s+|,\s*while\s+|\s+while\s+|,\s*", text.lower())
    return [" ".join(p.split()) for p in pieces if p.strip()]


def test_embedded_describer_states_no_sentence_twice(generator, describer) -> None:  # noqa: ANN001
    prompts = ["a person squatting with both arms raised", "someone kneeling on one knee", "do a T-pose",
               "a man lying on his back", "stand on your left leg", "arms crossed, looking down"]
    poses = [r.pose for r in generator.generate(prompts)]
    for result in describer.describe(pose=poses):
        statements = _statements(result.text)
        assert statements, result.text
        assert len(statements) == len(set(statements)), result.text
