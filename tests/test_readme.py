"""The README is part of the product: its Python blocks run as written, and CI runs its test command."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_command() -> None:
    commands = [line for line in _blocks("bash")[0].splitlines() if line.strip()]
    assert len(commands) == 2, commands
    setup, test_command = commands
    assert setup.startswith("pip install torch==2.13.0") and "pip install -e" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci, f"CI must run the README's test command {test_command!r}"
    for install in re.findall(r"pip install [^&]+", setup):
        assert install.strip().split("pip install ")[1] in ci, f"CI must install as the README says: {install}"


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_blocks_run_as_written(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's relative paths are from the repository root
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert os.getcwd() == str(ROOT)


# The evaluation table's shipped column, row by row: the report metrics its numbers state, in their order.
_TABLE_ROWS = {
    "pose tokenizer": [("tokenizer", "mpjpe_mm")],
    "text to pose": [("text_to_pose", "facts_hold"), ("text_to_pose", "mpjpe_mm")],
    "pose description": [("pose_description", "precision"), ("pose_description", "recall")],
    "pose difference": [("pose_difference", "precision"), ("pose_difference", "recall")],
    "pose editing": [("pose_editing", "edits_hold"), ("pose_editing", "mpjpe_mm"),
                     ("pose_editing", "edits_hold_whole_answer"), ("pose_editing", "mpjpe_mm_whole_answer")],
    "image description": [("image_description", "precision"), ("image_description", "recall")],
    "image difference": [("image_difference", "precision"), ("image_difference", "recall")],
    "estimation from renders": [("estimation", "mpjpe_mm"), ("estimation", "pa_mpjpe_mm")],
    "free-form prompts": [("free_form", "prompts_satisfied")],
    "conversation: follow-up edits": [("conversation", "follow_up_edits_hold"),
                                      ("conversation", "follow_up_unnamed_joints_moved_deg")],
}


def test_evaluation_table_states_the_shipped_report() -> None:
    """The README's shipped column says what `assets/unipose-tiny/evaluation.json` measured (to the digits shown),
    and a bold number is exactly one that loses to its baseline."""
    import json

    report = json.loads((ROOT / "unipose_sdk" / "assets" / "unipose-tiny" / "evaluation.json").read_text())
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.split("|")]
        for label in _TABLE_ROWS:
            if len(cells) > 4 and cells[1].startswith(label):
                rows[label] = cells[3]
    assert set(rows) == set(_TABLE_ROWS), f"rows missing from the README table: {set(_TABLE_ROWS) - set(rows)}"
    for label, metrics in _TABLE_ROWS.items():
        stated = re.findall(r"(\*\*)?(\d+\.\d+)", rows[label])
        assert len(stated) == len(metrics), (label, rows[label])
        for (bold, text), (task, name) in zip(stated, metrics):
            metric = report["metrics"][task][name]
            step = 10.0 ** -len(text.split(".")[1])
            assert abs(float(text) - metric["model"]) <= step / 2 + 1e-9, (label, name, text, metric["model"])
            loses = metric.get("gate", True) and not metric["beats_baseline"]
            assert bool(bold) == loses, f"{label} {name}: bold must mark exactly the lost baselines"
