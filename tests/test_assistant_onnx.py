"""The Assistant on ONNX Runtime: the decoder graph takes any past length and query offset, so a conversation keeps
its KV cache there too; the three-turn conversation gives the torch backend's replies token for token."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from unipose_sdk import Assistant  # noqa: E402
from unipose_sdk.body.examples import example_image_path  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unipose_sdk.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "unipose-tiny-onnx"
    export_onnx(None, out, precision="fp32", progress=False, optimize=False)
    return out


def _conversation(assistant: Assistant) -> list:
    first = assistant.ask("Generate pose of the image: <image>.", images=[example_image_path()])
    second = assistant.ask("Generate pose of the description: a person squatting with both arms raised.")
    third = assistant.ask("Edit pose <pose> by description: raise the left arm above the head.",
                          poses=[second.poses[0]])
    return [first, second, third]


def test_onnxruntime_keeps_the_cache_and_gives_the_torch_replies(exported: Path) -> None:
    options = {"device": "cpu", "max_new_tokens": 8, "max_poses": 1}
    with Assistant.from_pretrained(exported, backend="onnxruntime", **options) as graphs:
        on_graphs = _conversation(graphs)
    with Assistant.from_pretrained(None, backend="torch", **options) as torch_model:
        on_torch = _conversation(torch_model)
    assert [r.run.backend for r in on_graphs] == ["onnxruntime"] * 3
    for ort_reply, torch_reply in zip(on_graphs, on_torch):
        assert ort_reply.generated_ids == torch_reply.generated_ids
        assert ort_reply.prompt_ids == torch_reply.prompt_ids
        assert ort_reply.reused_tokens == torch_reply.reused_tokens
    assert on_graphs[2].reused_tokens == on_graphs[1].prompt_tokens > 0
