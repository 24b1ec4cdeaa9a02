"""Choose between candidate weights on validation pools, never on the held-out pool the install gate uses.

    python -m unipose_sdk.evaluation.validation --candidate CANDIDATE_DIR [--against DIR] --seeds 5,6,7 --out F.json

Each model (`--against` defaults to the shipped one) is evaluated by `evaluate` on the pool of every seed
(`unipose evaluate --seed S`; seed 0 draws the gate's held-out pool and is refused), each metric is averaged over
the seeds, and the install rule (`training.ship.improves_on`) is applied to the two means. A candidate chosen this
way still has to pass `python -m unipose_sdk.training.ship install` on the held-out pool.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unipose_sdk.errors import InvalidInputError, ModelNotFoundError, UniPoseError
from unipose_sdk.fileio import atomic_write_text, check_output_file
from unipose_sdk.options import EMBEDDED_MODEL
from unipose_sdk.training.ship import evaluation_identity, gated_metrics, improves_on

VALIDATION_SEEDS = (5, 6, 7)  # the pools candidates were chosen on since unipose-tiny v2


def check_validation_seeds(seeds: Sequence[int]) -> None:
    """Refuses an empty list and seed 0: `unipose evaluate`'s default seed draws the held-out pool the install gate
    compares on, and choosing on it would make the gate's numbers a selection, not a measurement."""
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in seeds):
        raise InvalidInputError.make(f"seeds={list(seeds)!r}", "one or more integers >= 1 (seed 0 draws the "
                                     "held-out pool the install gate uses)", "Pass e.g. --seeds 5,6,7.")


def mean_report(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-metric mean of one model's evaluation reports on several pools, shaped like one report (each metric's
    model and baseline values averaged, `beats_baseline` taken of the means) so `improves_on` compares two of them.
    Reports of different evaluator versions or pool sizes are refused: their means would mix measurements."""
    identities = {json.dumps({k: v for k, v in evaluation_identity(r).items() if k != "eval_seed"}) for r in reports}
    if len(identities) != 1:
        raise InvalidInputError.make(f"reports measured by {sorted(identities)}", "reports of one evaluator version "
                                     "and pool size", "Evaluate every pool with the same `unipose evaluate` options.")
    metrics: dict[str, dict[str, Any]] = {}
    for task, named in reports[0]["metrics"].items():
        metrics[task] = {}
        for name, first in named.items():
            model = sum(r["metrics"][task][name]["model"] for r in reports) / len(reports)
            baseline = sum(r["metrics"][task][name]["baseline"] for r in reports) / len(reports)
            beats = model > baseline if first["higher_is_better"] else model < baseline
            metrics[task][name] = {**first, "model": round(model, 4), "baseline": round(baseline, 4),
                                   "beats_baseline": beats}
    return {"model_is_random": any(r.get("model_is_random", False) for r in reports),
            "eval_seeds": [r.get("eval_seed") for r in reports], "metrics": metrics}


def compare(candidate: Path, against: Path | None = None, seeds: Sequence[int] = VALIDATION_SEEDS,
            quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluates `candidate` and `against` (None: the shipped model) on the validation pools of `seeds` and applies
    the install rule (`improves_on`) to the per-seed means. Returns "improves", "why", "seeds", "candidate" and
    "against" (the two mean reports) and "reports" (each model's per-seed reports)."""
    check_validation_seeds(seeds)
    models = {"candidate": candidate, "against": against}
    for flag, model in models.items():
        if model is not None and not Path(model).is_dir():  # both, before minutes of evaluating the first
            raise ModelNotFoundError.make(f"{flag}={str(model)!r}, which is not an existing directory",
                                          "a model directory (config.json, model.safetensors, tokenizer.json)",
                                          "Pass the directory `ship export` wrote.")
    from unipose_sdk.evaluation.runner import evaluate

    say = progress or (lambda message: None)
    reports: dict[str, list[dict[str, Any]]] = {}
    for label, model in models.items():
        reports[label] = []
        for seed in seeds:
            say(f"evaluating the {label} ({model or EMBEDDED_MODEL}) on the validation pool of seed {seed}")
            reports[label].append(evaluate(model, quick=quick, seed=seed))
    means = {label: mean_report(rows) for label, rows in reports.items()}
    ok, why = improves_on(means["candidate"], means["against"])
    return {"improves": ok, "why": why, "seeds": list(seeds), **means, "reports": reports}


def comparison_table(result: dict[str, Any]) -> str:
    """Markdown: each gated metric's mean over the seeds, the other model's, the candidate's and the baseline's."""
    ours, theirs = gated_metrics(result["candidate"]), gated_metrics(result["against"])
    lines = [f"Validation seeds {', '.join(map(str, result['seeds']))}: the candidate "
             f"{'improves' if result['improves'] else 'does not improve'} on the other model ({result['why']}).", "",
             "| metric | other model | candidate | baseline |", "|---|---|---|---|"]
    for key in sorted(set(ours) & set(theirs)):
        m = ours[key]
        direction = "higher" if m["higher_is_better"] else "lower"
        lines.append(f"| {key} ({direction} is better) | {theirs[key]['model']:.4f} | {m['model']:.4f} | "
                     f"{m['baseline']:.4f}{'' if m['beats_baseline'] else ' (not beaten)'} |")
    return "\n".join(lines)


def _seeds_flag(text: str) -> tuple[int, ...]:
    """argparse type of --seeds: "5,6,7" -> (5, 6, 7), refused (exit 2, before any evaluation) as
    `check_validation_seeds` refuses."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
        check_validation_seeds(seeds)
    except ValueError as exc:  # InvalidInputError is a ValueError
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: {exc}") from None
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--against", type=Path, default=None,
                        help="the other model directory (default: the shipped one)")
    parser.add_argument("--seeds", type=_seeds_flag, default=VALIDATION_SEEDS, metavar="S,S,...",
                        help="validation seeds, never 0 (default 5,6,7)")
    parser.add_argument("--quick", action="store_true", help="the quick evaluation pools (a smoke test, not a choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:  # a path that cannot be written is refused now, not after minutes of evaluating
            check_output_file(args.out, overwrite=True)
        result = compare(args.candidate, args.against, args.seeds, args.quick,
                         progress=lambda message: print(message, flush=True))
    except UniPoseError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(comparison_table(result))


if __name__ == "__main__":
    main()
