"""Choose a model's text-to-pose decoding (pose guidance w, code temperature T) on validation data.

    python -m unipose_sdk.evaluation.decoding --model CANDIDATE_DIR [--guidance 0,1.5,2,2.5,3]
        [--temperature 0.7,1,1.3] [--seeds 5,6,7] [--candidates "W:T,W:T;W:T,..."] [--out F.json]

Every setting of the grid is scored on two things, both away from the held-out pool the install gate uses: the
share of caption facts that hold on the generated pose over the validation pools of `--seeds` (the measurement
`unipose evaluate --seed S` reports as text_to_pose.facts_hold), and the share of the free-form development set
satisfied. The rule: the setting with the highest free-form + mean facts (ties: the first in grid order). Write
the chosen pair with `ship export --text-to-pose-guidance W --text-to-pose-code-temperature T`.

For a model with a text-pose matcher, the grid also scores choosing among candidate decodings (what its
Generator does by default, `UniPoseConfig.text_to_pose_candidates`): the model's own list of candidates, and each
list given with `--candidates` (lists separated by ";"). A different list is written into the model by
`python -m unipose_sdk.training.matcher --candidates`.

The query logits of every prompt are computed once (one forward per prompt, as the Generator's one-pass pose
block computes them) and each setting only re-decodes them, so a grid of 15 settings costs little more than one.
The decode is the Generator's own (`generation.TokenPicker`, `UniPose.pose_chooser`): a row of the grid gives
exactly the poses `Generator` gives with that pose_guidance and pose_code_temperature, or with those candidates.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import unipose_sdk.evaluation.freeform as F
import unipose_sdk.evaluation.metrics as M
from unipose_sdk import generation
from unipose_sdk.errors import InvalidInputError, UniPoseError
from unipose_sdk.evaluation.runner import caption_rng, text_to_pose_captions
from unipose_sdk.evaluation.validation import VALIDATION_SEEDS, _seeds_flag, check_validation_seeds
from unipose_sdk.fileio import atomic_write_text, check_output_file
from unipose_sdk.models.config import check_pose_candidates, check_pose_code_temperature, check_pose_guidance
from unipose_sdk.text.prompts import Task
from unipose_sdk.training.pools import EVAL_SEED_OFFSET, PoolSizes, build_pool

GUIDANCES = (0.0, 1.5, 2.0, 2.5, 3.0)
TEMPERATURES = (0.7, 1.0, 1.3)
VALIDATION_POSES = 480  # as many as `unipose evaluate` draws per pool


def validation_captions(seed: int, poses: int = VALIDATION_POSES) -> list[tuple[str, list[Any]]]:
    """(caption, facts it states) of every pose of the validation pool of `seed` that gets a caption, composed
    exactly as `unipose evaluate --seed SEED` composes its text-to-pose prompts (same pool, same random stream)."""
    check_validation_seeds([seed])
    pool = build_pool(seed + EVAL_SEED_OFFSET, PoolSizes(poses=poses, pairs=1, pose_images=0, pair_images=0,
                                                         texts_per_pair=1), None)
    return [(text, stated) for _, text, stated in text_to_pose_captions(pool.facts, caption_rng(seed))]


def prompt_query_logits(session: Any, texts: Sequence[str]) -> torch.Tensor:
    """The text-to-pose prompts' pose-query logits [N, Q, V] (float32), one forward per prompt."""
    with session.lock, torch.inference_mode():
        rows = [session.prompts.build_task(Task.TEXT_TO_POSE, caption=t) for t in texts]
        return torch.stack([generation.pose_query_logits(session.runtime.llm, embeds, session.config.vocab)
                            for embeds in session.embed_rows(rows, None)])


def decoded_axis_angle(session: Any, query_logits: torch.Tensor, guidance: float, temperature: float,
                       candidates: Sequence[tuple[float, float]] = (), sentences: torch.Tensor | None = None,
                       ) -> np.ndarray:
    """[N, 66] axis-angle poses of query logits [N, Q, V] decoded as the Generator decodes them at this guidance
    and code temperature, or, given `candidates`, as it chooses among them by the matcher against `sentences`
    [N, H] (the prompts' sentence embeddings)."""
    vocab = session.config.vocab
    config = generation.GenerationConfig(max_new_tokens=generation.pose_block_length(vocab),
                                         pose_code_temperature=temperature, pose_guidance=guidance,
                                         pose_candidates=tuple(candidates))
    picker = generation.TokenPicker(
        config, vocab, session.pose_code_vectors,
        unconditional_query_logits=session.unconditional_query_logits(Task.TEXT_TO_POSE) if config.guided else None,
        choose_pose=session.pose_chooser(sentences) if candidates else None)
    codes = picker.codes(query_logits)
    return session.decode_poses(codes).axis_angle().numpy().reshape(len(codes), -1)


def prompt_sentences(session: Any, texts: Sequence[str]) -> torch.Tensor:
    """The sentence embeddings [N, H] of the prompts (what the matcher scores candidates against)."""
    with session.lock, torch.inference_mode():
        sentences = session.encode_sentences(list(texts))[1]
    if sentences is None:
        raise InvalidInputError.make(f"model {session.model_name} on {session.runtime.backend}",
                                     "a backend that gives sentence embeddings", "Use the torch backend.")
    return sentences


def decoding_grid(model: str | Path | None, guidances: Sequence[float] = GUIDANCES,
                  temperatures: Sequence[float] = TEMPERATURES, seeds: Sequence[int] = VALIDATION_SEEDS,
                  poses: int = VALIDATION_POSES,
                  candidate_lists: Sequence[Sequence[tuple[float, float]]] = ()) -> dict[str, Any]:
    """Score every (guidance, temperature) on the validation facts of `seeds` and the free-form development set,
    and for a model with a text-pose matcher its own candidate list and each of `candidate_lists`.
    Returns {"rows": [{"pose_guidance", "pose_code_temperature"} or {"pose_candidates"}, with "facts_hold"
    (mean), "facts_hold_by_seed", "free_form_prompts_satisfied", "score"}...], "chosen": the row the rule picks,
    "seeds", "model"}."""
    check_validation_seeds(seeds)
    for w in guidances:
        check_pose_guidance(w)
    for t in temperatures:
        check_pose_code_temperature(t)
    candidate_lists = [check_pose_candidates(c) for c in candidate_lists]
    if not guidances or not temperatures:
        raise InvalidInputError.make(f"guidances={list(guidances)}, temperatures={list(temperatures)}",
                                     "at least one of each", "Pass e.g. --guidance 0,2 --temperature 1.")
    from unipose_sdk.tasks.generator import Generator

    with Generator.from_pretrained(model, device="cpu") as generator:
        session = generator.session
        if session.config.family != "unipose":
            raise InvalidInputError.make(f"a {session.config.family} model", "a UniPose model (pose codes to decode)",
                                         "ChatPose regresses its poses: it has no decoding to choose.")
        if candidate_lists and not session.pose_candidates:
            raise InvalidInputError.make(f"--candidates for model {session.model_name}, which has no text-pose matcher",
                                         "a model with one", "Add one: python -m unipose_sdk.training.matcher.")
        lists = list(dict.fromkeys([*([session.pose_candidates] if session.pose_candidates else []),
                                    *candidate_lists]))
        pools = [validation_captions(seed, poses) for seed in seeds]
        pool_texts = [[text for text, _ in captions] for captions in pools]
        pool_logits = [prompt_query_logits(session, texts) for texts in pool_texts]
        prompts = F.load_prompts()
        free_form_logits = prompt_query_logits(session, [p.text for p in prompts])
        pool_sentences = free_form_sentences = None
        if lists:
            pool_sentences = [prompt_sentences(session, texts) for texts in pool_texts]
            free_form_sentences = prompt_sentences(session, [p.text for p in prompts])

        def scored(setting: dict[str, Any], w: float, t: float, candidates: tuple[tuple[float, float], ...]) -> dict:
            facts = []
            for i, (captions, logits) in enumerate(zip(pools, pool_logits)):
                sentences = pool_sentences[i] if candidates else None
                generated = M.facts_of(decoded_axis_angle(session, logits, w, t, candidates, sentences))
                facts.append(M.nan_mean([M.fact_holds_fraction(stated, got)
                                         for (_, stated), got in zip(captions, generated)]))
            joints = M.joints_of(decoded_axis_angle(session, free_form_logits, w, t, candidates,
                                                    free_form_sentences if candidates else None))
            satisfied = float(np.mean([all(r) for r in F.check_results(joints, prompts)]))
            mean_facts = float(np.mean(facts))
            return {**setting, "facts_hold": round(mean_facts, 4),
                    "facts_hold_by_seed": [round(float(f), 4) for f in facts],
                    "free_form_prompts_satisfied": round(satisfied, 4), "score": round(mean_facts + satisfied, 4)}

        rows = [scored({"pose_guidance": w, "pose_code_temperature": t}, w, t, ())
                for w in guidances for t in temperatures]
        rows += [scored({"pose_candidates": [list(pair) for pair in candidates]}, 0.0, 1.0, candidates)
                 for candidates in lists]
        run = session.run_info()
    chosen = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores
    return {"model": Path(run.model).name or run.model, "seeds": list(seeds), "rows": rows, "chosen": chosen}


def grid_table(result: dict[str, Any]) -> str:
    """Markdown: one line per setting, the chosen one marked."""
    lines = [f"Decoding grid of {result['model']} (validation seeds {', '.join(map(str, result['seeds']))}; rule: "
             "the highest free-form + facts)", "",
             "| guidance | code temperature | facts hold | free-form satisfied | sum |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        mark = " (chosen)" if r is result["chosen"] else ""
        if "pose_candidates" in r:
            setting = f"| the matcher's choice among {_pairs_text(r['pose_candidates'])} | |"
        else:
            setting = f"| {r['pose_guidance']:g} | {r['pose_code_temperature']:g} |"
        lines.append(f"{setting} {r['facts_hold']:.4f} | {r['free_form_prompts_satisfied']:.4f} | "
                     f"{r['score']:.4f}{mark} |")
    return "\n".join(lines)


def _pairs_text(pairs: Sequence[Sequence[float]]) -> str:
    return ",".join(f"{w:g}:{t:g}" for w, t in pairs)


def _candidate_lists_flag(text: str) -> list[tuple[tuple[float, float], ...]]:
    from unipose_sdk.training.matcher import candidates_flag

    return [candidates_flag(part) for part in text.split(";")]


def _numbers_flag(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas, e.g. 0,2,3") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the embedded one)")
    parser.add_argument("--guidance", type=_numbers_flag, default=GUIDANCES, metavar="W,W,...")
    parser.add_argument("--temperature", type=_numbers_flag, default=TEMPERATURES, metavar="T,T,...")
    parser.add_argument("--seeds", type=_seeds_flag, default=VALIDATION_SEEDS, metavar="S,S,...",
                        help="validation seeds, never 0 (default 5,6,7)")
    parser.add_argument("--candidates", type=_candidate_lists_flag, default=(), metavar="W:T,W:T;W:T,...",
                        help="candidate lists to score besides the model's own (models with a text-pose matcher)")
    parser.add_argument("--out", type=Path, default=None, help="write the grid as JSON here")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:  # refused now, not after the grid
            check_output_file(args.out, overwrite=True)
        result = decoding_grid(args.model, args.guidance, args.temperature, args.seeds,
                               candidate_lists=args.candidates)
    except UniPoseError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(grid_table(result))
    chosen = result["chosen"]
    if "pose_candidates" in chosen:
        print(f"\nchosen: python -m unipose_sdk.training.matcher --candidates {_pairs_text(chosen['pose_candidates'])}")
    else:
        print(f"\nchosen: ship export --text-to-pose-guidance {chosen['pose_guidance']:g} "
              f"--text-to-pose-code-temperature {chosen['pose_code_temperature']:g}")


if __name__ == "__main__":
    main()
