"""Descriptions state nothing twice: the generation loop's ban on exact sentence copies and the text policy; and
they keep the sentences the model is sure enough of (sentence floors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from unipose_sdk.data.captions import parse_facts
from unipose_sdk.generation import ban_repeated_sentences
from unipose_sdk.text.sentences import drop_repeated_sentences

EXAMPLES = Path(__file__).resolve().parents[1] / "unipose_sdk" / "assets" / "examples"

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


# ---- sentence floors: a description keeps what the model is sure of --------------------------------------------
def test_confident_sentences_keep_the_sure_ones_in_order() -> None:
    from unipose_sdk.text.sentences import confident_sentences

    ids = [5, 6, END, 7, END, 8, 6, END, 5]  # three sentences and an unfinished fourth
    logprobs = [-0.1, -0.3, -0.2, -2.0, -2.0, -0.5, float("nan"), -0.5, -0.05]
    assert confident_sentences(ids, logprobs, {END}, -1.0) == [5, 6, END, 8, 6, END, 5]
    assert confident_sentences(ids, logprobs, {END}, -20.0) == ids
    # Nothing that sure: the surest sentence still speaks (NaN ids are left out of a sentence's mean).
    assert confident_sentences(ids, logprobs, {END}, 0.0) == [5]
    assert confident_sentences([], [], {END}, -1.0) == []
    with pytest.raises(ValueError):
        confident_sentences(ids, logprobs[:-1], {END}, -1.0)


def test_a_describer_keeps_the_sentences_its_floor_allows() -> None:
    """Image descriptions default to the model's floor, pose descriptions to every sentence; an explicit floor
    applies to every description, and keep_all_sentences gives the model's whole answer."""
    from unipose_sdk import Describer, Generator
    from unipose_sdk.options import DescriberOptions

    image = EXAMPLES / "person.png"
    whole = Describer.from_pretrained(max_new_tokens=64, keep_all_sentences=True)
    default = Describer.from_session(whole.session, DescriberOptions(max_new_tokens=64))
    floor = whole.session.config.image_description_min_sentence_logprob
    assert floor is not None  # the embedded model ships one (chosen on validation pools)
    at_floor = Describer.from_session(whole.session, DescriberOptions(max_new_tokens=64, min_sentence_logprob=floor))
    surest = Describer.from_session(whole.session, DescriberOptions(max_new_tokens=64, min_sentence_logprob=0.0))
    everything = Describer.from_session(whole.session, DescriberOptions(max_new_tokens=64, min_sentence_logprob=-20.0))

    full = whole.describe(image=image).text
    assert default.describe(image=image).text == at_floor.describe(image=image).text
    assert everything.describe(image=image).text == full
    one = _sentences(surest.describe(image=image).text)
    assert len(one) == 1 and one[0] in _sentences(full)
    assert set(_sentences(default.describe(image=image).text)) <= set(_sentences(full))

    pose = Generator.from_session(whole.session).generate("a person squatting with both arms raised").pose
    assert default.describe(pose=pose).text == whole.describe(pose=pose).text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text)]


def test_describer_options_check_the_floor() -> None:
    from unipose_sdk.errors import InvalidOptionError
    from unipose_sdk.options import DescriberOptions

    for bad in (0.5, -21.0, float("nan"), "low", True):
        with pytest.raises(InvalidOptionError, match="min_sentence_logprob"):
            DescriberOptions(min_sentence_logprob=bad)
    with pytest.raises(InvalidOptionError, match="keep_all_sentences"):
        DescriberOptions(keep_all_sentences="yes")
    with pytest.raises(InvalidOptionError, match="one of them"):
        DescriberOptions(keep_all_sentences=True, min_sentence_logprob=-1.0)
    assert DescriberOptions().sentence_floor(-0.9) == -0.9
    assert DescriberOptions(min_sentence_logprob=-2).sentence_floor(-0.9) == -2.0
    assert DescriberOptions(keep_all_sentences=True).sentence_floor(-0.9) is None
    assert DescriberOptions().sentence_floor(None) is None


def test_a_models_floor_is_checked_when_its_config_is_read() -> None:
    import dataclasses

    from test_text_encoder import small_config

    from unipose_sdk.errors import ConfigError
    from unipose_sdk.models.config import UniPoseConfig

    config = dataclasses.replace(small_config(), image_description_min_sentence_logprob=-0.9)
    assert UniPoseConfig.from_dict(config.to_dict()) == config
    assert UniPoseConfig.from_dict({**config.to_dict(), "image_description_min_sentence_logprob": None}) \
        .image_description_min_sentence_logprob is None
    for bad in (1.0, "x", -50, True):
        with pytest.raises(ConfigError, match="image_description_min_sentence_logprob"):
            UniPoseConfig.from_dict({**config.to_dict(), "image_description_min_sentence_logprob": bad})
    with pytest.raises(ValueError):
        dataclasses.replace(config, image_description_min_sentence_logprob=3.0)
