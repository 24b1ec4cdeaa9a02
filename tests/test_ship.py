"""Shipping a trained run as the embedded model: export writes what ships, install ships only improvements, and
candidates are compared on validation pools (`evaluation.validation`), never on the held-out one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unipose_sdk.checkpoint.sdk_format import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.evaluation import validation
from unipose_sdk.evaluation.validation import compare, comparison_table, mean_report
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.training.pipeline import STAGE_INFO, load_text_tokenizer
from unipose_sdk.training.ship import ASSETS_DIR, export, improves_on, install, main


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


def test_first_shipment_needs_a_majority_of_baselines_beaten() -> None:
    ok, why = improves_on(_report(0.6, 200.0, 0.4), None)  # beats 2 of 3 gated baselines
    assert ok and "2 of 3" in why
    ok, why = improves_on(_report(0.2, 240.0, 0.4), None)  # beats 1 of 3
    assert not ok and "not a majority" in why
    assert improves_on(_report(0.6, 200.0, 0.4), _report(0.0, 999.0, 0.0, random=True))[0]


def test_a_later_shipment_must_improve_on_the_shipped_weights() -> None:
    shipped = _report(0.6, 200.0, 0.55)
    better = _report(0.7, 190.0, 0.52)  # wins facts and estimation, loses precision, still beats 3 baselines
    assert improves_on(better, shipped)[0]
    worse = _report(0.7, 210.0, 0.45)  # wins 1, loses 2
    ok, why = improves_on(worse, shipped)
    assert not ok and "worse on 2" in why
    fewer_baselines = _report(0.65, 180.0, 0.45)  # wins 2, loses 1, but beats 2 baselines instead of 3
    assert not improves_on(fewer_baselines, shipped)[0]


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = UniPoseModel.from_config(get_preset("unipose-tiny"))
    save_model(model, run / "stage1", load_text_tokenizer(), dtype=torch.float32, source="test stage",
               overwrite=True)
    info = {"stage": 1, "seconds": 12.0, "seed": 0, "batch_size": 2, "data_seconds": 1.0,
            "language": {"steps": 3, "ended_by": "steps"}}
    (run / "stage1" / STAGE_INFO).write_text(json.dumps(info))
    return run


def test_export_writes_float16_weights_and_the_pose_decoding(run_dir: Path, tmp_path: Path) -> None:
    candidate = export(run_dir, tmp_path / "candidate")
    loaded = load_model(candidate)
    assert not loaded.is_random and loaded.model.config.pose_decoding == "expected_code"
    assert json.loads((candidate / CONFIG_FILE).read_text())["dtype"] == "float16"
    assert json.loads((candidate / "training.json").read_text())["stage1"]["language"]["steps"] == 3
    assert load_model(export(run_dir, tmp_path / "argmax", "argmax")).model.config.pose_decoding == "argmax"
    assert loaded.model.config.text_to_pose_code_temperature == 1.0
    cold = load_model(export(run_dir, tmp_path / "cold", text_to_pose_code_temperature=0.7)).model.config
    assert cold.text_to_pose_code_temperature == 0.7 and cold.text_to_pose_guidance == 0.0
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "guided"), "--text-to-pose-guidance",
                 "2"]) is None
    assert load_model(tmp_path / "guided").model.config.text_to_pose_guidance == 2.0


@pytest.mark.parametrize(("flag", "value", "allowed"), [
    *(("--text-to-pose-code-temperature", v, "[0.05, 10]") for v in ("0", "0.01", "12", "inf", "cold")),
    *(("--text-to-pose-guidance", v, "[0, 10]") for v in ("-1", "12", "nan", "strong"))])
def test_export_refuses_a_decoding_setting_out_of_range_before_writing(
        flag: str, value: str, allowed: str, run_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "candidate"
    with pytest.raises(SystemExit) as info:
        main(["export", "--run", str(run_dir), "--out", str(out), flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and repr(value) in err and allowed in err
    assert not out.exists()


def test_install_ships_an_improvement_and_refuses_the_rest(run_dir: Path, tmp_path: Path) -> None:
    candidate = export(run_dir, tmp_path / "candidate")
    assets = tmp_path / "assets"
    assets.mkdir()
    for name, report in (("evaluation.json", _report(0.2, 240.0, 0.4)),):  # a majority of baselines lost
        (candidate / name).write_text(json.dumps(report))
    (candidate / "evaluation.md").write_text("# report\n")
    with pytest.raises(SystemExit, match="not a majority"):
        install(candidate, assets)
    assert not (assets / WEIGHTS_FILE).exists()  # nothing half-installed
    (candidate / "evaluation.json").write_text(json.dumps(_report(0.0, 0.0, 0.0, random=True)))
    with pytest.raises(SystemExit, match="random"):
        install(candidate, assets)
    (candidate / "evaluation.json").write_text(json.dumps(_report(0.6, 200.0, 0.55)))
    assert "2 of 3" not in install(candidate, assets)  # 3 of 3
    for name in (CONFIG_FILE, WEIGHTS_FILE, "evaluation.json", "evaluation.md", "MODEL_CARD.md"):
        assert (assets / name).is_file()
    card = (assets / "MODEL_CARD.md").read_text()
    assert "| stage1 |" in card and "facts_hold" in card
    assert json.loads((assets / "training.json").read_text()).keys() == json.loads(
        (candidate / "training.json").read_text()).keys()  # the records ship with the weights
    # Now trained weights are shipped: the same candidate again is no improvement.
    with pytest.raises(SystemExit, match="better than the shipped weights on 0"):
        install(candidate, assets)


def test_install_writes_nothing_when_the_model_card_cannot_be_made(run_dir: Path, tmp_path: Path) -> None:
    candidate = export(run_dir, tmp_path / "candidate")
    (candidate / "evaluation.json").write_text(json.dumps(_report(0.6, 200.0, 0.55)))
    (candidate / "evaluation.md").write_text("# report\n")
    records = json.loads((candidate / "training.json").read_text())
    del records["stage1"]["seconds"]  # a record the card cannot read
    (candidate / "training.json").write_text(json.dumps(records))
    assets = tmp_path / "assets"
    assets.mkdir()
    with pytest.raises(KeyError, match="seconds"):
        install(candidate, assets)
    assert list(assets.iterdir()) == []  # no weights beside a missing card


def test_install_compares_only_reports_of_one_evaluator_and_pool(run_dir: Path, tmp_path: Path) -> None:
    from unipose_sdk.evaluation.runner import EVALUATOR_VERSION

    candidate = export(run_dir, tmp_path / "candidate")
    assets = tmp_path / "assets"
    assets.mkdir()
    (candidate / "evaluation.md").write_text("# report\n")
    (candidate / "evaluation.json").write_text(json.dumps(_report(0.6, 200.0, 0.55)))
    install(candidate, assets)
    weights = (assets / WEIGHTS_FILE).read_bytes()
    newer = {**_report(0.9, 100.0, 0.9), "evaluator_version": EVALUATOR_VERSION + 1}
    for better, names in ((newer, f"--model {assets}"),  # the shipped report is the older: measure it again
                          ({**_report(0.9, 100.0, 0.9), "eval_seed": 1}, f"--model {candidate}"),
                          ({**_report(0.9, 100.0, 0.9), "quick": True}, f"--model {candidate}")):
        (candidate / "evaluation.json").write_text(json.dumps(better))
        with pytest.raises(SystemExit, match="measured different things") as stopped:
            install(candidate, assets)
        assert names in str(stopped.value)
        assert (assets / WEIGHTS_FILE).read_bytes() == weights  # nothing installed
    (candidate / "evaluation.json").write_text(json.dumps(_report(0.9, 100.0, 0.9)))
    assert "worse on 0" in install(candidate, assets)


def test_the_history_of_continued_weights_lists_every_earlier_stage_first() -> None:
    from unipose_sdk.training.ship import training_history

    s1, s2 = {"seconds": 1.0}, {"seconds": 2.0}
    earlier = {"stage1": s1, "stage2": s2}
    later = {"seconds": 3.0, "init_from": {"path": "old/stage2", "records": earlier}}
    assert training_history({"stage3": later}) == [("stage1", s1), ("stage2", s2), ("stage3 (continued)", later)]
    assert training_history(earlier) == [("stage1", s1), ("stage2", s2)]


def test_shipped_records_hold_no_machine_paths() -> None:
    from unipose_sdk.training.ship import portable_records, training_history

    inner = {"seconds": 1.0, "init_from": {"path": "/home/someone/runs/v1/stage3", "records": {"stage1": {}}}}
    outer = {"stage3": {"seconds": 2.0, "init_from": {"path": "/srv/x/runs/v2/stage3", "records": {"stage3": inner}}}}
    portable = portable_records(outer)
    assert portable["stage3"]["init_from"]["path"] == "v2/stage3"
    assert portable["stage3"]["init_from"]["records"]["stage3"]["init_from"]["path"] == "v1/stage3"
    assert "/home" not in json.dumps(portable) and outer["stage3"]["init_from"]["path"].startswith("/srv")
    assert len(training_history(portable)) == len(training_history(outer)) == 3


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
        validation.main(["--candidate", str(tmp_path), "--seeds", "0,5"])
    assert exit_info.value.code == 2
    assert "received seeds=[0, 5]" in capsys.readouterr().err


def test_cli_compare_runs_both_models_on_quick_validation_pools(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.json"
    validation.main(["--candidate", str(ASSETS_DIR), "--seeds", "5", "--quick", "--out", str(out)])
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
        validation.main(["--candidate", str(ASSETS_DIR), "--against", str(tmp_path / "missing"), "--seeds", "5"])
    assert exit_info.value.code == 2
    assert f"against='{tmp_path / 'missing'}', which is not an existing directory" in capsys.readouterr().err


def test_cli_compare_refuses_an_unwritable_out_path_before_evaluating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import unipose_sdk.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    out = tmp_path / "no-such-dir" / "compare.json"
    with pytest.raises(SystemExit) as exit_info:
        validation.main(["--candidate", str(ASSETS_DIR), "--seeds", "5", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "whose directory does not exist" in capsys.readouterr().err and not out.parent.exists()
