"""`unipose estimate | generate | edit | describe | info` end to end on the embedded model, exit codes 0 / 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipose_sdk.body.examples import example_pose_path
from unipose_sdk.body.pose import Pose
from unipose_sdk.cli import main

FAST = ["--max-new-tokens", "6"]


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_generate_writes_pose_files_png_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "a person squatting", "a person kneeling", "-o", str(tmp_path), "--json", *FAST])
    assert code == 0
    payload = _json_out(capsys)
    assert payload["task"] == "generate" and len(payload["results"]) == 2
    first = payload["results"][0]
    assert len(first["pose_codes"]) == 80 and len(first["pose_joints_m"]) == 22
    for suffix in (".npz", ".npy", ".png", ".json"):
        assert (tmp_path / f"generate_000{suffix}").is_file()
    assert np.load(tmp_path / "generate_000.npy").shape == (22, 3, 3)  # the official demo's layout
    assert Pose.load(tmp_path / "generate_001.npz").rotmat.shape == (1, 22, 3, 3)
    saved = json.loads((tmp_path / "generate_000.json").read_text())
    assert saved["pose_codes"] == first["pose_codes"] and "total" in saved["timing_ms"]


@pytest.mark.parametrize(("flag", "option", "value", "other"), [
    ("--pose-code-temperature", "pose_code_temperature", 0.3, 1.0), ("--pose-guidance", "pose_guidance", 3.0, 0.0)])
def test_generate_decodes_as_the_pose_flags_ask(flag: str, option: str, value: float, other: float, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.tasks import Generator

    prompt = "kneel on both knees"
    assert main(["generate", prompt, flag, str(value), "-o", str(tmp_path), "--json", *FAST]) == 0
    codes = _json_out(capsys)["results"][0]["pose_codes"]
    with Generator.from_pretrained(max_new_tokens=6, **{option: value}) as generator:
        assert list(generator.generate(prompt).pose_codes) == codes
    with Generator.from_pretrained(max_new_tokens=6, **{option: other}) as generator:
        assert list(generator.generate(prompt).pose_codes) != codes  # the flag is what changed them


def test_edit_estimate_and_describe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pose = str(example_pose_path("squatting"))
    image = tmp_path / "person.png"
    Image.fromarray((np.random.default_rng(0).random((96, 64, 3)) * 255).astype(np.uint8)).save(image)
    assert main(["edit", pose, "raise your left arm", "-o", str(tmp_path / "edit"), "--json", *FAST]) == 0
    assert (tmp_path / "edit" / "edit_000.png").is_file()
    edited = _json_out(capsys)["results"][0]
    assert len(edited["source_pose_axis_angle"]) == 66 and edited["edited_regions"] == ["left_arm"]
    assert main(["edit", pose, "raise your left arm", "--whole-answer", "-o", str(tmp_path / "whole"), "--json",
                 *FAST]) == 0
    whole = _json_out(capsys)["results"][0]
    assert whole["edited_regions"] == [] and whole["pose_codes"] == edited["pose_codes"]
    assert main(["estimate", str(image), "--bbox", "2", "2", "60", "90", "--json", *FAST]) == 0
    assert len(_json_out(capsys)["results"][0]["pose_codes"]) == 80
    for args in (["--pose", pose], ["--poses", pose, pose], ["--image", str(image)],
                 ["--images", str(image), str(image)]):
        assert main(["describe", *args, "--json", *FAST]) == 0
        assert isinstance(_json_out(capsys)["results"][0]["text"], str)


def test_describe_keeps_the_sentences_the_floor_flags_ask_for(capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.body.examples import example_image_path

    image, long = str(example_image_path()), ["--max-new-tokens", "64"]
    texts = {}
    for name, flags in (("all", ["--all-sentences"]), ("surest", ["--min-sentence-logprob=0"]),
                        ("every", ["--min-sentence-logprob=-20"])):
        assert main(["describe", "--image", image, *flags, "--json", *long]) == 0
        texts[name] = _json_out(capsys)["results"][0]["text"]
    assert texts["every"] == texts["all"]
    assert texts["surest"].count(".") == 1 and texts["surest"] in texts["all"]
    for bad in (["--min-sentence-logprob=1"], ["--min-sentence-logprob=-1", "--all-sentences"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["describe", "--image", image, *bad])
        assert exit_info.value.code == 2
    assert "min_sentence_logprob" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["generate", "   "],
    ["estimate", "/definitely/not/here.png"],
    ["edit", "/not/a/pose.npz", "raise your arm"],
    ["describe", "--pose", "/not/a/pose.npz"],
    ["generate", "a person", "--model", "/no/such/model/dir"],
])
def test_bad_input_exits_2_and_writes_nothing(argv: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([*argv, "-o", str(out), *FAST]) == 2
    assert "unipose: error:" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_threads_apply_to_the_model_calls_and_are_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    original = torch.get_num_threads()
    set_threads = torch.set_num_threads
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (asked.append(n), set_threads(n))[1])
    set_threads(2)  # a count the call must change, and restore afterwards
    try:
        assert main(["generate", "a person squatting", "--threads", "1", "-o", str(tmp_path), "--json", *FAST]) == 0
        assert _json_out(capsys)["results"][0]["pose_codes"]
        assert asked[:1] == [1] and torch.get_num_threads() == 2
    finally:
        set_threads(original)
    with pytest.raises(SystemExit) as info:
        main(["generate", "a person", "--threads", "0", "-o", str(tmp_path / "none"), *FAST])
    assert info.value.code == 2 and "--threads: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["describe"])  # one of --pose/--image/--poses/--images is required
    assert info.value.code == 2


@pytest.mark.parametrize(("flag", "value", "allowed"), [
    *(("--pose-code-temperature", v, "[0.05, 10]") for v in ("0.01", "11", "nan", "-1", "warm")),
    *(("--pose-guidance", v, "[0, 10]") for v in ("-0.5", "10.5", "nan", "strong"))])
def test_a_pose_flag_out_of_range_is_a_usage_error_naming_the_range(
        flag: str, value: str, allowed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["generate", "a person", flag, value, "-o", str(out), *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert repr(value) in err and allowed in err
    assert not out.exists()


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = _json_out(capsys)
    assert info["versions"]["torch"] and info["backends"]["torch"] is True
    assert info["default_model"]["name"] == "unipose-tiny"
    assert isinstance(info["default_model"]["trained"], bool)
