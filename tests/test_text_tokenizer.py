"""TextTokenizer: added-token ids are the layout's, plain-text encoding, decoding, save/load, refusal of shifted ids."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tokenizers import AddedToken, Tokenizer

from unipose_sdk.errors import ModelNotFoundError, VocabularyError
from unipose_sdk.models.config import get_preset
from unipose_sdk.text.tokenizer import TextTokenizer, added_token_names, build_tiny_tokenizer, expected_token_ids

CORPUS = [
    "The person is standing with the left arm raised above the head.",
    "A man sits on the floor with his legs crossed and his hands on his knees.",
    "The right knee is bent and the torso leans forward.",
    "[INST] Generate pose of the description: the person kneels. [/INST]",
] * 10


@pytest.fixture(scope="module")
def tiny() -> TextTokenizer:
    return build_tiny_tokenizer(CORPUS, 1024)


def test_tiny_layout_ids_are_exact(tiny: TextTokenizer) -> None:
    layout = get_preset("unipose-tiny").vocab
    assert tiny.layout == layout
    assert tiny.backend.get_vocab_size(with_added_tokens=True) == layout.vocab_size == 1620
    assert tiny.token_to_id("<unk>") == 0 and tiny.token_to_id("<s>") == 1 and tiny.token_to_id("</s>") == 2
    assert tiny.token_to_id("<pose_id_0>") == 1024
    assert tiny.token_to_id("<pose_id_511>") == 1024 + 511
    assert tiny.token_to_id("<pose_id_512>") == layout.pose_begin_id == 1536
    assert tiny.token_to_id("<pose_id_513>") == layout.pose_end_id == 1537
    assert tiny.token_to_id("<im_start>") == layout.image_start_id == 1538
    assert tiny.token_to_id("<im_end>") == layout.image_end_id == 1539
    assert tiny.token_to_id("<pose_query_0>") == layout.pose_query_offset == 1540
    assert tiny.token_to_id("<pose_query_79>") == layout.vocab_size - 1


def test_7b_layout_names_match_reference_ids() -> None:
    ids = expected_token_ids(get_preset("unipose-7b").vocab)
    assert ids["<pose_id_0>"] == 32000 and ids["<pose_id_2047>"] == 34047
    assert ids["<pose_id_2048>"] == 34048 and ids["<pose_id_2049>"] == 34049
    assert ids["<im_start>"] == 34050 and ids["<im_end>"] == 34051
    assert ids["<pose_query_0>"] == 34052 and ids["<pose_query_79>"] == 34131
    assert len(added_token_names(get_preset("unipose-7b").vocab)) == 34132 - 32000


def test_encode_is_plain_text(tiny: TextTokenizer) -> None:
    ids = tiny.encode("the person </s> <s> <pose_id_3> <im_start> [INST]")
    assert ids and all(0 < i < tiny.layout.text_vocab_size for i in ids)
    assert tiny.layout.bos_id not in ids and tiny.layout.eos_id not in ids
    assert tiny.encode("") == []
    # Mistral-like: "[INST]" is ordinary text, and unseen characters fall back to bytes instead of <unk>.
    assert 0 not in tiny.encode("Ünïcode ✓ [INST]")


def test_decode_round_trip_skips_control_and_added_tokens(tiny: TextTokenizer) -> None:
    text = "The person raises the left arm above the head, kneeling é."
    ids = tiny.encode(text)
    assert tiny.decode(ids) == text
    layout = tiny.layout
    noisy = [layout.bos_id, *ids[:3], layout.pose_begin_id, layout.pose_id_offset + 7, layout.pose_end_id,
             layout.image_start_id, layout.pose_query_offset + 5, *ids[3:], layout.eos_id, 0, 0]
    assert tiny.decode(noisy) == text


def test_save_and_load_directory(tiny: TextTokenizer, tmp_path) -> None:
    tiny.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    loaded = TextTokenizer.from_directory(tmp_path / "tok", tiny.layout)
    text = "Generate pose of the description: the man sits."
    assert loaded.encode(text) == tiny.encode(text)
    assert loaded.token_to_id("<im_end>") == tiny.layout.image_end_id


def test_shifted_added_tokens_are_refused(tiny: TextTokenizer) -> None:
    data = json.loads(tiny.backend.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < tiny.layout.text_vocab_size]
    shifted = Tokenizer.from_str(json.dumps(data))
    # One stray token first: every UniPose token lands one id later than the layout says.
    shifted.add_tokens([AddedToken("<extra>", normalized=False)])
    shifted.add_tokens([AddedToken(n, normalized=False) for n in added_token_names(tiny.layout)])
    with pytest.raises(VocabularyError) as info:
        TextTokenizer(shifted, tiny.layout, source="shifted.json")
    message = str(info.value)
    assert "shifted.json" in message
    assert "<pose_id_0> -> 1025 (expected 1024)" in message
    assert "vocabulary size 1621 (expected 1620)" in message


def test_missing_added_tokens_are_refused(tiny: TextTokenizer) -> None:
    bigger = dataclasses.replace(tiny.layout, codebook_size=1024)
    with pytest.raises(VocabularyError, match="absent"):
        TextTokenizer(tiny.backend, bigger)


def test_missing_directory_and_files(tmp_path) -> None:
    layout = get_preset("unipose-tiny").vocab
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        TextTokenizer.from_directory(tmp_path / "nowhere", layout)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_directory(tmp_path / "empty", layout)


def test_sentencepiece_only_directory_goes_through_transformers(tmp_path) -> None:
    """A Llama-style directory (tokenizer.model + added tokens in tokenizer_config.json) loads via transformers."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("transformers")
    layout = dataclasses.replace(get_preset("unipose-tiny").vocab, text_vocab_size=300)
    model_dir = tmp_path / "spm"
    model_dir.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(model_dir / "tokenizer"), vocab_size=300,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
    )
    # The files a transformers-4.37 slow LlamaTokenizer writes (the official release's format): the added tokens
    # live in tokenizer_config.json's added_tokens_decoder and in added_tokens.json.
    specials = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])}
    added = {str(300 + i): {"content": c, "lstrip": False, "normalized": True, "rstrip": False,
                            "single_word": False, "special": False} for i, c in enumerate(added_token_names(layout))}
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<unk>", "legacy": True, "added_tokens_decoder": {**specials, **added}}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (model_dir / "added_tokens.json").write_text(json.dumps({v["content"]: int(k) for k, v in added.items()}))
    tok = TextTokenizer.from_directory(model_dir, layout)
    assert tok.token_to_id("<pose_id_0>") == 300 and tok.token_to_id("<pose_query_79>") == layout.vocab_size - 1
    assert tok.decode(tok.encode("the person sits")) == "the person sits"
