"""`UniPose`: one loaded model on one backend and device, shared by the four task classes.

`UniPose.load(options)` returns the same session for the same (model, backend, device, dtype) while anybody
holds it, so `Estimator`, `Generator`, `Editor` and `Describer` built from one path load the weights once.
A session serialises its calls with a lock: one instance may be used from several threads; calls from
different threads run one after another (the model's KV cache and the torch thread pool are per call anyway,
so parallel calls on one CPU would only compete for the same cores).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

import unipose_sdk.formats as formats
import unipose_sdk.generation as generation
import unipose_sdk.loading as loading
from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import InvalidInputError, ModelNotFoundError, UnsupportedTaskError
from unipose_sdk.models.unipose import splice_image_embeds
from unipose_sdk.options import EMBEDDED_MODEL, BaseOptions
from unipose_sdk.results import RunInfo
from unipose_sdk.runtime.base import Runtime
from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer
from unipose_sdk.text.prompts import ChatPosePromptBuilder, PromptBuilder, PromptRow, Task
from unipose_sdk.text.sentences import confident_sentences
from unipose_sdk.text.tokenizer import TextTokenizer
from unipose_sdk.timing import OnStage, untimed

log = logging.getLogger("unipose_sdk")



class UniPose:
    """A loaded model: runtime + text tokenizer + prompt builder, with a lock for thread safety."""

    _cache: weakref.WeakValueDictionary[tuple, UniPose] = weakref.WeakValueDictionary()
    _cache_lock = threading.Lock()

    def __init__(self, runtime: Runtime, tokenizer: TextTokenizer, model_name: str, model_is_random: bool,
                 fallback: str | None = None, sentence_tokenizer: SentenceTokenizer | None = None) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.tokenizer = tokenizer
        # Models with a sentence encoder (unipose-tiny v2) read its rows after BOS; its own tokenizer feeds it.
        self.sentence_tokenizer = sentence_tokenizer
        if self.config.family == "chatpose":
            self.prompts = ChatPosePromptBuilder(tokenizer, self.config.image_tokens, self.config.max_text_tokens)
        else:
            rows = self.config.text_encoder.num_rows if self.config.text_encoder is not None else 0
            if rows and sentence_tokenizer is None:
                raise ModelNotFoundError(
                    f"received model {model_name} with a sentence encoder but no sentence tokenizer; expected "
                    "sentence_tokenizer.json next to its weights. Copy or re-export the complete model directory.")
            self.prompts = PromptBuilder(tokenizer, self.config.image_tokens, self.config.max_text_tokens,
                                         text_rows=rows)
        self.model_name = model_name
        self.model_is_random = model_is_random
        self.fallback = fallback
        self.pose_code_vectors = self._pose_code_vectors()
        if self.config.text_to_pose_candidates and not runtime.has_pose_matcher:
            note = (f"the model chooses among {len(self.config.text_to_pose_candidates)} candidate text-to-pose "
                    f"decodings with its text-pose matcher, but its {runtime.backend} files carry no matcher: "
                    "the Generator decodes once, at the model's pose guidance and code temperature; re-export the "
                    "model to get the choice")
            log.warning(note)
            self.fallback = f"{self.fallback}; {note}" if self.fallback else note
        # Query logits of each task's prompt without a condition, that its guided calls contrast with.
        self._unconditional_logits: dict[Task, Tensor] = {}
        # The raw 6D rows [22, 6] of the candidates the text-pose matcher decoded last, by their codes: the pose a
        # Generator returns is one of them, so it is not decoded a second time.
        self._chosen_from: dict[bytes, Tensor] = {}
        self.lock = threading.RLock()
        self.closed = False

    def _pose_code_vectors(self) -> Tensor | None:
        """The codebook for expected-code pose decoding when the model's config asks for it (None: argmax)."""
        if self.config.pose_decoding != "expected_code":
            return None
        codebook = self.runtime.pose_codebook()
        if codebook is None:
            note = (f"the model asks for pose_decoding='expected_code', but its {self.runtime.backend} files carry "
                    "no pose codebook (exported before pose_codebook.npy existed): poses are decoded by argmax; "
                    "re-export the model to get the decoding it was trained for")
            log.warning(note)
            self.fallback = f"{self.fallback}; {note}" if self.fallback else note
        return codebook

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, options: BaseOptions) -> UniPose:
        device = options.torch_device()
        dtype = options.torch_dtype(device)
        model_key = EMBEDDED_MODEL if options.is_embedded_model else str(Path(options.model).resolve())
        key = (model_key, options.backend, device.type, dtype, options.torch_compile(device))
        with cls._cache_lock:
            session = cls._cache.get(key)
            if session is None or session.closed:
                session = cls._load_uncached(options, device, dtype)
                cls._cache[key] = session
            return session

    @classmethod
    def _load_uncached(cls, options: BaseOptions, device: torch.device, dtype: torch.dtype) -> UniPose:
        # options.num_threads is applied per call by the task classes (tasks/base.py), never to the whole process.
        # The format table decides what runs the model (backend="auto": the fastest the directory holds).
        source = formats.resolve_source(options.model, options.backend.value, device.type)
        if source.format.name != "torch":
            return cls._load_exported(source, options, device)
        loaded = loading.load_torch_model(options.model, device, dtype)
        if loaded.tokenizer is None:
            raise ModelNotFoundError(
                f"received model directory {source.name} without tokenizer.json; expected a complete SDK model "
                "directory. Re-run `unipose convert` so it writes the text tokenizer next to the weights."
            )
        from unipose_sdk.runtime.torch import TorchRuntime

        runtime = TorchRuntime(loaded.model, loaded.config, device, dtype, compile=options.torch_compile(device))
        if loaded.is_random:
            log.warning("%s: %s", source.name, loaded.source)
        return cls(runtime, loaded.tokenizer, source.name, loaded.is_random,
                   sentence_tokenizer=loaded.sentence_tokenizer)

    @classmethod
    def _load_exported(cls, source: formats.Source, options: BaseOptions, device: torch.device) -> UniPose:
        """A directory written by `unipose export` (ONNX graphs, or TensorRT engines beside them); its parts are
        checked to belong to one export (export/artifacts.py) before anything runs."""
        from unipose_sdk.export.artifacts import read_tokenizer

        path = source.path
        assert path is not None  # exported formats are always directories
        if source.format.name == "engine":
            from unipose_sdk.runtime.tensorrt import TensorRTRuntime

            runtime: Runtime = TensorRTRuntime(path, device)
        else:
            from unipose_sdk.runtime.onnxruntime import OnnxRuntimeRuntime, OrtOptions

            runtime = OnnxRuntimeRuntime(path, device, OrtOptions(num_threads=options.num_threads))
        tokenizer = read_tokenizer(path, runtime.config.vocab)
        sentence_tokenizer = None
        if runtime.config.text_encoder is not None:
            from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer

            sentence_tokenizer = SentenceTokenizer.from_directory(path, runtime.config.text_encoder)
        exported = getattr(runtime, "exported", None)
        is_random = bool(getattr(exported, "is_random", False))
        if is_random:
            log.warning("%s: exported from a RANDOM placeholder model", path)
        if source.note:
            log.warning("%s: %s", path, source.note)
        return cls(runtime, tokenizer, str(path), is_random, source.note, sentence_tokenizer=sentence_tokenizer)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.runtime.close()
                self.closed = True

    def run_info(self) -> RunInfo:
        return RunInfo(backend=self.runtime.backend, device=str(self.runtime.device), model=self.model_name,
                       model_is_random=self.model_is_random, fallback=self.fallback, family=self.config.family)

    # ------------------------------------------------------------------ the shared pipeline pieces

    def encode_poses(self, poses: Pose) -> Tensor:
        """Pose (batched) -> codes [B, 80] (int64, CPU)."""
        if self.config.family == "chatpose":
            raise UnsupportedTaskError.make(
                f"poses as input to {self.model_name}, a ChatPose model", "a model that reads poses (ChatPose only "
                "answers with them)", "Use a UniPose model (family 'unipose') to describe or edit poses.")
        return self.runtime.encode_poses(poses.rotation_6d()).cpu()

    def decode_poses(self, codes: Tensor) -> Pose:
        """[B, 80] codes -> their poses; rows the matcher's last choice decoded are taken from it."""
        known = self._chosen_from
        if known:
            keys = [_codes_key(row) for row in codes]
            if all(key in known for key in keys):
                return Pose.from_6d(torch.stack([known[key] for key in keys]))
        return Pose.from_6d(self.runtime.decode_poses(codes).cpu())

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self.runtime.encode_images(clip_pixels, pose_pixels)

    def embed_rows(self, rows: Sequence[PromptRow], image_embeds: Tensor | None) -> list[Tensor]:
        """Token ids of each prompt -> input embeddings [L, C], with the projected image embeddings spliced into
        the image slots (images numbered row by row in prompt order), and for models with a sentence encoder its
        rows for each turn's encoder text in that turn's slots (one turn: right after BOS)."""
        return self.embed_rows_and_sentences(rows, image_embeds)[0]

    def embed_rows_and_sentences(self, rows: Sequence[PromptRow], image_embeds: Tensor | None,
                                 ) -> tuple[list[Tensor], Tensor | None]:
        """`embed_rows`, and the sentence embeddings [S, H] of the encoder texts in prompt order (one per
        sentence slot; None when there are none, or the backend's files do not give them)."""
        llm = self.runtime.llm
        slots = [row.sentence_slots for row in rows]
        text_rows, sentences = self.encode_sentences([text for row_slots in slots for _, text in row_slots])
        out, image_index, text_index = [], 0, 0
        for row, row_slots in zip(rows, slots):
            ids = torch.tensor(row.input_ids, dtype=torch.long, device=llm.device)
            count = len(row.image_starts)
            images = image_embeds[image_index:image_index + count] if count else None
            embeds = splice_image_embeds(llm.embed(ids.unsqueeze(0)), images, [0] * count, row.image_starts)
            for start, _ in row_slots:
                assert text_rows is not None
                embeds = splice_image_embeds(embeds, text_rows[text_index:text_index + 1], [0], [start])
                text_index += 1
            out.append(embeds[0])
            image_index += count
        return out, sentences

    def encode_texts(self, texts: Sequence[str]) -> Tensor | None:
        """The sentence encoder's LLM rows [N, num_rows, C] for `texts` (None for none)."""
        return self.encode_sentences(texts)[0]

    def encode_sentences(self, texts: Sequence[str]) -> tuple[Tensor | None, Tensor | None]:
        """(the sentence encoder's LLM rows [N, num_rows, C], its sentence embeddings [N, H] or None when the
        backend does not give them) for `texts`; (None, None) for no texts."""
        if not texts:
            return None, None
        assert self.sentence_tokenizer is not None  # __init__ refuses a text-encoder model without one
        ids, mask = self.sentence_tokenizer(texts)
        return self.runtime.encode_sentences(ids, mask)

    def generate(self, rows: Sequence[PromptRow], image_embeds: Tensor | None, config: generation.GenerationConfig,
                 on_stage: OnStage | None = None, guided_task: Task | None = None,
                 ) -> list[generation.GenerationResult]:
        """Greedy generation for a batch of prompts with the images spliced in, as `config` says (passed to
        `generation.generate` as given). on_stage: the caller's stage timer (`timing.StageTimer.stage`): this
        call is stage "llm", the loop's stages run inside it. guided_task: the task whose prompt without a
        condition the guided decodings guide away from (`unconditional_query_logits`), read when one guides.
        With `config.pose_candidates`, every row must have one encoder text: the text-pose matcher keeps the
        candidate that shows it best (`pose_chooser`)."""
        stage = on_stage if on_stage is not None else untimed
        with stage("llm"), torch.inference_mode():
            guide = None
            if config.guided and guided_task is not None:
                guide = self.unconditional_query_logits(guided_task)
            embeds, sentences = self.embed_rows_and_sentences(rows, image_embeds)
            choose = None
            if config.pose_candidates and not config.sampling:
                if sentences is None or len(sentences) != len(rows) or any(
                        len(row.sentence_slots) != 1 for row in rows):
                    raise InvalidInputError.make(
                        f"pose_candidates for prompts with {[len(row.sentence_slots) for row in rows]} encoder "
                        "texts each" + ("" if sentences is not None else ", on a backend that gives no sentence "
                                        "embeddings"),
                        "one encoder text per prompt, embedded by the sentence encoder (text-to-pose prompts)",
                        "Pass pose_candidates=() for these prompts, or re-export the model with this SDK.")
                choose = self.pose_chooser(sentences)
            return generation.generate(
                self.runtime.llm, embeds, self.config.vocab, config,
                max_context=self.config.llm.max_position_embeddings, pose_code_vectors=self.pose_code_vectors,
                on_stage=on_stage, sentence_end_ids=self.sentence_end_ids, unconditional_query_logits=guide,
                choose_pose=choose,
            )

    @property
    def pose_candidates(self) -> tuple[tuple[float, float], ...]:
        """The model's candidate text-to-pose decodings (`UniPoseConfig.text_to_pose_candidates`) when this backend
        can score them with the model's text-pose matcher; () otherwise (the session's `fallback` says why)."""
        return self.config.text_to_pose_candidates if self.runtime.has_pose_matcher else ()

    def pose_chooser(self, sentences: Tensor) -> generation.ChoosePose:
        """A `generation.ChoosePose` for prompts whose sentence embeddings are `sentences` [B, H]: each row's
        candidates are decoded, posed on the built-in skeleton and scored by the text-pose matcher against that
        row's sentence; the highest score is kept (the first of equal ones)."""
        def choose(candidates: Tensor, rows: Sequence[int]) -> Tensor:
            batch, count, length = candidates.shape
            # Settings often decode to the same codes: each distinct (row, codes) is decoded and scored once.
            keyed = torch.cat([torch.arange(batch).repeat_interleave(count)[:, None],
                               candidates.reshape(batch * count, length)], dim=1)
            distinct, index = torch.unique(keyed, dim=0, return_inverse=True)
            pose_6d = self.runtime.decode_poses(distinct[:, 1:]).cpu()
            self._chosen_from = {_codes_key(row): six_d for row, six_d in zip(distinct[:, 1:], pose_6d)}
            joints_m = Pose.from_6d(pose_6d).joints()
            row_sentences = sentences[list(rows)][distinct[:, 0]]
            scores = self.runtime.match_poses(joints_m, row_sentences).float().cpu()[index].view(batch, count)
            return candidates[torch.arange(batch), scores.argmax(dim=1)]

        return choose

    def unconditional_query_logits(self, task: Task) -> Tensor:
        """The pose-query logits [Q, V] of the task's prompt without a condition
        (`PromptBuilder.build_unconditional`): computed on its first use and kept, since every guided call of the
        task contrasts with the same ones."""
        with self.lock:
            if task not in self._unconditional_logits:
                with torch.inference_mode():
                    embeds = self.embed_rows([self.prompts.build_unconditional(task)], None)
                    self._unconditional_logits[task] = generation.pose_query_logits(
                        self.runtime.llm, embeds[0], self.config.vocab)
            return self._unconditional_logits[task]

    @functools.cached_property
    def sentence_end_ids(self) -> frozenset[int]:
        """Text ids whose text ends a sentence (".", "!", "?"), for the generation loop's ban on repeated
        sentences."""
        layout = self.config.vocab
        return frozenset(i for i in range(layout.text_vocab_size)
                         if self.tokenizer.decode([i]).rstrip().endswith((".", "!", "?")))

    def answer_text(self, result: generation.GenerationResult, min_sentence_logprob: float | None = None) -> str:
        """The text of an answer, pose blocks shown as <pose>. min_sentence_logprob: keep only the sentences the
        model was that sure of (`text.sentences.confident_sentences`, within each stretch of text); None: all."""
        vocab = self.config.vocab
        pieces: list[str] = []
        text_ids: list[int] = []
        text_logprobs: list[float] = []

        def text_piece() -> str:
            ids = text_ids if min_sentence_logprob is None else confident_sentences(
                text_ids, text_logprobs, self.sentence_end_ids, min_sentence_logprob)
            return self.tokenizer.decode(ids)

        ids, logprobs = result.ids_and_logprobs(without=vocab.eos_id)
        i = 0
        while i < len(ids):
            if ids[i] == vocab.pose_begin_id:
                pieces += [text_piece(), "<pose>"]
                text_ids, text_logprobs = [], []
                i += vocab.num_pose_tokens + 2
                continue
            text_ids.append(ids[i])
            text_logprobs.append(logprobs[i])
            i += 1
        pieces.append(text_piece())
        return "".join(pieces).strip()


def _codes_key(codes: Tensor) -> bytes:
    """One pose's codes [80] as a dictionary key (int64 bytes)."""
    return codes.to(device="cpu", dtype=torch.int64).numpy().tobytes()
