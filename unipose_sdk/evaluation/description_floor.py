"""Choose a model's image-description sentence floor on validation data.

    python -m unipose_sdk.evaluation.description_floor --model CANDIDATE_DIR [--floors=-1,-0.95,-0.9,-0.85]
        [--seeds 5,6,7] [--out F.json] [--write NEW_CANDIDATE_DIR]

A small model says much about an image that it is unsure of. The Describer can keep only the sentences whose
tokens the model gave a mean log-probability of at least a floor (`DescriberOptions.min_sentence_logprob`, by
default the model's `image_description_min_sentence_logprob`): a higher floor states fewer facts and fewer wrong
ones, so precision rises and recall falls.

Every floor (and no floor) is scored on the image descriptions of the validation pools of `--seeds`, exactly as
`unipose evaluate --seed S` scores them (same pool, same reference captions, same most-frequent-caption baseline).
The rule: the floor whose smaller margin over the baseline, of precision and of recall (each averaged over the
seeds, as `evaluation.validation` averages every metric), is largest: a description must beat the trivial one on
both. (Each seed's baseline is another caption: seed 6's states common facts, and its recall, 0.171, beats even
every sentence of the shipped model's answers, 0.165; a rule that asked every seed would never choose a floor.)
`--write` copies the model with the chosen floor in its config; install it like any other candidate
(`training.ship`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import unipose_sdk.evaluation.metrics as M
from unipose_sdk.checkpoint.sdk_format import LoadedModel
from unipose_sdk.errors import InvalidInputError, UniPoseError
from unipose_sdk.evaluation.runner import FULL_SIZES, Baselines, caption_draws, caption_rng
from unipose_sdk.evaluation.validation import VALIDATION_SEEDS, _seeds_flag, check_validation_seeds
from unipose_sdk.fileio import atomic_write_text, check_output_file, signals_raise
from unipose_sdk.models.config import check_min_sentence_logprob, min_sentence_logprob_flag
from unipose_sdk.training.pools import EVAL_SEED_OFFSET, PoolSizes, build_pool

FLOORS = (-1.0, -0.95, -0.9, -0.85)


def image_description_references(seed: int, sizes: PoolSizes = FULL_SIZES,
                                  ) -> tuple[list[Any], list[list[Any]], list[list[Any]]]:
    """(images, every true fact of each image's pose, the facts each reference caption states) of the validation
    pool of `seed`, drawn as `unipose evaluate --seed SEED` draws them (`runner.caption_draws`)."""
    check_validation_seeds([seed])
    pool = build_pool(seed + EVAL_SEED_OFFSET, sizes, None)
    references = caption_draws(pool, caption_rng(seed))[2]
    indices = range(len(pool.image_of_pose))
    return [pool.images[pool.image_of_pose[i]] for i in indices], [pool.facts[i] for i in indices], references


def floor_grid(model: str | Path | None, floors: Sequence[float] = FLOORS, seeds: Sequence[int] = VALIDATION_SEEDS,
               batch_size: int = 16, sizes: PoolSizes = FULL_SIZES) -> dict[str, Any]:
    """Image-description precision and recall on the validation pools of `seeds`, with every sentence and at each
    floor, next to the baseline; sizes: the pools' (`unipose evaluate --quick` draws QUICK_SIZES). Returns
    {"rows": [{"floor" (None: every sentence), "precision", "recall",
    "baseline_precision", "baseline_recall" (means over the seeds), "by_seed": [the same four per seed...],
    "smallest_margin" (the smaller of the means' margins)}...],
    "chosen": the row the rule picks, "seeds", "model"}."""
    from unipose_sdk.options import DescriberOptions
    from unipose_sdk.tasks.describer import Describer

    check_validation_seeds(seeds)
    floors = [check_min_sentence_logprob(f) for f in floors]
    if not floors:
        raise InvalidInputError.make("floors=[]", "at least one floor",
                                     "Pass e.g. --floors=-1,-0.9 (with the = sign: the values start with a minus).")
    pools = [image_description_references(seed, sizes) for seed in seeds]
    baselines = [Baselines(seed).caption for seed in seeds]
    rows = []
    with Describer.from_pretrained(model, device="cpu") as describer:
        for floor in [None, *floors]:
            options = DescriberOptions(keep_all_sentences=floor is None, min_sentence_logprob=floor)
            floored = Describer.from_session(describer.session, options)
            by_seed = []
            for (images, truths, references), baseline in zip(pools, baselines):
                texts = [r.text for start in range(0, len(images), batch_size)
                         for r in floored.describe(image=images[start:start + batch_size])]
                scores = [M.description_scores(t, f, r) for t, f, r in zip(texts, truths, references)]
                base = [M.description_scores(baseline, f, r) for f, r in zip(truths, references)]
                by_seed.append({key: round(float(np.mean([s[k] for s in source])), 4)
                                for key, k, source in (("precision", "precision", scores), ("recall", "recall", scores),
                                                       ("baseline_precision", "precision", base),
                                                       ("baseline_recall", "recall", base))})
            means = {k: float(np.mean([s[k] for s in by_seed])) for k in by_seed[0]}
            rows.append({"floor": floor, "precision": round(means["precision"], 4), "recall": round(means["recall"], 4),
                         "baseline_precision": round(means["baseline_precision"], 4),
                         "baseline_recall": round(means["baseline_recall"], 4), "by_seed": by_seed,
                         "smallest_margin": round(min(means[k] - means[f"baseline_{k}"]
                                                      for k in ("precision", "recall")), 4)})
        name = describer.session.model_name
    chosen = max(rows, key=lambda r: r["smallest_margin"])  # max keeps the first of equal margins
    return {"model": Path(str(name)).name or str(name), "seeds": list(seeds), "rows": rows, "chosen": chosen}


def grid_table(result: dict[str, Any]) -> str:
    lines = [f"Image-description sentence floors of {result['model']} (validation seeds "
             f"{', '.join(map(str, result['seeds']))}; rule: the largest smaller margin over the baseline)", "",
             "| floor | precision | recall | baseline precision / recall | smaller margin |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        floor = "every sentence" if r["floor"] is None else f"{r['floor']:g}"
        mark = " (chosen)" if r is result["chosen"] else ""
        lines.append(f"| {floor} | {r['precision']:.4f} | {r['recall']:.4f} | {r['baseline_precision']:.4f} / "
                     f"{r['baseline_recall']:.4f} | {r['smallest_margin']:+.4f}{mark} |")
    return "\n".join(lines)


def write_floor(model_dir: Path, out: Path, floor: float | None) -> Path:
    """A copy of the model at `model_dir` whose config gives image descriptions this floor, written to `out`."""
    from unipose_sdk.training.ship import save_changed_copy

    def set_floor(loaded: LoadedModel) -> None:
        loaded.model.config = dataclasses.replace(loaded.model.config, image_description_min_sentence_logprob=floor)

    return save_changed_copy(model_dir, out, set_floor)


def _floors_flag(text: str) -> tuple[float, ...]:
    """Floors separated by commas, each as `unipose describe --min-sentence-logprob` takes one."""
    return tuple(min_sentence_logprob_flag(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the embedded one)")
    parser.add_argument("--floors", type=_floors_flag, default=FLOORS, metavar="F,F,...")
    parser.add_argument("--seeds", type=_seeds_flag, default=VALIDATION_SEEDS, metavar="S,S,...",
                        help="validation seeds, never 0 (default 5,6,7)")
    parser.add_argument("--out", type=Path, default=None, help="write the grid as JSON here")
    parser.add_argument("--write", type=Path, default=None, metavar="NEW_DIR",
                        help="write a copy of --model with the chosen floor here")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:  # refused now, not after the grid
            check_output_file(args.out, overwrite=True)
        if args.write is not None and (args.model is None or args.write.exists()):
            raise InvalidInputError.make(f"--write {str(args.write)!r} with --model {args.model}",
                                         "a new directory, and a --model directory to copy",
                                         "Pass --model DIR and a --write directory that does not exist.")
        result = floor_grid(args.model, args.floors, args.seeds)
        if args.out is not None:
            atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(grid_table(result))
        if args.write is not None:
            with signals_raise():  # save_model renames a finished directory into place and removes a partial one
                written = write_floor(args.model, args.write, result["chosen"]["floor"])
            print(f"wrote {written}")
    except UniPoseError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
