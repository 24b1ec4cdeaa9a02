"""`unipose chat`: the scripted form (--json, turns from a file or stdin as JSON lines or a JSON list) runs the
three-turn conversation of the Assistant tests and writes each reply's JSON and pose files as one numbered set;
bad turns exit 2 before the model loads; the interactive form streams replies and takes its slash commands."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from unipose_sdk import Assistant
from unipose_sdk.body.examples import example_image_path, example_pose_path
from unipose_sdk.cli import main
from unipose_sdk.cli.chat import read_turns

IMAGE = str(example_image_path())
TURNS = [
    {"text": "Generate pose of the image: <image>.", "images": [IMAGE]},
    {"text": "Generate pose of the description: a person squatting with both arms raised."},
    {"text": "Edit pose <pose> by description: raise the left arm above the head.", "poses": [{"reply": 1}]},
]
FLAGS = ["--max-new-tokens", "8", "--max-poses", "1"]


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))


@pytest.fixture(scope="module")
def expected() -> list:
    with Assistant.from_pretrained(max_new_tokens=8, max_poses=1) as assistant:
        first = assistant.ask(TURNS[0]["text"], images=[IMAGE])
        second = assistant.ask(TURNS[1]["text"])
        third = assistant.ask(TURNS[2]["text"], poses=[second.poses[0]])
    return [first, second, third]


def test_scripted_chat_from_a_json_list_writes_every_reply_and_pose(tmp_path: Path, expected: list,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    turns = tmp_path / "turns.json"
    turns.write_text(json.dumps(TURNS))
    out = tmp_path / "out"
    assert main(["chat", "--json", "--turns", str(turns), "-o", str(out), *FLAGS]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["task"] == "chat"
    results = document["results"]
    assert [r["text"] for r in results] == [r.text for r in expected]
    assert [[p["codes"] for p in r["poses"]] for r in results] == [[p.codes for p in r.poses] for r in expected]
    assert [r["reused_tokens"] for r in results] == [r.reused_tokens for r in expected]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"chat_{i:03d}{s}" for i in range(3)
                           for s in (".json", ".pose0.npz", ".pose0.npy", ".pose0.png"))
    assert results[2]["files"][-1].endswith("chat_002.json")
    # A second run takes the next numbers and replaces nothing.
    assert main(["chat", "--json", "--turns", str(turns), "-o", str(out), *FLAGS]) == 0
    assert (out / "chat_005.json").is_file() and len(list(out.iterdir())) == 24


def test_scripted_chat_reads_json_lines_from_stdin(monkeypatch: pytest.MonkeyPatch, expected: list,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, "\n".join(json.dumps(t) for t in TURNS[:2]) + "\n")
    assert main(["chat", "--json", *FLAGS]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["text"] for r in results] == [r.text for r in expected[:2]]
    assert results[1]["poses"][0]["codes"] == expected[1].poses[0].codes


@pytest.mark.parametrize("turns, names", [
    ([{"text": "Describe <poseC>."}], ["turn 0", "<poseC>"]),
    ([{"text": "Generate pose of the image: <image>."}], ["turn 0", "0 images", "<image>"]),
    ([{"text": "Edit pose <pose> by description: sit.", "poses": [{"reply": 0}]}], ["turn 0", "reply"]),
    ([{"text": "  "}], ["turn 0", "non-empty"]),
    ([{"text": "Hi.", "image": ["a.png"]}], ["turn 0", "'image'"]),
    ([{"text": "Describe <pose>.", "poses": ["/no/such/pose.npz"]}], ["/no/such/pose.npz"]),
])
def test_bad_turns_exit_2_before_the_model_loads(turns: list, names: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded for a bad turn")

    monkeypatch.setattr("unipose_sdk.cli.chat._build", no_model)
    path = tmp_path / "turns.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in turns))
    out = tmp_path / "out"
    assert main(["chat", "--json", "--turns", str(path), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    for name in names:
        assert name in error
    assert not out.exists()


def test_turns_files_that_are_not_turns_are_refused(tmp_path: Path) -> None:
    from unipose_sdk.errors import InvalidInputError

    path = tmp_path / "turns.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InvalidInputError, match="line 2"):
        read_turns(str(path))
    path.write_text("[]")
    with pytest.raises(InvalidInputError, match="no turns"):
        read_turns(str(path))


def test_interactive_chat_streams_replies_and_takes_its_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                expected: list) -> None:
    saved = tmp_path / "saved"
    script = [
        "/help", f"/image {IMAGE}", "Generate pose of the image: <image>.", "/pose last",
        "Generate description of the pose <pose>.", "Describe <poseC>.", f"/pose {example_pose_path()}",
        "/reset", "/bogus", f"/save {saved}", "/quit", "never read",
    ]
    _stdin(monkeypatch, "\n".join(script) + "\n")
    assert main(["chat", *FLAGS]) == 0
    captured = capsys.readouterr()
    assert "/image PATH" in captured.out and "(image 1 attached" in captured.out
    assert f"assistant> {expected[0].text} [1 pose(s)" in captured.out
    assert "(new conversation)" in captured.out
    assert "<poseC>" in captured.err and "unknown command '/bogus'" in captured.err
    assert "(nothing to save yet)" in captured.out and not saved.exists()  # /reset dropped the replies
    assert "never read" not in captured.out


def test_interactive_save_writes_the_replies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "saved"
    _stdin(monkeypatch, f"Generate pose of the description: a person sitting.\n/save {saved}\n")
    assert main(["chat", *FLAGS]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in saved.iterdir()) == ["chat_000.json", "chat_000.pose0.npy", "chat_000.pose0.npz",
                                                       "chat_000.pose0.png"]


def test_turns_and_output_need_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--turns", "x.jsonl"]) == 2
    assert "--json" in capsys.readouterr().err
