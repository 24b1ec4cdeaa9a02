"""The sentence encoder's own tokenizer (BERT WordPiece, lowercased) for models with a `text_encoder`.

It is a second tokenizer next to the LLM's: the encoder was pretrained on its vocabulary, so the ids it reads must
come from the file shipped with its weights (`sentence_tokenizer.json`, a Hugging Face `tokenizers` file), and
every text gets [CLS] ... [SEP] with at most `TextEncoderConfig.max_tokens` ids (longer text is cut at the end).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from unipose_sdk.errors import ModelNotFoundError, VocabularyError
from unipose_sdk.models.config import TextEncoderConfig

SENTENCE_TOKENIZER_FILE = "sentence_tokenizer.json"


class SentenceTokenizer:
    """Texts -> (ids, mask) [B, T] int64 for the sentence encoder, right-padded with [PAD]."""

    def __init__(self, backend: Tokenizer, config: TextEncoderConfig, source: str = "<in memory>") -> None:
        size = backend.get_vocab_size(with_added_tokens=True)
        if size != config.vocab_size:
            raise VocabularyError.make(
                received=f"sentence tokenizer {source} with {size} ids",
                expected=f"the sentence encoder's vocabulary of {config.vocab_size} ids",
                fix=f"Use the {SENTENCE_TOKENIZER_FILE} shipped with these weights.")
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_padding()
        self.backend.enable_truncation(max_length=config.max_tokens)
        self.pad_id = self.backend.token_to_id("[PAD]") or 0
        self.source = source

    @classmethod
    def from_directory(cls, path: str | os.PathLike, config: TextEncoderConfig) -> SentenceTokenizer:
        file = Path(path) / SENTENCE_TOKENIZER_FILE
        if not file.is_file():
            raise ModelNotFoundError.make(
                received=f"model directory {str(path)!r} without {SENTENCE_TOKENIZER_FILE}",
                expected=f"{SENTENCE_TOKENIZER_FILE} next to the weights of a model with a sentence encoder",
                fix="Copy the complete model directory (the sentence tokenizer ships with the weights).")
        return cls(Tokenizer.from_file(str(file)), config, str(file))

    def save(self, directory: str | os.PathLike) -> Path:
        from unipose_sdk.fileio import atomic_write_text

        return atomic_write_text(Path(directory) / SENTENCE_TOKENIZER_FILE, self.backend.to_str(pretty=False))

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        encodings = self.backend.encode_batch([str(t) for t in texts])
        width = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encodings), width), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.long)
            mask[row, :len(encoding.ids)] = 1
        return ids, mask
