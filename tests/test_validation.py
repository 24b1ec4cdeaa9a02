"""Choosing between candidates on validation pools: means over seeds, the install rule on them, seed 0 refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.evaluation.validation import compare, comparison_table, main, mean_report
from unipose_sdk.training.ship import ASSETS_DIR


def _metric(model: float, baseline: float, higher: bool = True, gate: bool = True) -> dict:
    beats = model > baseline if higher else model < baseline
    return {"model": model, "baseline": baseline, "baseline_name": "trivial", "higher_is_better": higher,
            "beats_baseline": beats, "gate": gate}


def _report(facts: float, mpjpe: float, precision: float, random: bool = False) -> dict:
    return {"model_is_random": random, "quick": False, "eval_seed": 10007,
            "metrics": {"text_to_pose": {"facts_hold": _metric(facts, 0.3),
                                         "mpjpe_mm": _metric(mpjpe, 245.0, higher=False, gate=False)},
                        "estimation": {"mpjpe_mm": _metric(mpjpe, 230.0, higher=False)},
                        "pose_description": {"precision": _metric(precision, 0.5)}}}


def test_mean_report_averages_each_metric_over_the_pools_and_judges_the_means() -> None:
    a, b = _report(0.6, 200.0, 0.45), _report(0.8, 260.0, 0.56)
    a["eval_seed"], b["eval_seed"] = 10012, 10013
    mean = mean_report([a, b])
    assert mean["eval_seeds"] == [10012, 10013]
    assert mean["metrics"]["text_to_pose"]["facts_hold"]["model"] == pytest.approx(0.7)
    # 230 mm against a 230 mm baseline: the mean no longer beats it, though one pool did
    estimation = mean["metrics"]["estimation"]["mpjpe_mm"]
    assert estimation["model"] == pytest.approx(230.0) and not estimation["beats_baseline"]
    assert mean["metrics"]["pose_description"]["precision"]["beats_baseline"]  # 0.505 > 0.5
    assert not mean["metrics"]["text_to_pose"]["mpjpe_mm"]["gate"]  # the gate flag is kept


def test_mean_report_refuses_reports_of_different_pool_sizes() -> None:
    quick = {**_report(0.6, 200.0, 0.5), "quick": True}
    with pytest.raises(InvalidInputError, match="pool size"):
        mean_report([_report(0.6, 200.0, 0.5), quick])


@pytest.mark.parametrize("seeds", [(), (0,), (5, 0), (-1,), (True,), (5.0,)])
def test_compare_refuses_the_held_out_seed_before_evaluating(seeds: tuple, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    import unipose_sdk.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("evaluated before the seeds were checked"))
    with pytest.raises(InvalidInputError, match="seed 0 draws the held-out pool"):
        compare(tmp_path, None, seeds)


def test_compare_applies_the_install_rule_to_the_means_over_validation_seeds(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    import unipose_sdk.evaluation.runner as runner

    calls = []
    shipped_by_seed = {5: _report(0.60, 200.0, 0.55), 6: _report(0.62, 210.0, 0.53)}
    # the candidate wins facts and estimation on the means, loses precision: it improves
    candidate_by_seed = {5: _report(0.70, 195.0, 0.50), 6: _report(0.66, 200.0, 0.54)}

    def fake_evaluate(model, quick=False, seed=0, **_):  # noqa: ANN001, ANN202
        calls.append((model, seed, quick))
        return (candidate_by_seed if model == tmp_path else shipped_by_seed)[seed]

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    result = compare(tmp_path, None, (5, 6))
    assert calls == [(tmp_path, 5, False), (tmp_path, 6, False), (None, 5, False), (None, 6, False)]
    assert result["improves"] and "better than the shipped weights on 2 gated metrics, worse on 1" in result["why"]
    assert result["candidate"]["metrics"]["text_to_pose"]["facts_hold"]["model"] == pytest.approx(0.68)
    table = comparison_table(result)
    assert "| text_to_pose.facts_hold (higher is better) | 0.6100 | 0.6800 | 0.3000 |" in table
    assert "estimation.mpjpe_mm (lower is better)" in table and "text_to_pose.mpjpe_mm" not in table  # gated only


def test_cli_compare_refuses_seed_zero_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--candidate", str(tmp_path), "--seeds", "0,5"])
    assert exit_info.value.code == 2
    assert "received seeds=[0, 5]" in capsys.readouterr().err


def test_cli_compare_runs_both_models_on_quick_validation_pools(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.json"
    main(["--candidate", str(ASSETS_DIR), "--seeds", "5", "--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    # the shipped model against itself: no metric better or worse, so it does not improve
    assert not result["improves"] and "on 0 gated metrics, worse on 0" in result["why"]
    assert result["candidate"]["eval_seeds"] == result["against"]["eval_seeds"] == [10012]
    assert "Validation seeds 5: the candidate does not improve" in capsys.readouterr().out


def test_cli_compare_refuses_a_missing_model_directory_before_evaluating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import unipose_sdk.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("evaluated before the paths were checked"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--candidate", str(ASSETS_DIR), "--against", str(tmp_path / "missing"), "--seeds", "5"])
    assert exit_info.value.code == 2
    assert f"against='{tmp_path / 'missing'}', which is not an existing directory" in capsys.readouterr().err
