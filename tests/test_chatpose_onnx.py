"""ChatPose on ONNX Runtime: a converted ChatPose directory exported to ONNX (vision, embed and the decoder graph with
the pose head's output) gives the torch backend's answers and poses, through the task classes and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from test_chatpose import PRESET, write_release

from unipose_sdk import Describer, Estimator, Generator, example_image_path
from unipose_sdk.cli import main as cli_main
from unipose_sdk.errors import UnsupportedTaskError


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chatpose-onnx")
    merged, clip = write_release(root)
    sdk, exported = root / "sdk", root / "onnx"
    assert cli_main(["convert", "--family", "chatpose", "--preset", PRESET, "--merged", str(merged), "--clip",
                     str(clip), "-o", str(sdk)]) == 0
    assert cli_main(["export", "--model", str(sdk), "-o", str(exported)]) == 0  # validated against torch
    return sdk, exported


def test_export_holds_the_pose_head_output(directories: tuple[Path, Path]) -> None:
    _, exported = directories
    assert sorted(p.name for p in exported.glob("*.onnx")) == ["decoder.onnx", "embed.onnx", "vision.onnx"]
    outputs = [o.name for o in onnx.load(str(exported / "decoder.onnx"), load_external_data=False).graph.output]
    assert outputs[:2] == ["logits", "pose_params"]


def test_onnxruntime_gives_the_torch_answers(directories: tuple[Path, Path]) -> None:
    sdk, exported = directories
    image = example_image_path("person")
    texts = ["a person squatting with both arms raised", "a person standing"]
    results = {}
    for backend, model in (("torch", sdk), ("onnxruntime", exported)):
        generated = Generator.from_pretrained(model, backend=backend, max_new_tokens=5, pose_only=False).generate(texts)
        estimated = Estimator.from_pretrained(model, backend=backend).estimate(image)
        described = Describer.from_pretrained(model, backend=backend, max_new_tokens=5).describe(image=image)
        assert generated[0].run.backend == backend and generated[0].run.family == "chatpose"
        results[backend] = (generated, estimated, described)
    (g_t, e_t, d_t), (g_o, e_o, d_o) = results["torch"], results["onnxruntime"]
    assert [r.text for r in g_o] == [r.text for r in g_t] and d_o.text == d_t.text
    for a, b in [*zip(g_t, g_o), (e_t, e_o)]:
        torch.testing.assert_close(b.pose.rotmat, a.pose.rotmat, atol=1e-4, rtol=0)
    with pytest.raises(UnsupportedTaskError):
        Describer.from_pretrained(exported, backend="onnxruntime").describe(pose=g_o[0].pose)


def test_cli_on_the_export(directories: tuple[Path, Path], tmp_path: Path) -> None:
    _, exported = directories
    assert cli_main(["generate", "a person squatting", "--model", str(exported), "-o", str(tmp_path), "--quiet"]) == 0
    record = json.loads((tmp_path / "generate_000.json").read_text())
    assert record["run"]["backend"] == "onnxruntime" and record["run"]["family"] == "chatpose"


def test_assistant_on_the_export_gives_the_torch_replies(directories: tuple[Path, Path], tmp_path: Path) -> None:
    """A two-turn ChatPose conversation on ONNX Runtime (cache kept across turns, the pose regressed through the
    decoder graph's head output) equals the torch one."""
    from test_chatpose import _pose_token_first

    from unipose_sdk import Assistant

    sdk, _ = directories
    user = "There is a person: a person squatting. Please output this person's SMPL pose."
    model = _pose_token_first(sdk, tmp_path / "seg-first", user)
    assert cli_main(["export", "--model", str(model), "-o", str(tmp_path / "onnx"), "--quiet"]) == 0
    replies = {}
    for backend, where in (("torch", model), ("onnxruntime", tmp_path / "onnx")):
        with Assistant.from_pretrained(where, backend=backend, max_new_tokens=4) as assistant:
            replies[backend] = [assistant.ask(user), assistant.ask("And now?")]
    for torch_reply, ort_reply in zip(replies["torch"], replies["onnxruntime"]):
        assert ort_reply.run.backend == "onnxruntime" and ort_reply.text == torch_reply.text
        assert len(ort_reply.poses) == len(torch_reply.poses)
        for a, b in zip(torch_reply.poses, ort_reply.poses):
            torch.testing.assert_close(b.pose.rotmat, a.pose.rotmat, atol=1e-4, rtol=0)
    assert replies["torch"][0].poses and replies["onnxruntime"][1].reused_tokens > 0
