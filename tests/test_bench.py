"""The benchmark: reference 1 (transformers' Mistral, eager, DynamicCache, 4-D mask) is a real reference, i.e. it
gives the SDK's tokens; `unipose bench --quick` writes valid JSON, markdown and a chart in seconds."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from test_fast_path import BEGIN, LATE_POSE, LONG_TEXT, TEXT_ONLY, TEXT_TO_POSE, VOCAB, assert_same
from test_fast_path import model as model  # noqa: F401  (the programmed model fixture)

from unipose_sdk.cli import main
from unipose_sdk.cli.bench import HFReference
from unipose_sdk.generation import generate
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.options import BaseOptions
from unipose_sdk.session import UniPose
from unipose_sdk.text.prompts import Task


def test_hf_reference_equals_sdk_generation_with_waiting_and_finished_rows(model: MistralLM) -> None:  # noqa: F811
    """Rows reach their pose at different steps and finish at different times: the HF lockstep loop masks the
    tokens a row receives while it waits, so every row gets exactly the SDK's stream."""
    prompts = [TEXT_TO_POSE, LATE_POSE, TEXT_ONLY, LONG_TEXT]
    reference = HFReference(model)
    rows = [model.embed(torch.tensor(p)) for p in prompts]
    timings: dict[str, float] = {}
    hf = reference.generate(rows, VOCAB, 100, timings=timings)
    assert_same(hf, generate(model, prompts, VOCAB, 100, one_pass=False))
    assert_same(hf, generate(model, prompts, VOCAB, 100, one_pass=True))
    assert timings["pose_steps"] == 2 and timings["decode_steps"] >= 4
    forced = reference.generate(rows, VOCAB, 100, first_token=BEGIN)
    assert_same(forced, generate(model, prompts, VOCAB, 100, first_token=BEGIN))


def test_hf_reference_equals_sdk_on_the_embedded_tiny_model() -> None:
    session = UniPose.load(BaseOptions(device="cpu", compile=False))
    raw = session.runtime.llm.llm
    rows = session.embed_rows([session.prompts.build_task(Task.TEXT_TO_POSE, caption="a person squatting"),
                               session.prompts.build_task(Task.TEXT_TO_POSE, caption="someone waving a hand high")],
                              None)
    vocab = session.config.vocab
    hf = HFReference(raw).generate(rows, vocab, 90, first_token=vocab.pose_begin_id)
    sdk = generate(raw, rows, vocab, 90, first_token=vocab.pose_begin_id)
    assert_same(hf, sdk)
    assert all(len(r.pose_codes) == 1 for r in hf)
    text_rows = rows[:1]
    assert_same(HFReference(raw).generate(text_rows, vocab, 10), generate(raw, text_rows, vocab, 10))


def test_bench_quick_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--quick", "--runs", "1", "--warmup", "1", "--max-new-tokens", "4",
                     "--load-note", "pytest", "-o", str(tmp_path)])
    assert code == 0
    last = stdout.getvalue().strip().splitlines()[-1]
    result = json.loads(last)
    on_disk = json.loads((tmp_path / "latency_tiny_cpu.json").read_text())
    assert on_disk["results"] == result["results"]
    for key in ("machine", "command", "git_commit", "load_note", "copy_bandwidth_gbs", "decode_floor_ms"):
        assert key in result
    assert result["load_note"] == "pytest" and result["machine"]["versions"]["torch"] == torch.__version__
    cells = {(e["task"], e["backend"]) for e in result["results"]}
    assert cells == {(t, b) for t in ("estimate", "generate", "edit", "describe_pose", "describe_image")
                     for b in ("ref-hf-eager", "ref-sdk-eager", "sdk-fast")}
    assert all(e["same_output_as_first_reference"] for e in result["results"])
    for e in result["results"]:
        assert e["stats"]["total"]["median_ms"] > 0 and len(e["runs"]) == 1
        if e["backend"] == "sdk-fast" and e["task"] in ("estimate", "generate", "edit"):
            assert "prefill_pose" in e["stats"] and e["stats"]["decode_steps"] == 0
        if e["backend"].startswith("ref-") and e["task"] == "generate":
            assert "prefill" in e["stats"] and "pose_step" in e["stats"] and e["stats"]["decode_steps"] > 0
    md = (tmp_path / "latency_tiny_cpu.md").read_text()
    assert "| generate | ref-hf-eager |" in md and "| generate | sdk-fast |" in md
    png = (tmp_path / "latency_tiny_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--model", "huge"], ["--device", "tpu"]])
def test_bench_rejects_bad_arguments(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["bench", *argv, "-o", str(tmp_path)])


def test_reference_rows_take_the_reference_vision_route_and_fast_rows_the_fast_one() -> None:
    from unipose_sdk.cli.bench import make_backends

    session = UniPose.load(BaseOptions(device="cpu", compile=False))
    backends = {b.name: b for b in make_backends(session, torch.device("cpu"), compile_cpu=False)}
    assert backends["ref-hf-eager"].reference_vision and backends["ref-sdk-eager"].reference_vision
    assert not backends["sdk-fast"].reference_vision
    assert "reference vision" in backends["ref-sdk-eager"].label and "fast vision" in backends["sdk-fast"].label
