"""The decoding-choice grid (`python -m unipose_sdk.evaluation.decoding`): its rows are the Generator's poses, its
rule picks the best sum, and bad settings are refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unipose_sdk.evaluation.freeform as F
import unipose_sdk.evaluation.metrics as M
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.evaluation import decoding
from unipose_sdk.tasks.generator import Generator


def assert_row_scores_the_generator(row: dict, generator: Generator, captions: list) -> None:
    """The grid row's facts (one seed's `captions`) and free-form share are what `generator` gives."""
    out = generator.generate([text for text, _ in captions])
    generated = M.facts_of(np.stack([r.pose.axis_angle().numpy()[0] for r in out]))
    facts = M.nan_mean([M.fact_holds_fraction(s, g) for (_, s), g in zip(captions, generated)])
    assert row["facts_hold_by_seed"] == [pytest.approx(facts, abs=1e-4)]
    assert row["free_form_prompts_satisfied"] == pytest.approx(F.freeform_score(generator)["prompts_satisfied"],
                                                               abs=1e-4)


@pytest.fixture(scope="module")
def grid() -> dict:
    return decoding.decoding_grid(None, guidances=(0.0, 2.0), temperatures=(0.7, 1.0), seeds=(5,), poses=24)


def test_each_row_scores_the_poses_the_generator_gives_at_that_setting(grid: dict) -> None:
    captions = decoding.validation_captions(5, poses=24)
    singles = [row for row in grid["rows"] if "pose_candidates" not in row]
    assert len(singles) == 4
    for row in singles[::3]:  # (0, 0.7) and (2, 1): both ends of the grid
        options = {"pose_guidance": row["pose_guidance"], "pose_code_temperature": row["pose_code_temperature"]}
        with Generator.from_pretrained(**options) as generator:
            assert_row_scores_the_generator(row, generator, captions)


def test_the_rule_picks_the_highest_sum_of_free_form_and_facts(grid: dict) -> None:
    for row in grid["rows"]:
        assert row["score"] == pytest.approx(row["facts_hold"] + row["free_form_prompts_satisfied"], abs=2e-4)
    assert grid["chosen"]["score"] == max(r["score"] for r in grid["rows"])
    assert grid["chosen"] is next(r for r in grid["rows"] if r["score"] == grid["chosen"]["score"])
    table = decoding.grid_table(grid)
    assert table.count("(chosen)") == 1 and table.count("\n| ") == 1 + len(grid["rows"])


@pytest.mark.parametrize("kwargs, named", [
    ({"seeds": (0,)}, "seeds=[0]"),
    ({"seeds": ()}, "seeds=[]"),
    ({"guidances": (11.0,)}, "11"),
    ({"temperatures": (0.0,)}, "0.0"),
    ({"guidances": ()}, "guidances=[]"),
])
def test_bad_settings_are_refused_before_any_work(kwargs: dict, named: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Generator, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(InvalidInputError, match=named.replace("[", r"\[").replace("]", r"\]")):
        decoding.decoding_grid(None, **kwargs)


def test_cli_refuses_the_held_out_seed_and_writes_the_chosen_setting(tmp_path, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as exit_info:
        decoding.main(["--seeds", "0"])
    assert exit_info.value.code == 2
    rows = [{"pose_guidance": 2.0, "pose_code_temperature": 1.0, "facts_hold": 0.7, "facts_hold_by_seed": [0.7],
             "free_form_prompts_satisfied": 0.5, "score": 1.2}]
    monkeypatch.setattr(decoding, "decoding_grid",
                        lambda *a, **k: {"model": "m", "seeds": [5], "rows": rows, "chosen": rows[0]})
    out = tmp_path / "grid.json"
    decoding.main(["--guidance", "2", "--temperature", "1", "--seeds", "5", "--out", str(out)])
    assert json.loads(out.read_text())["chosen"]["pose_guidance"] == 2.0
    assert "--text-to-pose-guidance 2 --text-to-pose-code-temperature 1" in capsys.readouterr().out
