"""`unipose data make`: determinism, layout, records that resolve, atomic failure."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from unipose_sdk.cli import main
from unipose_sdk.data import dataset
from unipose_sdk.data.captions import parse_facts
from unipose_sdk.data.dataset import PROMPTS, make_dataset, resolve_size
from unipose_sdk.errors import InvalidInputError


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _manifest_without_timing(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("timing")
    return manifest


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "a"
    assert main(["data", "make", "-o", str(out), "--seed", "5", "--size", "6", "--quiet"]) == 0
    return out


def test_same_seed_gives_identical_files_whatever_the_workers(tiny_set, tmp_path):
    again = tmp_path / "b"
    make_dataset(again, seed=5, size=6, workers=2, progress=False)
    assert _digests(tiny_set) == _digests(again)
    assert _manifest_without_timing(tiny_set) == _manifest_without_timing(again)
    other = tmp_path / "c"
    make_dataset(other, seed=6, size=6, progress=False)
    assert _digests(other) != _digests(tiny_set)


def test_layout_manifest_and_records_resolve(tiny_set):
    manifest = json.loads((tiny_set / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["splits"]["train"]["poses"] == 6
    assert manifest["splits"]["val"]["poses"] == 1 and manifest["timing"]["seconds"] > 0
    for split in ("train", "val", "test"):
        for task in PROMPTS:
            lines = (tiny_set / split / "tasks" / f"{task}.jsonl").read_text().splitlines()
            assert len(lines) == manifest["splits"][split]["records"][task] > 0
            for line in lines:
                record = json.loads(line)
                assert record["task"] == task and record["prompt"] == PROMPTS[task]
                refs = [v for v in record["inputs"].values() if isinstance(v, dict)]
                refs += [r for v in record["inputs"].values() if isinstance(v, list) for r in v]
                refs += [v for v in record["target"].values() if isinstance(v, dict)]
                for ref in refs:
                    with np.load(tiny_set / split / ref["file"]) as shard:
                        if "array" in ref:
                            assert shard[ref["array"]][ref["row"]].shape == (66,)
                        else:
                            assert shard[ref["arrays"]["clip"]][ref["row"]].shape == (112, 112, 3)
                            assert shard[ref["arrays"]["pose"]][ref["row"]].shape == (128, 96, 3)
                if task in ("image_description", "pose_description", "text_to_pose"):
                    text = record["target"].get("text") or record["inputs"]["text"]
                    assert sorted(list(f.key) for f in parse_facts(text)) == sorted(record["facts"])


def test_failed_run_leaves_no_manifest_and_no_partial_files(tmp_path, monkeypatch):
    calls = []

    def failing_save(path, arrays):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(path, arrays)

    original = dataset.save_npz_deterministic
    monkeypatch.setattr(dataset, "save_npz_deterministic", failing_save)
    out = tmp_path / "broken"
    with pytest.raises(RuntimeError):
        make_dataset(out, seed=1, size=4, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_size_and_non_empty_output_are_user_errors(tmp_path):
    with pytest.raises(InvalidInputError):
        resolve_size("huge")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError):
        make_dataset(tmp_path / "x", size=2, progress=False)
    assert main(["data", "make", "-o", str(tmp_path / "y"), "--size", "zero", "--quiet"]) == 2
