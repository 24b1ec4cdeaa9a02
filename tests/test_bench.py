"""The benchmark: reference 1 (transformers' Mistral, eager, DynamicCache, 4-D mask) is a real reference, i.e. it
gives the SDK's tokens under the SDK's own generation loop; the references run the reference vision route;
`unipose bench --quick` writes valid JSON, markdown and a chart in seconds, naming no path of the machine."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from test_fast_path import LATE_POSE, LONG_TEXT, TEXT_ONLY, TEXT_TO_POSE, VOCAB, assert_same
from test_fast_path import model as model  # noqa: F401  (the programmed model fixture)

from unipose_sdk.bench.references import HFMistral, load_parts, reference_sessions
from unipose_sdk.cli import main
from unipose_sdk.generation import GenerationConfig, generate
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.text.prompts import Task
from unipose_sdk.timing import StageTimer

CPU = torch.device("cpu")


def test_hf_reference_equals_sdk_generation_with_waiting_and_finished_rows(model: MistralLM) -> None:  # noqa: F811
    """Rows reach their pose at different steps and finish at different times: the slot bookkeeping over the
    DynamicCache masks the tokens a row writes while it waits, so every row gets exactly the SDK's stream."""
    prompts = [TEXT_TO_POSE, LATE_POSE, TEXT_ONLY, LONG_TEXT]
    reference = HFMistral(model)
    rows = [model.embed(torch.tensor(p)) for p in prompts]
    timer = StageTimer()
    hf = generate(reference, rows, VOCAB, GenerationConfig(100), on_stage=timer.stage)
    assert_same(hf, generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=False)))
    assert_same(hf, generate(model, prompts, VOCAB, GenerationConfig(100, one_pass=True)))
    # speculative block dropped by some rows
    assert_same(hf, generate(reference, prompts, VOCAB, GenerationConfig(100, one_pass=True)))
    assert timer.counts["pose_step"] == 2 and timer.counts["decode"] >= 4
    forced = generate(reference, rows, VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=False))
    assert_same(forced, generate(model, prompts, VOCAB, GenerationConfig(100, start_with_pose=True, one_pass=True)))


def test_hf_reference_equals_sdk_on_the_embedded_tiny_model() -> None:
    parts = load_parts("unipose-tiny", CPU, torch.float32)
    sessions = {name: session for name, _, session in reference_sessions(parts)}
    session = sessions["ref-sdk-eager"]
    raw = parts.model.llm
    with torch.inference_mode():
        rows = session.embed_rows([
            session.prompts.build_task(Task.TEXT_TO_POSE, caption="a person squatting"),
            session.prompts.build_task(Task.TEXT_TO_POSE, caption="someone waving a hand high")], None)
    vocab = session.config.vocab
    hf = generate(HFMistral(raw), rows, vocab, GenerationConfig(90, start_with_pose=True, one_pass=False))
    sdk = generate(raw, rows, vocab, GenerationConfig(90, start_with_pose=True, one_pass=True))
    assert_same(hf, sdk)
    assert all(len(r.pose_codes) == 1 for r in hf)
    text_rows = rows[:1]
    assert_same(generate(HFMistral(raw), text_rows, vocab, GenerationConfig(10)),
                generate(raw, text_rows, vocab, GenerationConfig(10)))


def test_bench_quick_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--quick", "--runs", "1", "--warmup", "1", "--max-new-tokens", "4",
                     "--load-note", "pytest", "-o", str(tmp_path)])
    assert code == 0
    last = stdout.getvalue().strip().splitlines()[-1]
    md = (tmp_path / "latency_tiny_cpu.md").read_text()
    for text in (last, md):  # results are committed and shared: no path of this machine in them
        assert str(tmp_path) not in text and str(Path.home()) not in text and "/tmp" not in text
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
    assert result["command"].startswith("unipose bench --quick")
    assert result["outputs"]["json"] == "latency_tiny_cpu.json"
    assert "| generate | ref-hf-eager |" in md and "| generate | sdk-fast |" in md
    png = (tmp_path / "latency_tiny_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):  # existing results are kept unless --overwrite says otherwise
        assert main(["bench", "--quick", "-o", str(tmp_path)]) == 2
    assert "latency_tiny_cpu.json" in stderr.getvalue() and "--overwrite" in stderr.getvalue()


@pytest.mark.parametrize("argv", [["--model", "huge"], ["--device", "tpu"], ["--batch-size", "0"],
                                  ["--dtype", "fp8"], ["--backends", "ref-jax"]])
def test_bench_rejects_bad_arguments(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["bench", *argv, "-o", str(tmp_path)])


def test_reference_rows_take_the_reference_vision_route_and_fast_rows_the_fast_one() -> None:
    from unipose_sdk.bench.harness import make_backends
    from unipose_sdk.bench.references import ReferenceRuntime
    from unipose_sdk.preprocess import load_image, preprocess_batch

    parts = load_parts("unipose-tiny", CPU, torch.float32)
    backends = {b.name: b for b in make_backends("unipose-tiny", CPU, torch.float32, parts)}
    assert list(backends) == ["ref-hf-eager", "ref-sdk-eager", "sdk-fast"]
    assert backends["ref-hf-eager"].step_by_step and backends["ref-sdk-eager"].step_by_step
    assert not backends["sdk-fast"].step_by_step
    assert "reference vision" in backends["ref-sdk-eager"].label and "fast vision" in backends["sdk-fast"].label
    image = load_image((torch.rand(120, 90, 3) * 255).to(torch.uint8).numpy())
    views = preprocess_batch([image], parts.config.clip, parts.config.pose_vit)
    for name in ("ref-hf-eager", "ref-sdk-eager"):
        runtime = backends[name].session.runtime
        assert isinstance(runtime, ReferenceRuntime)
        assert all(torch.equal(a, b) for a, b in zip(runtime.pixel_views([image]), views))
        with torch.inference_mode():
            assert torch.equal(runtime.encode_images(*views), parts.model.vision(*views))
    fast = backends["sdk-fast"].session.runtime
    assert not isinstance(fast, ReferenceRuntime)
    assert fast.llm is not backends["ref-sdk-eager"].session.runtime.llm  # the references hold a model of their own
