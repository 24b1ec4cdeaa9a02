"""`unipose pose ...` run in-process: outputs, exit codes (0 ok, 2 user error) and nothing written on failure."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipose_sdk.body.examples import DEFAULT_EXAMPLE, example_pose_path
from unipose_sdk.body.pose import Pose
from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer, random_tiny_tokenizer, save_pose_tokenizer
from unipose_sdk.cli import main
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.pose_tokenizer import PoseTokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """An SDK-format tokenizer directory (seeded random weights: the CLI plumbing, not the quality, is tested)."""
    return save_pose_tokenizer(random_tiny_tokenizer(seed=5), tmp_path_factory.mktemp("tok") / "pose_tokenizer")


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory) -> Path:
    """The same weights as tokenizer_dir, in the official Lightning layout."""
    model = random_tiny_tokenizer(seed=5)
    path = tmp_path_factory.mktemp("official") / "best_MPJPE.ckpt"
    state = {**model.state_dict(), "loss.weight": torch.ones(1)}
    torch.save({"state_dict": state, "epoch": 1}, path)
    return path


@pytest.fixture()
def work(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the random-tokenizer fallback warns; tested elsewhere
        return main(argv)


# ------------------------------------------------------------------------------------------------ roundtrip


def test_roundtrip_default_example(work: Path, capsys) -> None:
    assert _run(["pose", "roundtrip", "-o", "out"]) == 0
    assert _files(work / "out") == ["reconstruction.npz", "roundtrip.json", "roundtrip.png"]
    doc = json.loads((work / "out" / "roundtrip.json").read_text())
    assert doc["input"] == str(example_pose_path(DEFAULT_EXAMPLE))
    assert len(doc["poses"]) == 1 and len(doc["poses"][0]["codes"]) == 80
    assert doc["mpjpe_mm_mean"] >= 0 and set(doc["timings_ms"]) == {"load_tokenizer", "encode", "decode"}
    # The reconstruction file holds exactly what the tokenizer decodes from the written codes.
    tokenizer = load_pose_tokenizer() if "RANDOM" not in doc["tokenizer"]["source"] else random_tiny_tokenizer(0)
    expected = tokenizer.decode(torch.tensor([doc["poses"][0]["codes"]]))
    assert Pose.load(work / "out" / "reconstruction.npz").allclose(expected, atol=1e-4)
    with Image.open(work / "out" / "roundtrip.png") as image:
        assert image.format == "PNG" and image.width > image.height > 100
    out = capsys.readouterr().out
    assert "MPJPE" in out and "80 per pose" in out and "roundtrip.png" in out


def test_roundtrip_with_official_checkpoint_and_pose_file(work: Path, official_ckpt: Path) -> None:
    pose = Pose.from_axis_angle(torch.randn(2, 66, generator=torch.Generator().manual_seed(0)) * 0.3)
    pose.save(work / "two.npy")
    assert _run(["pose", "roundtrip", "two.npy", "-o", "rt", "--tokenizer", str(official_ckpt)]) == 0
    doc = json.loads((work / "rt" / "roundtrip.json").read_text())
    codes = random_tiny_tokenizer(seed=5).encode(pose)
    assert [p["codes"] for p in doc["poses"]] == codes.tolist()
    assert len(doc["mpjpe_mm"]) == 2
    assert doc["tokenizer"]["source"].startswith("official checkpoint")


def test_roundtrip_named_example(work: Path, tokenizer_dir: Path) -> None:
    assert _run(["pose", "roundtrip", "--example", "sitting", "-o", "rt", "--tokenizer", str(tokenizer_dir)]) == 0
    assert json.loads((work / "rt" / "roundtrip.json").read_text())["input"].endswith("sitting.npz")


# ------------------------------------------------------------------------------------------------ tokenize / detokenize


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".json"])
def test_tokenize_then_detokenize(work: Path, tokenizer_dir: Path, suffix: str) -> None:
    pose = Pose.load(example_pose_path("walking_stride"))
    assert _run(["pose", "tokenize", str(example_pose_path("walking_stride")), "-o", "t.json",
                 "--tokenizer", str(tokenizer_dir)]) == 0
    doc = json.loads((work / "t.json").read_text())
    tokenizer = load_pose_tokenizer(tokenizer_dir)
    codes = tokenizer.encode(pose)
    vocab = get_preset("unipose-tiny").vocab
    entry = doc["poses"][0]
    assert entry["codes"] == codes[0].tolist()
    assert entry["token_ids"] == [vocab.pose_id_offset + c for c in entry["codes"]]
    assert entry["sequence_ids"] == [vocab.pose_begin_id, *entry["token_ids"], vocab.pose_end_id]
    assert doc["tokenizer"]["config"] == "unipose-tiny" and doc["vocab"]["pose_id_offset"] == 1024

    assert _run(["pose", "detokenize", "t.json", "-o", f"back{suffix}", "--tokenizer", str(tokenizer_dir)]) == 0
    assert Pose.load(work / f"back{suffix}").allclose(tokenizer.decode(codes), atol=1e-4)


def test_tokenize_with_7b_sized_checkpoint_uses_32000_offset(work: Path) -> None:
    torch.manual_seed(0)
    model = PoseTokenizer(get_preset("unipose-7b").pose_tokenizer)
    model.quantizer.codebook.normal_()
    torch.save({"state_dict": model.state_dict()}, work / "big.ckpt")
    assert _run(["pose", "tokenize", str(example_pose_path()), "-o", "t.json", "--tokenizer", "big.ckpt"]) == 0
    doc = json.loads((work / "t.json").read_text())
    assert doc["tokenizer"]["config"] == "unipose-7b" and doc["vocab"]["pose_id_offset"] == 32000
    assert doc["vocab"]["pose_begin_id"] == 34048 and doc["vocab"]["pose_end_id"] == 34049
    codes = doc["poses"][0]["codes"]
    assert doc["poses"][0]["token_ids"] == [32000 + c for c in codes] and max(codes) < 2048


# ------------------------------------------------------------------------------------------------ render


def test_render_several_files(work: Path) -> None:
    paths = [str(example_pose_path(n)) for n in ("sitting", "squatting", "walking_stride")]
    assert _run(["pose", "render", *paths, "-o", "three.png"]) == 0
    with Image.open(work / "three.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height


# ---------------------------------------------------------------------------------- failures: exit 2, nothing written


def _bad_inputs(work: Path) -> dict[str, Path]:
    (work / "garbage.npz").write_bytes(b"this is not a pose file")
    (work / "garbage.ckpt").write_bytes(b"this is not a checkpoint")
    (work / "notjson.json").write_text("{nope")
    (work / "otherformat.json").write_text(json.dumps({"format": "something", "poses": []}))
    return {p.name: p for p in work.iterdir()}


def _tokens_file(work: Path, tokenizer_dir: Path, name: str, mutate) -> str:
    tokenizer = load_pose_tokenizer(tokenizer_dir)
    from unipose_sdk.cli.pose import tokens_document

    doc = tokens_document(tokenizer.encode(Pose.load(example_pose_path())), tokenizer)
    mutate(doc)
    (work / name).write_text(json.dumps(doc))
    return name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pose", "roundtrip", "missing.npz", "-o", "out"], "does not exist"),
        (["pose", "roundtrip", "garbage.npz", "-o", "out"], "expected"),
        (["pose", "roundtrip", "-o", "out", "--tokenizer", "garbage.ckpt"], "torch.load cannot read"),
        (["pose", "roundtrip", "-o", "out", "--tokenizer", "no/such.ckpt"], "does not exist"),
        (["pose", "roundtrip", "-o", "garbage.npz"], "which is a file"),
        (["pose", "roundtrip", "--example", "dancing", "-o", "out"], "example name"),
        (["pose", "tokenize", "missing.npz", "-o", "t.json"], "does not exist"),
        (["pose", "tokenize", "garbage.npz", "-o", "t.json"], "expected"),
        (["pose", "tokenize", "EXAMPLE", "-o", "t.txt"], "ending in .json"),
        (["pose", "tokenize", "EXAMPLE", "-o", "t.json", "--tokenizer", "garbage.ckpt"], "torch.load cannot read"),
        (["pose", "tokenize", "EXAMPLE", "-o", "t.json", "--tokenizer", "missing_dir"], "does not exist"),
        (["pose", "detokenize", "missing.json", "-o", "p.npz"], "does not exist"),
        (["pose", "detokenize", "notjson.json", "-o", "p.npz"], "not valid JSON"),
        (["pose", "detokenize", "otherformat.json", "-o", "p.npz"], "format 'something'"),
        (["pose", "detokenize", "TOKENS", "-o", "p.txt"], "ending in .npz"),
        (["pose", "render", "missing.npz", "-o", "r.png"], "does not exist"),
        (["pose", "render", "EXAMPLE", "-o", "r.jpg"], "ending in .png"),
        (["pose", "render", "EXAMPLE", "EXAMPLE", "-o", "r.png", "--titles", "one"], "1 titles for 2"),
    ],
)
def test_user_errors_exit_2_and_write_nothing(work: Path, tokenizer_dir: Path, capsys, argv, message) -> None:
    _bad_inputs(work)
    tokens = _tokens_file(work, tokenizer_dir, "tokens.json", lambda doc: None)
    argv = [str(example_pose_path()) if a == "EXAMPLE" else tokens if a == "TOKENS" else a for a in argv]
    before = _files(work)
    assert _run(argv) == 2
    assert _files(work) == before
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["poses"][0].update(codes=[600] * 80), "codes in [600, 600]"),
        (lambda d: d["poses"][0].update(codes=[1] * 79), "shape (1, 79)"),
        (lambda d: d["poses"][0].update(codes=[1.5] * 80), "non-integer"),
        (lambda d: d["poses"].append({"codes": [1] * 70}), "lengths"),
        (lambda d: d["tokenizer"].update(codebook_size=2048), "2048 codes"),
        (lambda d: d.update(poses=[]), "expected"),
    ],
)
def test_bad_tokens_exit_2_and_write_nothing(work: Path, tokenizer_dir: Path, capsys, mutate, message) -> None:
    name = _tokens_file(work, tokenizer_dir, "bad.json", mutate)
    before = _files(work)
    assert _run(["pose", "detokenize", name, "-o", "p.npz", "--tokenizer", str(tokenizer_dir)]) == 2
    assert _files(work) == before
    assert message in capsys.readouterr().err


def test_pose_without_subcommand_is_a_usage_error(work: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pose"])
    assert info.value.code == 2


def test_json_is_compact_per_pose(work: Path, tokenizer_dir: Path) -> None:
    assert _run(["pose", "tokenize", str(example_pose_path()), "-o", "t.json", "--tokenizer", str(tokenizer_dir)]) == 0
    text = (work / "t.json").read_text()
    assert len(text.splitlines()) < 40  # one line per code list, not one per code
    assert np.asarray(json.loads(text)["poses"][0]["codes"]).shape == (80,)
