"""Assistant on the embedded model: a three-turn conversation (an image, a generated pose, an edit of it) whose
prompts equal the official mistral_instruct layout turn by turn, whose kept KV cache gives the tokens of a
recomputation from scratch, streamed replies equal to `ask`, seeded sampling, and the typed errors of bad turns.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unipose_sdk import Assistant, AssistantOptions, Generator, generation
from unipose_sdk.body.examples import example_image_path, load_example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import ConversationTooLongError, InvalidInputError, InvalidOptionError, InvalidTextError
from unipose_sdk.results import AssistantReply
from unipose_sdk.tasks.images import images_to_embeds
from unipose_sdk.text.prompts import PromptRow, Task, encoder_text_of

OPTIONS = {"max_new_tokens": 8, "max_poses": 1}
IMAGE_TURN = "Generate pose of the image: <image>."
TEXT_TURN = "Generate pose of the description: a person squatting with both arms raised."
EDIT_TURN = "Edit pose <pose> by description: raise the left arm above the head."
DESCRIBE_TURN = "Generate description of the pose <pose>."


def three_turns(assistant: Assistant) -> list[AssistantReply]:
    assistant.reset()
    first = assistant.ask(IMAGE_TURN, images=[example_image_path()])
    second = assistant.ask(TEXT_TURN)
    third = assistant.ask(EDIT_TURN, poses=[second.poses[0]])
    return [first, second, third]


@pytest.fixture(scope="module")
def assistant() -> Assistant:
    return Assistant.from_pretrained(**OPTIONS)


@pytest.fixture(scope="module")
def conversation(assistant: Assistant) -> list[AssistantReply]:
    return three_turns(assistant)


def _other(assistant: Assistant, **options: object) -> Assistant:
    """A second conversation over the same loaded model."""
    return Assistant.from_session(assistant.session, AssistantOptions(**{**OPTIONS, **options}))


# ------------------------------------------------------------------------------------------- the conversation


def test_three_turns_mix_an_image_a_generated_pose_and_its_edit(assistant: Assistant,
                                                                conversation: list[AssistantReply]) -> None:
    codebook = assistant.session.config.vocab.codebook_size
    for turn, reply in enumerate(conversation):
        # Every turn is a pose task, so every reply starts with its pose (forced where greedy would not); what
        # follows is the model's own (v2 writes on after the edit's pose until max_new_tokens).
        assert reply.turn == turn and reply.finish_reason in ("eos", "length") and reply.text.startswith("<pose>")
        assert reply.text.count("<pose>") == len(reply.poses) == 1
        item = reply.poses[0]
        assert isinstance(item.pose, Pose) and len(item.pose) == 1
        assert len(item.codes) == 80 and all(0 <= c < codebook for c in item.codes)
        assert item.joints_m.shape == (22, 3) and np.isfinite(item.joints_m).all()
        assert reply.timing_ms["total"] > 0 and reply.run.backend == "torch"
    assert "vision" in conversation[0].timing_ms and "vision" not in conversation[1].timing_ms
    assert [t.reply for t in assistant.history] == conversation
    assert assistant.history[2].poses == ("<a pose of an earlier reply>",)
    # The edit starts from the generated pose's codes: its prompt holds them verbatim.
    block = [assistant.session.config.vocab.pose_id_offset + c for c in conversation[1].poses[0].codes]
    third = conversation[2].prompt_ids
    assert any(third[i:i + 80] == block for i in range(conversation[1].prompt_tokens, len(third)))


def test_each_turn_reuses_the_whole_previous_prompt_and_computes_only_the_last_exchange(
        conversation: list[AssistantReply]) -> None:
    first, second, third = conversation
    assert first.reused_tokens == 0 and first.computed_tokens == first.prompt_tokens
    # The official layout rewrites each answer as text after "[/INST]", so the cache is valid up to there.
    assert second.reused_tokens == first.prompt_tokens
    assert third.reused_tokens == second.prompt_tokens
    assert third.computed_tokens == third.prompt_tokens - second.prompt_tokens < third.prompt_tokens // 2


def official_prompt_ids(assistant: Assistant, turns: list[tuple[str, list[list[int]], str | None]]) -> list[int]:
    """The official prompt written out independently: LLaVA's mistral_instruct get_prompt (sep "", sep2 "</s>",
    empty system) over UniPose's template strings (a pose as <pose_id_K> ... <pose_id_K+1>, an image as
    <im_start><image><im_end>), tokenized as the slow tokenizer does: split at added tokens and <image>, each text
    stretch encoded on its own, BOS once. A model with a sentence encoder (unipose-tiny v2, not in the official
    code) adds its rows' pad slots at the start of every turn: after BOS and after each </s>."""
    session = assistant.session
    layout, tokenizer = session.config.vocab, session.tokenizer
    text_rows = [layout.pad_id] * getattr(session.prompts, "text_rows", 0)
    begin, end = f"<pose_id_{layout.codebook_size}>", f"<pose_id_{layout.codebook_size + 1}>"

    def pose_string(codes: list[int]) -> str:
        return begin + "".join(f"<pose_id_{c}>" for c in codes) + end

    text = ""
    for user, poses, answer in turns:
        for codes in poses:
            user = user.replace("<pose>", pose_string(codes), 1)
        user = user.replace("<image>", "<im_start><image><im_end>")
        text += f"[INST] {user} [/INST]"
        if answer is not None:
            text += " " + answer + " " + "</s>"
    ids = [layout.bos_id, *text_rows]
    for piece in re.split(r"(<pose_id_\d+>|<im_start>|<im_end>|</s>|<image>)", text):
        if not piece:
            continue
        if piece == "<image>":
            ids += [layout.pad_id] * session.config.image_tokens
        elif piece == "</s>":
            ids += [layout.eos_id, *text_rows]
        elif piece.startswith(("<pose_id_", "<im_")):
            ids.append(tokenizer.token_to_id(piece))
        else:
            ids += tokenizer.encode(piece)
    return ids


def test_prompt_ids_equal_the_official_layout_turn_by_turn(assistant: Assistant,
                                                           conversation: list[AssistantReply]) -> None:
    def answer(reply: AssistantReply) -> str:
        text = reply.text
        for item in reply.poses:
            begin = assistant.session.config.vocab.codebook_size
            text = text.replace("<pose>", f"<pose_id_{begin}>" + "".join(f"<pose_id_{c}>" for c in item.codes)
                                + f"<pose_id_{begin + 1}>", 1)
        return text

    first, second, third = conversation
    done = [(IMAGE_TURN, [], answer(first)), (TEXT_TURN, [], answer(second))]
    assert first.prompt_ids == official_prompt_ids(assistant, [(IMAGE_TURN, [], None)])
    assert second.prompt_ids == official_prompt_ids(assistant, [done[0], (TEXT_TURN, [], None)])
    assert third.prompt_ids == official_prompt_ids(assistant, [*done, (EDIT_TURN, [second.poses[0].codes], None)])
    eos = assistant.session.config.vocab.eos_id
    assert third.prompt_ids.count(eos) == 2  # the two earlier turns closed with </s>


def test_the_kept_cache_gives_the_tokens_of_a_recomputation_from_scratch(assistant: Assistant,
                                                                        conversation: list[AssistantReply]) -> None:
    session = assistant.session
    third = conversation[2]
    ids = third.prompt_ids
    starts = [i + 1 for i, t in enumerate(ids) if t == session.config.vocab.image_start_id]
    with torch.inference_mode():
        embeds = images_to_embeds(session, [example_image_path()])
    config = assistant.options.generation_config(session.config.vocab, turn=2, start_with_pose=True)  # an edit
    scratch = session.generate([PromptRow(ids, starts, "", text_slots=text_slots_of(assistant, ids, TURNS))],
                               embeds, config)[0]  # one prefill, fresh cache
    assert scratch.token_ids == third.generated_ids
    assert [c.tolist() for c in scratch.pose_codes] == [p.codes for p in third.poses]


TURNS = (IMAGE_TURN, TEXT_TURN, EDIT_TURN)


def text_slots_of(assistant: Assistant, ids: list[int], turns: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    """A conversation prompt's sentence-encoder slots, found independently: each turn's rows open it (after BOS,
    then after each </s>), reading what `encoder_text_of` takes of the turn; () for a model without an encoder."""
    if not getattr(assistant.session.prompts, "text_rows", 0):
        return ()
    eos = assistant.session.config.vocab.eos_id
    starts = [1] + [i + 1 for i, token in enumerate(ids) if token == eos]
    assert len(starts) == len(turns)
    return tuple((start, encoder_text_of(turn)) for start, turn in zip(starts, turns))


def test_continue_generation_reuses_a_prefix_and_matches_generate() -> None:
    from unipose_sdk.models.config import get_preset
    from unipose_sdk.models.llm import MistralLM

    config = get_preset("unipose-tiny")
    torch.manual_seed(1)
    model = MistralLM(config.llm).eval()
    vocab = config.vocab
    prompt = [1, *range(300, 340)]
    longer = [*prompt, *range(500, 520)]
    run = generation.GenerationConfig(12)

    def embed_from(ids: list[int]):  # type: ignore[no-untyped-def]
        return lambda start: model.embed(torch.tensor([ids[start:]]))[0]

    prefix = generation.PrefixCache(model, step=16)
    first = list(generation.continue_generation(model, prefix, prompt, embed_from(prompt), vocab, run,
                                                max_context=512))
    events = list(generation.continue_generation(model, prefix, longer, embed_from(longer), vocab, run,
                                                 max_context=512))
    result = events[-1].result
    assert first[-1].result.reused_tokens == 0 and result.reused_tokens == len(prompt)
    assert prefix.capacity % 16 == 0 and prefix.capacity >= len(longer) + 12
    assert result.token_ids == generation.generate(model, [longer], vocab, run)[0].token_ids
    assert [e.token for e in events if e.kind == "token"] == [t for t in result.token_ids]


# ------------------------------------------------------------------------------------------- streaming


def test_streaming_yields_the_reply_ask_returns(assistant: Assistant, conversation: list[AssistantReply]) -> None:
    streamed = _other(assistant)
    replies, texts, poses = [], [], []
    for text, images, pose_of in ((IMAGE_TURN, [example_image_path()], None), (TEXT_TURN, [], None),
                                  (EDIT_TURN, [], 1)):
        stream = streamed.ask_stream(text, images=images, poses=[replies[pose_of].poses[0]] if pose_of else None)
        chunks = list(stream)
        replies.append(stream.reply)
        texts.append("".join(c.text for c in chunks))
        poses.append([c.pose for c in chunks if c.pose is not None])
    for reply, asked, text, made in zip(replies, conversation, texts, poses):
        assert reply.text == asked.text == text
        assert reply.generated_ids == asked.generated_ids and reply.prompt_ids == asked.prompt_ids
        assert [p.codes for p in made] == [p.codes for p in reply.poses] == [p.codes for p in asked.poses]
        assert made[0].pose.allclose(asked.poses[0].pose)


def test_a_text_reply_streams_in_pieces_and_the_callback_sees_the_same(assistant: Assistant) -> None:
    talker = _other(assistant, max_new_tokens=24)
    pose = load_example_pose("squatting")
    pieces = [c.text for c in talker.ask_stream(DESCRIBE_TURN, poses=[pose]) if c.text]
    talker.reset()
    seen: list[str] = []
    reply = talker.ask(DESCRIBE_TURN, poses=[pose], on_chunk=lambda c: seen.append(c.text))
    assert len(pieces) > 3 and "".join(pieces) == reply.text and "".join(seen) == reply.text
    assert not reply.poses and len(reply.generated_ids) <= 24
    # A text reply (the ban on repeated sentences at work) is also the one a fresh prefill gives.
    config = talker.options.generation_config(talker.session.config.vocab, turn=0)
    slots = text_slots_of(talker, reply.prompt_ids, (DESCRIBE_TURN,))
    scratch = talker.session.generate([PromptRow(reply.prompt_ids, [], "", text_slots=slots)], None, config)[0]
    assert scratch.token_ids == reply.generated_ids


def test_an_abandoned_stream_leaves_no_turn_and_the_next_turn_is_consistent(assistant: Assistant) -> None:
    talker = _other(assistant, max_new_tokens=24)
    pose = load_example_pose("squatting")
    stream = talker.ask_stream(DESCRIBE_TURN, poses=[pose])
    next(iter(stream))
    with pytest.raises(InvalidInputError, match="one turn at a time"):
        talker.ask(TEXT_TURN)
    stream.close()
    assert talker.history == ()
    with pytest.raises(InvalidInputError, match="closed before it finished"):
        _ = stream.reply
    reply = talker.ask(DESCRIBE_TURN, poses=[pose])
    fresh = _other(assistant, max_new_tokens=24).ask(DESCRIBE_TURN, poses=[pose])
    assert reply.generated_ids == fresh.generated_ids and reply.reused_tokens > 0


# ------------------------------------------------------------------------------------------- decoding


def test_greedy_first_turn_gives_the_generator_s_pose(assistant: Assistant) -> None:
    reply = _other(assistant).ask(TEXT_TURN)
    with Generator.from_pretrained(max_new_tokens=8) as generator:
        expected = generator.generate("a person squatting with both arms raised")
    assert reply.poses[0].codes == expected.pose_codes


def test_a_guided_model_s_first_turn_gives_the_guided_generator_s_pose(tmp_path: Path) -> None:
    from unipose_sdk.checkpoint.embedded import EMBEDDED_DIR

    guided_dir = tmp_path / "guided"
    shutil.copytree(EMBEDDED_DIR, guided_dir)
    meta = json.loads((guided_dir / "config.json").read_text())
    meta["config"]["text_to_pose_guidance"] = 3.0
    (guided_dir / "config.json").write_text(json.dumps(meta))
    caption = "a person squatting with both arms raised"
    with Assistant.from_pretrained(guided_dir, **OPTIONS) as talker:
        first = talker.ask(TEXT_TURN)
        later = talker.ask(TEXT_TURN)  # guided by the single-turn logits, with the history read as usual
    with Generator.from_pretrained(guided_dir, max_new_tokens=8) as generator:
        expected = generator.generate(caption)
    with Generator.from_pretrained(guided_dir, max_new_tokens=8, pose_guidance=0.0) as generator:
        unguided = generator.generate(caption)
    assert first.poses[0].codes == expected.pose_codes != unguided.pose_codes
    assert len(later.poses) == 1


def test_sampling_repeats_under_a_seed_and_differs_across_seeds(assistant: Assistant) -> None:
    def sampled(seed: int) -> list[list[int]]:
        talker = _other(assistant, temperature=1.0, top_p=0.9, seed=seed)
        return [talker.ask(TEXT_TURN).generated_ids, talker.ask(DESCRIBE_TURN, poses=[load_example_pose()]).text]

    first, again, other = sampled(3), sampled(3), sampled(4)
    assert first == again
    assert first[0] != other[0]
    greedy = _other(assistant).ask(TEXT_TURN).generated_ids
    assert first[0] != greedy


def test_pose_task_turns_start_with_a_pose_unless_asked_to_decode_freely(assistant: Assistant,
                                                                          conversation: list[AssistantReply]) -> None:
    """The forced start is the only difference: a free conversation's edit turn gives the tokens of a scratch
    prefill without it, and a turn not worded as a pose task is never forced."""
    session, third = assistant.session, conversation[2]
    free = _other(assistant, pose_tasks_answer_with_pose=False)
    free_turns = three_turns(free)
    assert free_turns[2].prompt_ids[:free_turns[1].prompt_tokens] == free_turns[1].prompt_ids
    ids = free_turns[2].prompt_ids
    starts = [i + 1 for i, t in enumerate(ids) if t == session.config.vocab.image_start_id]
    with torch.inference_mode():
        embeds = images_to_embeds(session, [example_image_path()])
    row = PromptRow(ids, starts, "", text_slots=text_slots_of(assistant, ids, TURNS))
    for forced, expected in ((False, free_turns[2]), (True, None)):
        config = free.options.generation_config(session.config.vocab, turn=2, start_with_pose=forced)
        scratch = session.generate([row], embeds, config)[0]
        if expected is not None:
            assert scratch.token_ids == expected.generated_ids
        else:
            assert scratch.token_ids[0] == session.config.vocab.pose_begin_id and len(scratch.pose_codes) == 1
    if free_turns[1].generated_ids == conversation[1].generated_ids and ids == third.prompt_ids:
        assert third.generated_ids == scratch.token_ids  # the default forces the start, nothing else
    chat = _other(assistant).ask("Describe a person squatting.")  # free wording: decoded freely
    config = assistant.options.generation_config(session.config.vocab, turn=0)
    slots = text_slots_of(assistant, chat.prompt_ids, ("Describe a person squatting.",))
    assert chat.generated_ids == session.generate([PromptRow(chat.prompt_ids, [], "", text_slots=slots)], None,
                                                  config)[0].token_ids


def test_text_task_turns_never_answer_with_a_pose(assistant: Assistant) -> None:
    """A description turn after pose turns: its reply is text whatever the model's first choice; the ban is the
    only change (free decoding gives the same ids wherever it does not start a pose), and it holds at every step:
    a prompt whose greedy answer is a pose gets text under `text_only`."""
    session, vocab = assistant.session, assistant.session.config.vocab
    talkers = {name: _other(assistant, max_new_tokens=6, text_tasks_answer_with_text=name) for name in (True, False)}
    replies = {}
    for name, talker in talkers.items():
        made = talker.ask("Generate pose of the description: a person squatting.")
        edited = talker.ask("Edit pose <pose> by description: raise the left arm.", poses=[made.poses[0]])
        replies[name] = talker.ask(DESCRIBE_TURN, poses=[edited.poses[0]])
    assert not replies[True].poses and replies[True].text.strip()
    assert vocab.pose_begin_id not in replies[True].generated_ids
    if vocab.pose_begin_id not in replies[False].generated_ids:
        assert replies[True].generated_ids == replies[False].generated_ids
    row = session.prompts.build_task(Task.TEXT_TO_POSE, "a person squatting with both arms raised")
    free = assistant.options.generation_config(vocab)
    assert session.generate([row], None, free)[0].token_ids[0] == vocab.pose_begin_id
    banned = session.generate([row], None, dataclasses.replace(free, text_only=True))[0]
    assert vocab.pose_begin_id not in banned.token_ids and not banned.pose_codes
    with pytest.raises(InvalidInputError, match="text_only"):
        dataclasses.replace(free, start_with_pose=True, text_only=True)


def test_sample_ids_keeps_to_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]]).log_softmax(-1).repeat(2000, 1)
    draws = generation.sample_ids(logits, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0}  # the top id alone carries more than half of the mass
    draws = generation.sample_ids(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) >= {0, 1}


@pytest.mark.parametrize("fields, match", [
    ({"temperature": -0.5}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"seed": -1}, "seed"),
    ({"max_text_tokens": -1}, "max_text_tokens")])
def test_generation_config_refuses_bad_sampling_fields(fields: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        generation.GenerationConfig(8, **fields)


def test_options_refuse_bad_values() -> None:
    with pytest.raises(InvalidOptionError, match="top_p"):
        AssistantOptions(top_p=1.5)
    with pytest.raises(InvalidOptionError, match="max_poses"):
        AssistantOptions(max_poses=-1)
    with pytest.raises(InvalidOptionError, match="pose_tasks_answer_with_pose='yes'"):
        AssistantOptions(pose_tasks_answer_with_pose="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="text_tasks_answer_with_text=1"):
        AssistantOptions(text_tasks_answer_with_text=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="'temprature' -> 'temperature'"):
        Assistant.from_pretrained(temprature=0.5)


# ------------------------------------------------------------------------------------------- bad turns


@pytest.mark.parametrize("text, images, poses, error, names", [
    ("   ", None, None, InvalidTextError, ["turn='   '", "non-empty"]),
    ("Describe <poseC> please.", None, None, InvalidTextError, ["<poseC>", "Did you mean <pose>"]),
    ("Describe the <video>.", None, None, InvalidTextError, ["<video>", "space after '<'"]),
    (IMAGE_TURN, None, None, InvalidInputError, ["0 images", "1 <image> placeholder", "pass 1 image"]),
    ("Hello.", ["x.png"], None, InvalidInputError, ["1 image for a turn with 0", "Put <image>"]),
    (DESCRIBE_TURN, None, None, InvalidInputError, ["0 poses", "<pose>", "pass 1 pose"]),
    (DESCRIBE_TURN, None, "two", InvalidInputError, ["2 poses", "1 pose"]),
    ("Output the difference between pose <poseA> and pose <poseB>.", None, {"A": "p"}, InvalidInputError,
     ["poses named ['A']", "['A', 'B']"]),
])
def test_bad_turns_get_typed_errors_naming_the_value_and_the_fix(
        assistant: Assistant, text: str, images: list | None, poses: object, error: type, names: list[str]) -> None:
    if poses == "two":
        poses = [load_example_pose(), load_example_pose()]
    elif isinstance(poses, dict):
        poses = {"A": load_example_pose()}
    before = assistant.history
    with pytest.raises(error) as caught:
        assistant.ask(text, images=images, poses=poses)
    for name in names:
        assert name in str(caught.value)
    assert assistant.history == before


def test_a_history_too_long_for_the_context_is_refused_before_any_work(assistant: Assistant) -> None:
    talker = _other(assistant)
    talker.ask(TEXT_TURN)
    talker.ask(TEXT_TURN)
    with pytest.raises(ConversationTooLongError) as caught:
        for _ in range(6):
            talker.ask(TEXT_TURN)
    message = str(caught.value)
    assert "history of" in message and "at most 512 tokens" in message and "reset()" in message
    kept = len(talker.history)
    with pytest.raises(ConversationTooLongError):
        talker.ask(TEXT_TURN)
    assert len(talker.history) == kept
    talker.reset()
    assert talker.history == () and talker.ask(TEXT_TURN).reused_tokens == 0
    with pytest.raises(ConversationTooLongError, match="shorten the turn"):
        talker.ask("Describe " + "a very long request " * 200)


def test_a_closed_assistant_refuses_calls(assistant: Assistant) -> None:
    talker = _other(assistant)
    with talker:
        pass
    with pytest.raises(InvalidInputError, match="closed Assistant"):
        talker.ask(TEXT_TURN)


def test_a_reply_saves_its_json_and_every_pose(tmp_path: Path, conversation: list[AssistantReply]) -> None:
    written = conversation[2].save(tmp_path, "turn")
    assert sorted(p.name for p in written) == ["turn.json", "turn.pose0.npy", "turn.pose0.npz", "turn.pose0.png"]
    assert Pose.load(tmp_path / "turn.pose0.npz").allclose(conversation[2].poses[0].pose, atol=1e-5)
    document = (tmp_path / "turn.json").read_text()
    assert '"reused_tokens"' in document and '"codes"' in document


def test_a_sentence_encoder_model_gets_its_rows_before_each_turn(assistant: Assistant) -> None:
    from unipose_sdk.text.prompts import ConversationTurn, PromptBuilder

    session = assistant.session
    builder = PromptBuilder(session.tokenizer, session.config.image_tokens, text_rows=4)
    single = builder.build_conversation([ConversationTurn(DESCRIBE_TURN, [[1] * 80])])
    assert single.input_ids == builder.build(DESCRIBE_TURN, [[1] * 80]).input_ids
    assert single.text_slots == ((1, "Generate description of the pose ."),)
    turns = [ConversationTurn(TEXT_TURN, answer=([2] * 80, ".")), ConversationTurn(DESCRIBE_TURN, [[1] * 80])]
    two = builder.build_conversation(turns)
    (first, _), (second, text) = two.text_slots
    assert first == 1 and text == "Generate description of the pose ." and two.text_start == second
    eos = session.config.vocab.eos_id
    assert two.input_ids[second - 1] == eos and two.input_ids[second:second + 4] == [session.config.vocab.pad_id] * 4
    # The first turn's slots are those of the first turn asked alone: a new turn keeps the cached prefix.
    alone = builder.build_conversation([ConversationTurn(TEXT_TURN)])
    assert two.input_ids[:len(alone.input_ids)] == alone.input_ids


# ------------------------------------------------------------------------------------------- restoring a history


def test_a_restored_history_gives_the_live_prompt_and_reply(assistant: Assistant,
                                                            conversation: list[AssistantReply]) -> None:
    from unipose_sdk.tasks.assistant import PastTurn

    first, second, third = conversation  # asked live: an image, a text, then an edit of the second reply's pose
    restored = _other(assistant)
    restored.restore([PastTurn.of(IMAGE_TURN, first, images=[example_image_path()]),
                      PastTurn(TEXT_TURN, second.text, [p.codes for p in second.poses])])
    assert [t.reply.text for t in restored.history] == [first.text, second.text]
    assert restored.history[1].reply.poses[0].codes == second.poses[0].codes
    assert restored.history[1].reply.poses[0].pose.allclose(second.poses[0].pose, atol=1e-5)
    reply = restored.ask(EDIT_TURN, poses=[restored.history[1].reply.poses[0]])
    assert reply.turn == 2 and reply.reused_tokens == 0  # nothing of the live conversation's cache is at hand
    assert "vision" in reply.timing_ms  # the restored turn's image is read with this turn
    assert reply.prompt_ids == third.prompt_ids
    assert reply.generated_ids == third.generated_ids and reply.text == third.text
    assert [p.codes for p in reply.poses] == [p.codes for p in third.poses]


def test_a_restored_history_is_checked_as_ask_checks_a_turn_before_any_work(assistant: Assistant) -> None:
    from unipose_sdk.tasks.assistant import PastTurn

    talker = _other(assistant)
    talker.ask(TEXT_TURN)
    before = talker.history
    pose_reply = ("<pose>", [[1] * 80])
    for turns, error, names in [
        ([PastTurn(DESCRIBE_TURN, "a squat.")], InvalidInputError, ["turn 0 of the restored history", "0 poses"]),
        ([PastTurn(TEXT_TURN, *pose_reply), PastTurn("Hi <poseC>.", "")], InvalidTextError,
         ["turn 1 of the restored history", "<poseC>", "Did you mean <pose>"]),
        ([PastTurn("  ", "")], InvalidTextError, ["turn='  '"]),
        ([PastTurn(TEXT_TURN, "<pose> and <pose>", [[1] * 80])], InvalidInputError,
         ["2 <pose> and the codes of 1 pose"]),
        ([PastTurn(TEXT_TURN, "<pose>", [[4096] * 80])], InvalidInputError, ["reply pose 0", "codes in [0,"]),
        ([PastTurn(TEXT_TURN, *pose_reply)] * 6, ConversationTooLongError,
         ["at most 512 tokens", "Restore only the latest turns (these 6 do not fit)"]),
    ]:
        with pytest.raises(error) as caught:
            talker.restore(turns)
        for name in names:
            assert name in str(caught.value), str(caught.value)
        assert talker.history == before  # refused before anything changed
    talker.restore([PastTurn(TEXT_TURN, *pose_reply)])
    first = talker.ask(DESCRIBE_TURN, poses=[load_example_pose()])
    assert first.turn == 1 and talker.ask(TEXT_TURN).reused_tokens >= first.prompt_tokens  # the cache works on
    talker.restore([])
    assert talker.history == () and talker.ask(TEXT_TURN).turn == 0
