"""Weight averaging of runs continued from the same weights (`training.average`, `ship average`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from unipose_sdk.checkpoint.sdk_format import load_model, save_model
from unipose_sdk.errors import CheckpointError, InvalidInputError, ModelNotFoundError
from unipose_sdk.fileio import TerminatedBySignal
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.training import average as average_module
from unipose_sdk.training.average import FROZEN_PREFIXES, average_checkpoints, parse_source
from unipose_sdk.training.pipeline import STAGE_INFO, load_text_tokenizer
from unipose_sdk.training.ship import export, main, model_card, portable_records, training_history

LLM_KEY = "llm.lm_head.weight"


def _save(model: UniPoseModel, directory: Path, info: dict) -> Path:
    save_model(model, directory, load_text_tokenizer(), dtype=torch.float32, source="test", overwrite=True)
    (directory / STAGE_INFO).write_text(json.dumps(info))
    return directory


def _continued(base: UniPoseModel, base_dir: Path, out: Path, seed: int, seconds: float) -> Path:
    """A stand-in for `unipose train --init-from base_dir`: the base weights with every trained tensor moved."""
    model = UniPoseModel.from_config(base.config)
    model.load_state_dict(base.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.startswith(FROZEN_PREFIXES):
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    info = {"stage": 3, "seconds": seconds, "seed": seed, "batch_size": 2, "device": "cpu",
            "language": {"steps": 5, "ended_by": "steps", "history": [{"step": 5, "loss": 3.0}]},
            "init_from": {"path": str(base_dir),
                          "records": {"stage1": json.loads((base_dir / STAGE_INFO).read_text())}}}
    return _save(model, out / "stage3", info)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    base = UniPoseModel.from_config(get_preset("unipose-tiny"))
    base_info = {"stage": 1, "seconds": 12.0, "seed": 0, "batch_size": 2, "data_seconds": 1.0,
                 "language": {"steps": 3, "ended_by": "steps"}}
    base_dir = _save(base, root / "base" / "stage1", base_info)
    return (base_dir, _continued(base, base_dir, root / "run_a", 1, 30.0),
            _continued(base, base_dir, root / "run_b", 2, 40.0))


def test_the_mean_is_weighted_and_keeps_the_frozen_parts(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run_a, run_b = runs
    # Thirds, not quarters: x / 3 + 2x / 3 is not always x in floating point, so the frozen parts must be copied.
    stage = average_checkpoints([(run_a, 1.0), (run_b, 2.0)], tmp_path / "soup")
    assert stage == tmp_path / "soup" / "stage3"
    a, b = (load_model(d).model.state_dict() for d in (run_a, run_b))
    mean = load_model(stage).model.state_dict()
    torch.testing.assert_close(mean[LLM_KEY], a[LLM_KEY] / 3 + 2 * b[LLM_KEY] / 3)
    assert not torch.equal(mean[LLM_KEY], a[LLM_KEY])
    frozen = [k for k in mean if k.startswith(FROZEN_PREFIXES)]
    assert frozen and all(torch.equal(mean[key], a[key]) for key in frozen)
    record = json.loads((stage / STAGE_INFO).read_text())
    assert [s["weight"] for s in record["average_of"]] == pytest.approx([1 / 3, 2 / 3])
    assert record["average_of"][1]["records"]["stage3"]["seed"] == 2
    assert record["average_of"][1]["records"]["stage3"]["language"]["steps"] == 5
    assert '"history"' not in json.dumps(record)  # the loss curves stay in the runs' directories
    assert not list(tmp_path.glob(".*partial"))


def test_the_history_lists_shared_stages_once_and_marks_each_averaged_run(
        runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run_a, run_b = runs
    average_checkpoints([(run_a, 1.0), (run_b, 1.0)], tmp_path / "soup")
    candidate = export(tmp_path / "soup", tmp_path / "candidate")
    training = json.loads((candidate / "training.json").read_text())
    names = [name for name, _ in training_history(training)]
    averaged = "stage3 (continued) (averaged, weight 0.50)"
    assert names == ["stage1", averaged, averaged, "stage3 (weight average)"]
    assert "weight average of 2 runs" in load_model(candidate).source
    portable = portable_records(training)
    assert all(len(Path(s["path"]).parts) <= 2 for s in portable["stage3"]["average_of"])
    report = {"eval_seed": 10007, "metrics": {"text_to_pose": {"facts_hold": {
        "model": 0.5, "baseline": 0.3, "baseline_name": "trivial", "higher_is_better": True}}}}
    card = model_card(report, training, candidate)
    assert "| stage3 (weight average) |" in card and 'the weighted mean of the 2 runs marked "averaged"' in card
    assert "seeds 0, 1, 2" in card and "not recorded" not in card


def test_parse_source_reads_an_optional_weight() -> None:
    assert parse_source("runs/a/stage3") == (Path("runs/a/stage3"), 1.0)
    assert parse_source("runs/a/stage3:2.5") == (Path("runs/a/stage3"), 2.5)
    assert parse_source("runs/a:b/stage3") == (Path("runs/a:b/stage3"), 1.0)  # a colon inside a name
    for bad in ("runs/a/stage3:0", "runs/a/stage3:-1", "runs/a/stage3:nan", "runs/a/stage3:inf"):
        with pytest.raises(InvalidInputError, match="positive finite"):
            parse_source(bad)


def _variant(source: Path, out: Path, change: str) -> Path:
    """A copy of `source` that does not belong with it: another frozen pose tokenizer, tokenizer or model size."""
    loaded = load_model(source)
    if change == "config":
        config = get_preset("unipose-tiny")
        fields = config.to_dict()
        config = type(config).from_dict({**fields, "llm": {**fields["llm"], "num_hidden_layers": 1}})
        return _save(UniPoseModel.from_config(config), out, {})
    shutil.copytree(source, out)
    if change == "frozen":
        model = loaded.model
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if n.startswith("pose_tokenizer.")).add_(1.0)
        save_model(model, out, loaded.tokenizer, dtype=torch.float32, overwrite=True)
    elif change == "tokenizer":
        data = json.loads((out / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]  # two words trade ids: the same weights would read other text
        first, second = sorted(vocab, key=vocab.get)[10:12]
        vocab[first], vocab[second] = vocab[second], vocab[first]
        (out / "tokenizer.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(("change", "message"), [
    ("frozen", "a different frozen pose_tokenizer."),
    ("tokenizer", "another tokenizer.json"),
    ("config", "another model config"),
])
def test_checkpoints_that_do_not_belong_together_are_refused_before_writing(
        runs: tuple[Path, Path, Path], tmp_path: Path, change: str, message: str) -> None:
    _, run_a, _ = runs
    other = _variant(run_a, tmp_path / "other", change)
    with pytest.raises(CheckpointError, match=message) as info:
        average_checkpoints([(run_a, 1.0), (other, 1.0)], tmp_path / "soup")
    assert str(other) in str(info.value)
    assert not (tmp_path / "soup").exists() and not list(tmp_path.glob(".*partial"))


def test_bad_source_lists_are_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run_a, run_b = runs
    with pytest.raises(InvalidInputError, match="at least two"):
        average_checkpoints([(run_a, 1.0)], tmp_path / "soup")
    with pytest.raises(InvalidInputError, match="distinct directories"):
        average_checkpoints([(run_a, 1.0), (run_a, 2.0)], tmp_path / "soup")
    with pytest.raises(ModelNotFoundError, match="missing"):
        average_checkpoints([(run_a, 1.0), (tmp_path / "missing", 1.0)], tmp_path / "soup")
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        average_checkpoints([(run_a, 1.0), (run_b, 1.0)], tmp_path / "taken")
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("stop", [TerminatedBySignal(15), KeyboardInterrupt()])
def test_a_stop_while_writing_leaves_nothing(runs: tuple[Path, Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, stop: BaseException) -> None:
    _, run_a, run_b = runs
    real_save = average_module.save_model

    def save_then_stop(*args: object, **kwargs: object) -> Path:
        real_save(*args, **kwargs)
        raise stop

    monkeypatch.setattr(average_module, "save_model", save_then_stop)
    with pytest.raises(type(stop)):
        average_checkpoints([(run_a, 1.0), (run_b, 1.0)], tmp_path / "soup")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line(runs: tuple[Path, Path, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _, run_a, run_b = runs
    main(["average", "--from", str(run_a), f"{run_b}:3", "--out", str(tmp_path / "soup")])
    assert "wrote" in capsys.readouterr().out
    assert [s["weight"] for s in json.loads((tmp_path / "soup" / "stage3" / STAGE_INFO).read_text())["average_of"]] \
        == [0.25, 0.75]
    with pytest.raises(SystemExit) as info:
        main(["average", "--from", str(run_a), "--out", str(tmp_path / "one")])
    assert info.value.code == 2 and "at least two" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
