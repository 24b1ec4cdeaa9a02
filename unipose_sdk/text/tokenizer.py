"""The text tokenizer: a Hugging Face `tokenizers` backend plus UniPose's added tokens at fixed ids.

The released model's vocabulary (its tokenizer.json and added_tokens.json) is the Mistral sentencepiece vocabulary
followed by tokens UniPose added with `tokenizer.add_tokens`, in this order:

    <pose_id_0> .. <pose_id_{K-1}>        codebook index k -> id text_vocab_size + k
    <pose_id_K>, <pose_id_{K+1}>          pose BEGIN, pose END
    <im_start>, <im_end>                  LLaVA's DEFAULT_IM_START_TOKEN / DEFAULT_IM_END_TOKEN
    <pose_query_0> .. <pose_query_79>     the learned generation queries (last rows of the embedding table)

The ids are a contract with the checkpoint's embedding rows, so a tokenizer whose added tokens sit anywhere else
is refused (VocabularyError) instead of silently feeding the wrong rows.

`encode` treats its input as plain text: a caption that happens to contain "</s>" or "<pose_id_5>" is tokenized
as characters, never turned into control tokens. Pose ids, image markers and BOS are inserted by id in
`unipose_sdk.text.prompts`, not by string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from unipose_sdk.errors import BackendUnavailableError, InvalidTextError, ModelNotFoundError, VocabularyError
from unipose_sdk.fileio import atomic_write_text
from unipose_sdk.models.config import CHATPOSE_ADDED_TOKENS, VocabLayout, get_preset

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # Mistral's ids 0, 1, 2
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
_MAX_LISTED = 10


def pose_id_token(index: int) -> str:
    """Name of the added token for codebook index `index` (index K is BEGIN, K+1 is END)."""
    return f"<pose_id_{index}>"


def pose_query_token(index: int) -> str:
    return f"<pose_query_{index}>"


def added_token_names(layout: VocabLayout) -> list[str]:
    """Every added token in id order: element i has id `layout.pose_id_offset + i` (ChatPose: `[SEG]`,
    `<im_start>`, `<im_end>`)."""
    if layout.family == "chatpose":
        return list(CHATPOSE_ADDED_TOKENS)
    names = [pose_id_token(k) for k in range(layout.codebook_size + 2)]  # + BEGIN, END
    names += [IMAGE_START_TOKEN, IMAGE_END_TOKEN]
    names += [pose_query_token(k) for k in range(layout.num_pose_tokens)]
    return names


def expected_token_ids(layout: VocabLayout) -> dict[str, int]:
    """Token name -> id the layout requires (the three Mistral specials and every added token)."""
    expected = {"<unk>": 0, "<s>": layout.bos_id, "</s>": layout.eos_id}
    expected.update({name: layout.pose_id_offset + i for i, name in enumerate(added_token_names(layout))})
    return expected


def check_layout(backend: Tokenizer, layout: VocabLayout, source: str) -> None:
    """Raise VocabularyError listing the first tokens whose id differs from the layout; return quietly if all match."""
    mismatches = []
    for name, want in expected_token_ids(layout).items():
        got = backend.token_to_id(name)
        if got != want:
            mismatches.append(f"{name} -> {'absent' if got is None else got} (expected {want})")
    size = backend.get_vocab_size(with_added_tokens=True)
    if size != layout.vocab_size:
        mismatches.insert(0, f"vocabulary size {size} (expected {layout.vocab_size})")
    if mismatches:
        shown = "; ".join(mismatches[:_MAX_LISTED])
        more = f"; ... ({len(mismatches) - _MAX_LISTED} more)" if len(mismatches) > _MAX_LISTED else ""
        raise VocabularyError.make(
            received=f"tokenizer {source} with {len(mismatches)} mismatches: {shown}{more}",
            expected=f"the added tokens at the ids of the model's vocabulary layout (text {layout.text_vocab_size}, "
            f"{layout.codebook_size} pose codes, total {layout.vocab_size})",
            fix="Use the tokenizer files shipped with this model's weights, or pick the preset that matches them.",
        )


def _plain_text_backend(backend: Tokenizer, layout: VocabLayout) -> Tokenizer:
    """A copy of `backend` that only knows the base vocabulary, with control tokens encoded as text.

    Dropping the added tokens (ids >= text vocabulary) keeps "<pose_id_3>" in user text from becoming a pose
    token; `encode_special_tokens` does the same for "<s>" / "</s>" / "<unk>".
    """
    data = json.loads(backend.to_str())
    data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < layout.text_vocab_size]
    data["post_processor"] = None  # BOS is inserted by id by the prompt builder
    plain = Tokenizer.from_str(json.dumps(data))
    plain.encode_special_tokens = True
    return plain


class TextTokenizer:
    """Text <-> ids for one model: checked against its VocabLayout at construction."""

    def __init__(self, backend: Tokenizer, layout: VocabLayout, source: str = "<in memory>") -> None:
        check_layout(backend, layout, source)
        self.backend = backend
        self.layout = layout
        self.source = source
        self._plain = _plain_text_backend(backend, layout)

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, path: str | os.PathLike, layout: VocabLayout) -> TextTokenizer:
        """Load `tokenizer.json` from a model directory; a directory with only a sentencepiece `tokenizer.model`
        goes through `transformers` (the `hf` extra), which converts it to a `tokenizers` backend."""
        directory = Path(path)
        if not directory.is_dir():
            raise ModelNotFoundError.make(
                received=f"tokenizer directory {str(directory)!r}, which does not exist or is not a directory",
                expected=f"a directory holding {TOKENIZER_FILE} (or {SENTENCEPIECE_FILE})",
                fix="Pass the model directory that contains the tokenizer files.",
            )
        if (directory / TOKENIZER_FILE).is_file():
            return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), layout, str(directory))
        if (directory / SENTENCEPIECE_FILE).is_file():
            return cls(_backend_via_transformers(directory), layout, str(directory))
        raise ModelNotFoundError.make(
            received=f"directory {str(directory)!r} without tokenizer files "
            f"(contents: {sorted(p.name for p in directory.iterdir())[:12]})",
            expected=f"{TOKENIZER_FILE} or {SENTENCEPIECE_FILE} in it",
            fix="Copy the tokenizer files of the model (they ship with the UniPose directory) next to the weights.",
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json (+ a minimal tokenizer_config.json for Hugging Face loaders) into `directory`.

        Each file is written to a temporary name and renamed, so a crash never leaves a half-written tokenizer.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "unipose_vocab_layout": dataclasses.asdict(self.layout),
        }
        atomic_write_text(out / TOKENIZER_FILE, self.backend.to_str(pretty=False))
        atomic_write_text(out / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2))
        return out

    # ---- use ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    def encode(self, text: str) -> list[int]:
        """Plain text -> base-vocabulary ids. No BOS/EOS is added and no control or added token is recognised.
        Text that is not a str, or that does not encode as UTF-8 (a lone surrogate), is an InvalidTextError."""
        if not isinstance(text, str):
            raise InvalidTextError.make(f"text of type {type(text).__name__}", "a str", "Pass the text as a str.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidTextError.make(
                f"text with the character {text[exc.start]!r} at index {exc.start} ({exc.reason})",
                "text that encodes as UTF-8 (no lone surrogates)",
                "Remove the character, or clean the text with text.encode('utf-8', 'replace').decode('utf-8').",
            ) from None
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, skipping BOS/EOS/unk-padding and every added token (pose ids, image markers, queries)."""
        skip = {0, self.layout.bos_id, self.layout.eos_id, self.layout.pad_id}
        keep = [int(i) for i in ids if 0 <= int(i) < self.layout.text_vocab_size and int(i) not in skip]
        return self.backend.decode(keep, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise VocabularyError.make(received=f"token {token!r}", expected="a token of this vocabulary",
                                       fix="Check the token's spelling (e.g. '<pose_id_12>', '<im_start>').")
        return token_id

    def __repr__(self) -> str:
        return f"TextTokenizer(source={self.source!r}, vocab_size={self.vocab_size})"


def _backend_via_transformers(directory: Path) -> Tokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise BackendUnavailableError.make(
            received=f"a tokenizer directory {str(directory)!r} with only a sentencepiece {SENTENCEPIECE_FILE}",
            expected=f"{TOKENIZER_FILE}, or the `transformers` package to convert the sentencepiece model",
            fix='Install the Hugging Face extra: pip install "unipose-sdk[hf]" (or convert once with '
            "`unipose convert`, which writes tokenizer.json).",
        ) from exc
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BackendUnavailableError.make(
            received=f"transformers returned {type(hf_tokenizer).__name__} without a fast backend",
            expected="a tokenizer convertible to the `tokenizers` format",
            fix='Install sentencepiece and protobuf (pip install "unipose-sdk[hf]") so the conversion can run.',
        )
    return backend


# ---- a small tokenizer for the embedded model and the tests ------------------------------------------------
_NUM_BYTE_TOKENS = 256


def build_tiny_tokenizer(
    corpus: Iterable[str], vocab_size: int, layout: VocabLayout | None = None
) -> TextTokenizer:
    """Train a Mistral-like BPE tokenizer of exactly `vocab_size` base ids and add UniPose's tokens after it.

    Like Mistral's: `<unk>`=0, `<s>`=1, `</s>`=2, byte-fallback tokens `<0x00>`..`<0xFF>` at 3..258 (so any
    text encodes without <unk>), "▁" marks a word start, and `[INST]` / `[/INST]` are ordinary text.
    `layout` defaults to the unipose-tiny layout with `text_vocab_size = vocab_size`.
    """
    if layout is None:
        layout = dataclasses.replace(get_preset("unipose-tiny").vocab, text_vocab_size=vocab_size)
    if layout.text_vocab_size != vocab_size:
        raise VocabularyError.make(
            received=f"vocab_size={vocab_size} with a layout whose text vocabulary is {layout.text_vocab_size}",
            expected="the same size", fix="Pass vocab_size=layout.text_vocab_size.")
    reserved = len(SPECIAL_TOKENS) + _NUM_BYTE_TOKENS
    if vocab_size < reserved + 64:
        raise VocabularyError.make(received=f"vocab_size={vocab_size}", expected=f"at least {reserved + 64}",
                                   fix="Use a larger vocabulary (the tiny preset uses 1024).")
    byte_tokens = [f"<0x{b:02X}>" for b in range(_NUM_BYTE_TOKENS)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS) + byte_tokens,  # ids 0..258 in this order
        initial_alphabet=sorted(set(string.ascii_letters + string.digits + string.punctuation)),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)

    data = json.loads(tokenizer.to_str())
    # Byte tokens belong to the model vocabulary (reached through byte fallback), not to the added tokens that
    # are matched in raw text.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    vocab: dict[str, int] = data["model"]["vocab"]
    # A small corpus can leave the BPE vocabulary short; pad it with unreachable tokens so the added tokens land
    # exactly at layout.pose_id_offset.
    filler = 0
    while len(vocab) < vocab_size:
        vocab[f"<unused_{filler}>"] = len(vocab)
        filler += 1
    data["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    backend = Tokenizer.from_str(json.dumps(data))
    backend.add_tokens([AddedToken(name, normalized=False, special=False) for name in added_token_names(layout)])
    return TextTokenizer(backend, layout, source="build_tiny_tokenizer")
