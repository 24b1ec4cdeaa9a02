"""The task and pose commands under misuse: bad inputs and outputs exit 2 before any model or tokenizer loads,
special files never hang, malformed token files are named, pose commands need --overwrite to replace an output,
and task runs into a directory that holds results take the next free numbers (never replacing, never mixing)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipose_sdk.body.examples import example_pose_path
from unipose_sdk.body.pose import Pose
from unipose_sdk.cli import main
from unipose_sdk.cli import pose as pose_cli
from unipose_sdk.tasks.base import TaskBase

FAST = ["--max-new-tokens", "6"]
RESULT_FILES = [".npz", ".npy", ".png", ".json"]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a directory")
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.npz")
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder").mkdir()
    (tmp_path / "garbage.npz").write_bytes(b"not a pose")
    Image.fromarray((np.random.default_rng(0).random((48, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    return tmp_path


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the cases below must exit before it."""
    def loaded(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(TaskBase, "from_pretrained", classmethod(loaded))


@pytest.fixture
def no_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def loaded(path):  # type: ignore[no-untyped-def]
        raise AssertionError("the pose tokenizer was loaded before the input was checked")

    monkeypatch.setattr(pose_cli, "_load_tokenizer", loaded)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _result_dir(work: Path, name: str, task: str) -> Path:
    out = work / name
    out.mkdir()
    (out / f"{task}_000.png").write_bytes(b"an earlier result")
    return out


POSE = str(example_pose_path("squatting"))

TASK_CASES = [
    (["generate", "a person", "-o", "file.txt"], "which is a file"),
    (["generate", "a person", "-o", "file.txt/sub"], "inside 'file.txt' which is a file"),
    (["generate", "a person", "-o", "/proc/unipose-out"], "not writable"),
    (["generate", "a person \udc80 squatting"], "UTF-8"),
    (["generate", "ok", "\ud800"], "surrogate"),
    (["generate", "   "], "non-empty"),
    (["estimate", "pipe.png"], "FIFO"),
    (["estimate", "img.png", "pipe.png"], "FIFO"),
    (["estimate", "/dev/null"], "character device"),
    (["estimate", "folder"], "directory"),
    (["estimate", "missing.png"], "does not exist"),
    (["estimate", "img.png", "-o", "file.txt"], "which is a file"),
    (["edit", "pipe.npz", "raise your arm"], "FIFO"),
    (["edit", "/dev/zero", "raise your arm"], "character device"),
    (["edit", "folder", "raise your arm"], "directory"),
    (["edit", "garbage.npz", "raise your arm"], "garbage.npz"),
    (["edit", POSE, "raise \udcff arm"], "UTF-8"),
    (["edit", POSE, "raise your arm", "-o", "file.txt"], "which is a file"),
    (["describe", "--pose", "pipe.npz"], "FIFO"),
    (["describe", "--poses", POSE, "pipe.npz"], "FIFO"),
    (["describe", "--poses", POSE, "garbage.npz"], "garbage.npz"),
    (["describe", "--image", "pipe.png"], "FIFO"),
    (["describe", "--images", "img.png", "/dev/null"], "character device"),
    (["describe", "--images", "img.png", "folder"], "directory"),
]


@pytest.mark.parametrize("argv, fragment", TASK_CASES)
def test_task_commands_exit_2_before_loading(argv, fragment, work, no_hang, no_model, capsys) -> None:
    argv = [str(_result_dir(work, "existing", a.split(":")[1])) if a.startswith("EXISTING:") else a for a in argv]
    before = {name: (work / name).read_bytes() for name in _files(work) if (work / name).is_file()
              and not name.startswith("pipe")}
    assert main([*argv, *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipose: error: received") and fragment in err and "model was loaded" not in err
    after = {name: (work / name).read_bytes() for name in _files(work) if (work / name).is_file()
             and not name.startswith("pipe")}
    assert after == before  # nothing written, nothing changed


@pytest.mark.parametrize("argv", [
    ["generate", "x", "--batch-size", "0"], ["generate", "x", "--batch-size", "-2"],
    ["generate", "x", "--batch-size", "two"], ["generate", "x", "--max-new-tokens", "0"],
    ["generate", "x", "--max-new-tokens", "1.5"], ["estimate", "img.png", "--bbox", "nan", "0", "1", "1"],
    ["estimate", "img.png", "--bbox", "0", "0", "inf", "1"], ["generate", "x", "--dtype", "float64"],
    ["generate", "x", "--backend", "fastest"], ["pose", "tokenize", POSE],  # -o is required
])
def test_usage_errors_exit_2(argv, work, no_model, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- pose commands

POSE_CASES = [
    (["pose", "tokenize", "pipe.npz", "-o", "t.json"], "FIFO"),
    (["pose", "tokenize", "/dev/null", "-o", "t.json"], "character device"),
    (["pose", "tokenize", POSE, "-o", "existing.json"], "--overwrite"),
    (["pose", "tokenize", POSE, "-o", "pipe.json", "--overwrite"], "FIFO"),
    (["pose", "tokenize", POSE, "-o", "folder"], "ending in .json"),
    (["pose", "tokenize", POSE, "-o", "nowhere/t.json"], "does not exist"),
    (["pose", "render", "pipe.npz", "-o", "r.png"], "FIFO"),
    (["pose", "render", POSE, "folder", "-o", "r.png"], "directory"),
    (["pose", "render", POSE, "-o", "existing.png"], "--overwrite"),
    (["pose", "roundtrip", "pipe.npz", "-o", "out"], "FIFO"),
    (["pose", "roundtrip", "-o", "EXISTING_ROUNDTRIP"], "--overwrite"),
    (["pose", "roundtrip", "-o", "file.txt"], "which is a file"),
    (["pose", "detokenize", "pipe.json", "-o", "p.npz"], "FIFO"),
    (["pose", "detokenize", "folder", "-o", "p.npz"], "directory"),
    (["pose", "detokenize", "tokens.json", "-o", "existing.npz"], "--overwrite"),
]


@pytest.mark.parametrize("argv, fragment", POSE_CASES)
def test_pose_commands_exit_2_before_the_tokenizer_loads(argv, fragment, work, no_hang, no_tokenizer,
                                                        capsys) -> None:
    for name in ("existing.json", "existing.png", "existing.npz", "tokens.json"):
        (work / name).write_text("{}")
    (work / "rt").mkdir()
    (work / "rt" / "roundtrip.json").write_text("{}")
    argv = ["rt" if a == "EXISTING_ROUNDTRIP" else a for a in argv]
    before = _files(work)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "tokenizer was loaded" not in err
    assert _files(work) == before


def _tokens(**changes: object) -> dict:
    doc = {"format": "unipose-pose-tokens", "version": 1, "tokenizer": {"codebook_size": 512},
           "poses": [{"codes": [1] * 80}]}
    doc.update(changes)
    return doc


MALFORMED = [
    (_tokens(tokenizer="tiny"), '"tokenizer" is'),
    (_tokens(tokenizer={"codebook_size": "512"}), '"tokenizer" is'),
    (_tokens(tokenizer={"codebook_size": True}), '"tokenizer" is'),
    (_tokens(poses=[{"codes": [True] * 80}]), "non-integer"),
    (_tokens(poses=[{"codes": [[1]] * 80}]), "non-integer"),
    (_tokens(poses=[{"codes": ["1"] * 80}]), "non-integer"),
    (_tokens(poses=[{"codes": [None] * 80}]), "non-integer"),
    (_tokens(poses=[{"codes": [2 ** 70] * 80}]), "codes in [1180591620717411303424"),
    (_tokens(poses=[{"codes": [-1] * 80}]), "codes in [-1, -1]"),
    (_tokens(poses=[{"codes": [512] * 80}]), "codebook indices in [0, 511]"),
    (_tokens(poses={"codes": [1] * 80}), "expected"),
    (_tokens(poses=[{"tokens": [1] * 80}]), "expected"),
    (_tokens(poses=[[1] * 80]), "expected"),
    (_tokens(poses=[{"codes": "1 2 3"}]), "expected"),
    (_tokens(format=None), "format None"),
    ([_tokens()], "a JSON list"),
    ("just a string", "a JSON str"),
]


@pytest.mark.parametrize("doc, fragment", MALFORMED)
def test_malformed_token_files_exit_2_naming_the_problem(doc, fragment, work, capsys) -> None:
    (work / "bad.json").write_text(json.dumps(doc))
    before = _files(work)
    assert main(["pose", "detokenize", "bad.json", "-o", "p.npz"]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err or "tokens" in err
    assert fragment in err, err
    assert _files(work) == before


@pytest.mark.parametrize("content, fragment", [
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00{", "not valid JSON"),
    (b'{"format": "unipose-pose-tokens", "poses": [', "not valid JSON"),
    (b'{"poses": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested 10001 levels deep"),
    (b'{"poses": [{"codes": [1, 2' + b", 3" * 5 + b"]}], " + b'"format": NaN}', "format nan"),
])
def test_unparsable_token_files_exit_2(content, fragment, work, no_tokenizer, capsys) -> None:
    (work / "bad.json").write_bytes(content)
    assert main(["pose", "detokenize", "bad.json", "-o", "p.npz"]) == 2
    assert fragment in capsys.readouterr().err
    assert not (work / "p.npz").exists()


# ---------------------------------------------------------------------------------------------- overwrite, json, quiet


@pytest.mark.parametrize("argv, task", [
    (["generate", "a person"], "generate"),
    (["estimate", "img.png"], "estimate"),
    (["edit", POSE, "raise your arm"], "edit"),
    (["describe", "--pose", POSE], "describe"),  # a text result: its number still follows the earlier .png
])
def test_a_run_into_a_directory_with_results_takes_the_next_number(argv, task, work, capsys) -> None:
    out = _result_dir(work, "existing", task)
    assert main([*argv, "-o", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    written = _files(out)
    assert f"{task}_000.png" in written and (out / f"{task}_000.png").read_bytes() == b"an earlier result"
    new = [name for name in written if name != f"{task}_000.png"]
    assert new and all(name.startswith(f"{task}_001.") for name in new), written
    assert f"{task}_001.json" in new and "wrote " in printed and str(out / f"{task}_001.json") in printed


def test_runs_add_numbered_sets_and_overwrite_replaces_from_000(work, capsys) -> None:
    assert main(["generate", "a person squatting", "-o", "out", "--quiet", *FAST]) == 0
    assert capsys.readouterr().out == ""
    first = (work / "out" / "generate_000.json").read_bytes()
    # The README's quickstart run twice: the second run adds a set instead of failing or replacing.
    assert main(["generate", "a person kneeling", "a person lunging", "-o", "out", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "out/generate_001.json" in printed and "out/generate_002.npz" in printed
    assert (work / "out" / "generate_000.json").read_bytes() == first
    prompts = {i: json.loads((work / "out" / f"generate_{i:03d}.json").read_text())["input"]["prompt"]
               for i in range(3)}
    assert prompts == {0: "a person squatting", 1: "a person kneeling", 2: "a person lunging"}
    # A number someone deleted is not reused: numbers follow the order of the runs.
    for suffix in RESULT_FILES:
        (work / "out" / f"generate_001{suffix}").unlink()
    assert main(["generate", "a person jumping", "-o", "out", "--json", *FAST]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert sorted(payload["results"][0]["files"]) == sorted(f"out/generate_003{s}" for s in RESULT_FILES)
    # --overwrite numbers from 000 and replaces those files; the other sets stay.
    assert main(["generate", "a person kneeling", "-o", "out", "--overwrite", "--json", *FAST]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["results"][0]["input"] == {"task": "generate", "prompt": "a person kneeling"}
    assert sorted(payload["results"][0]["files"]) == sorted(f"out/generate_000{s}" for s in RESULT_FILES)
    assert json.loads((work / "out" / "generate_000.json").read_text())["input"]["prompt"] == "a person kneeling"
    assert _files(work / "out") == sorted(f"generate_{i:03d}{s}" for i in (0, 2, 3) for s in RESULT_FILES)


def test_pose_commands_overwrite_json_and_quiet(work, capsys) -> None:
    assert main(["pose", "tokenize", POSE, "-o", "t.json", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == "t.json" and summary["tokens_per_pose"] == 80
    assert json.loads((work / "t.json").read_text())["input"] == POSE  # the tokens file records its input
    assert main(["pose", "tokenize", POSE, "-o", "t.json"]) == 2
    assert main(["pose", "tokenize", POSE, "-o", "t.json", "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["pose", "detokenize", "t.json", "-o", "p.npz", "--quiet"]) == 0
    assert len(Pose.load(work / "p.npz")) == 1
    assert main(["pose", "roundtrip", "-o", "rt", "--quiet"]) == 0
    assert main(["pose", "roundtrip", "-o", "rt"]) == 2
    assert main(["pose", "roundtrip", "-o", "rt", "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"].endswith(".npz")
    assert _files(work / "rt") == ["reconstruction.npz", "roundtrip.json", "roundtrip.png"]


def test_two_runs_into_one_directory_never_mix(work, capsys) -> None:
    texts = ["a person squatting", "a person with both arms raised"]
    codes: dict[str, list[int]] = {}

    def run(text: str) -> None:
        assert main(["generate", text, "-o", "shared", "--overwrite", "--quiet", *FAST]) == 0

    threads = [threading.Thread(target=run, args=(t,)) for t in texts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from unipose_sdk.tasks import Generator

    with Generator.from_pretrained(max_new_tokens=6) as generator:
        for text in texts:
            codes[text] = generator.generate(text).pose_codes
    saved = json.loads((work / "shared" / "generate_000.json").read_text())
    assert saved["pose_codes"] == codes[saved["input"]["prompt"]]
    expected_pose = Pose.load(work / "shared" / "generate_000.npz")
    assert Pose.load(work / "shared" / "generate_000.npy").allclose(expected_pose, atol=1e-5)
    assert _files(work / "shared") == sorted(f"generate_000{s}" for s in RESULT_FILES)


def test_concurrent_runs_without_overwrite_get_separate_contiguous_sets(work) -> None:
    """Four runs of two prompts each into one directory: four complete sets, each run's two results under two
    consecutive numbers, every file of a result from the run its JSON names."""
    runs = [[f"a person squatting, run {i}", f"a person kneeling, run {i}"] for i in range(4)]
    codes = []

    def run(texts: list[str]) -> None:
        codes.append(main(["generate", *texts, "-o", "shared", "--quiet", *FAST]))

    threads = [threading.Thread(target=run, args=(texts,)) for texts in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0] * 4
    assert _files(work / "shared") == sorted(f"generate_{i:03d}{s}" for i in range(8) for s in RESULT_FILES)
    prompts = [json.loads((work / "shared" / f"generate_{i:03d}.json").read_text())["input"]["prompt"]
               for i in range(8)]
    for first in range(0, 8, 2):  # a run's set is contiguous and in input order
        assert [prompts[first], prompts[first + 1]] in runs, prompts
    for i in range(8):
        saved = json.loads((work / "shared" / f"generate_{i:03d}.json").read_text())
        assert len(saved["pose_codes"]) == 80
        npz = Pose.load(work / "shared" / f"generate_{i:03d}.npz")
        assert Pose.load(work / "shared" / f"generate_{i:03d}.npy").allclose(npz, atol=1e-5)
        assert np.allclose(npz.axis_angle()[0].numpy().reshape(-1), np.asarray(saved["pose_axis_angle"]).reshape(-1),
                           atol=1e-5)
