"""The ONNX Runtime backend on the tiny model: the seven tasks through the task classes give exactly the torch
backend's pose tokens and text; the runtime's LanguageModel matches MistralLM call by call; export directories
describe themselves and bad ones are refused.

The tiny model is exported ONCE per module (fp32, validated) into a temporary directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from unipose_sdk.export import specs as S  # noqa: E402
from unipose_sdk.export.artifacts import is_export_directory, read_directory  # noqa: E402

from unipose_sdk import generation  # noqa: E402
from unipose_sdk.body.examples import example_pose_names, load_example_pose  # noqa: E402
from unipose_sdk.checkpoint.embedded import embedded_model_is_trained  # noqa: E402
from unipose_sdk.errors import (  # noqa: E402
    BackendUnavailableError,
    CheckpointError,
    InvalidInputError,
    ModelNotFoundError,  # noqa: E402
)
from unipose_sdk.models.attention_mask import MixedMask  # noqa: E402
from unipose_sdk.runtime.onnxruntime import OnnxRuntimeRuntime, OrtOptions  # noqa: E402
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator  # noqa: E402

pytestmark = pytest.mark.slow
SHORT = {"max_new_tokens": 10}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unipose_sdk.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "unipose-tiny-onnx"
    report = export_onnx(None, out, precision="fp32", progress=False, optimize=False)
    assert [g.name for g in report.graphs] == list(S.family_graph_names(read_directory(out).config))
    assert all(g.validated == "yes" for g in report.graphs)
    return out


@pytest.fixture(scope="module")
def image_rgb() -> np.ndarray:
    return (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)


def _pair(cls, exported: Path):  # type: ignore[no-untyped-def]
    return (cls.from_pretrained(exported, backend="onnxruntime", device="cpu", **SHORT),
            cls.from_pretrained(None, backend="torch", device="cpu", **SHORT))


def test_text_to_pose_identical_on_both_backends(exported: Path) -> None:
    onnx, ref = _pair(Generator, exported)
    texts = ["a person squatting with both arms raised", "arms crossed"]
    got, want = onnx.generate(texts), ref.generate(texts)
    assert got[0].run.backend == "onnxruntime" and want[0].run.backend == "torch"
    for g, w in zip(got, want):
        assert g.pose_codes == w.pose_codes and g.text == w.text
        assert g.pose.allclose(w.pose, atol=1e-4)


def test_guided_text_to_pose_identical_on_both_backends(exported: Path) -> None:
    onnx = Generator.from_pretrained(exported, backend="onnxruntime", device="cpu", pose_guidance=2.5, **SHORT)
    ref = Generator.from_pretrained(None, backend="torch", device="cpu", pose_guidance=2.5, **SHORT)
    texts = ["kneel on both knees", "lean to your left", "arms crossed"]
    got, want = onnx.generate(texts), ref.generate(texts)
    assert [g.pose_codes for g in got] == [w.pose_codes for w in want]


def test_pose_editing_identical(exported: Path) -> None:
    onnx, ref = _pair(Editor, exported)
    pose = load_example_pose("squatting")
    got, want = onnx.edit(pose, "raise the left arm"), ref.edit(pose, "raise the left arm")
    assert got.pose_codes == want.pose_codes and got.text == want.text


def test_pose_estimation_identical(exported: Path, image_rgb: np.ndarray) -> None:
    onnx, ref = _pair(Estimator, exported)
    got, want = onnx.estimate(image_rgb), ref.estimate(image_rgb)
    assert got.pose_codes == want.pose_codes and got.text == want.text


def test_the_four_description_tasks_identical(exported: Path, image_rgb: np.ndarray) -> None:
    onnx, ref = _pair(Describer, exported)
    a, b = load_example_pose("squatting"), load_example_pose(example_pose_names()[0])
    for kwargs in ({"pose": a}, {"poses": (a, b)}, {"image": image_rgb}, {"images": (image_rgb, image_rgb[::-1])}):
        got, want = onnx.describe(**kwargs), ref.describe(**kwargs)
        assert got.text == want.text, kwargs.keys()
        assert got.text  # something was generated (the placeholder model's text is not meaningful)


def test_image_descriptions_keep_the_same_sentences_on_both_backends(exported: Path, image_rgb: np.ndarray) -> None:
    """The export carries the model's sentence floor, and the log-probabilities it is applied to agree with torch's
    (whole answers of several sentences, so the floor has sentences to drop)."""
    from unipose_sdk.body.examples import example_image_path
    from unipose_sdk.options import DescriberOptions
    from unipose_sdk.tasks.images import images_to_embeds
    from unipose_sdk.text.prompts import Task

    onnx = Describer.from_pretrained(exported, backend="onnxruntime", device="cpu", max_new_tokens=64)
    ref = Describer.from_pretrained(None, backend="torch", device="cpu", max_new_tokens=64)
    floor = ref.session.config.image_description_min_sentence_logprob
    assert onnx.session.config.image_description_min_sentence_logprob == floor
    images = [image_rgb, example_image_path(), image_rgb[::-1]]
    assert [r.text for r in onnx.describe(image=images)] == [r.text for r in ref.describe(image=images)]
    # A floor high enough that these answers lose sentences, on both backends alike.
    options = DescriberOptions(max_new_tokens=64, min_sentence_logprob=-0.3)
    floored = [Describer.from_session(d.session, options).describe(image=images) for d in (onnx, ref)]
    assert [r.text for r in floored[0]] == [r.text for r in floored[1]]
    whole = DescriberOptions(max_new_tokens=64, keep_all_sentences=True)
    assert [r.text for r in floored[1]] != [r.text for r in Describer.from_session(ref.session, whole)
                                              .describe(image=images)]

    def answers(session):  # type: ignore[no-untyped-def]  # the loop's results, log-probabilities included
        rows = [session.prompts.build_task(Task.IMAGE_DESCRIPTION) for _ in images]
        embeds = session.embed_rows(rows, images_to_embeds(session, images))
        return generation.generate(session.runtime.llm, embeds, session.config.vocab,
                                   generation.GenerationConfig(64, text_only=True),
                                   sentence_end_ids=session.sentence_end_ids)

    for got, want in zip(answers(onnx.session), answers(ref.session)):
        assert got.token_ids == want.token_ids
        np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, atol=1e-3)


def test_auto_backend_picks_onnxruntime_for_an_export_directory(exported: Path) -> None:
    generator = Generator.from_pretrained(exported, **SHORT)
    assert generator.session.runtime.backend == "onnxruntime"
    # The flag travels inside the graphs' metadata.
    assert generator.session.run_info().model_is_random == (not embedded_model_is_trained())


def test_language_model_matches_mistral_call_by_call(exported: Path) -> None:
    """Prefill with left padding, a pose step while another row waits, then a decode step: same logits."""
    from unipose_sdk.checkpoint.embedded import load_embedded

    runtime = OnnxRuntimeRuntime(exported, "cpu", OrtOptions(num_threads=1, graph_optimization="basic"))
    torch_llm = load_embedded("cpu", torch.float32).model.llm
    vocab = runtime.config.vocab
    prompts = [torch.tensor([1, 5, 9, 30, 31]), torch.tensor([1, 7, 8])]
    states = []
    for llm in (runtime.llm, torch_llm):
        rows = [llm.embed(p.unsqueeze(0))[0] for p in prompts]
        embeds, lengths = generation.left_pad(rows)
        cache = llm.new_cache(2, 5 + 100)
        logits, state = generation.prefill(llm, cache, embeds, lengths)
        pose = generation.pose_step(llm, cache, state, vocab, torch.tensor([True, False]))
        step = generation.decode_step(llm, cache, state, torch.tensor([vocab.pose_end_id, 3]), torch.tensor([1, 1]))
        states.append((logits, pose, step))
    for got, want in zip(*states):
        assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    # No cache: keys are the call's own tokens (query_offset 0), logits at every position.
    ids = torch.tensor([[1, 4, 6, 8]])
    got = runtime.llm(ids, mask=MixedMask.causal(1)).logits
    assert torch.allclose(got, torch_llm(ids).logits, atol=1e-4)
    with pytest.raises(InvalidInputError, match="return_hidden"):
        runtime.llm(ids, return_hidden=True)


def test_pose_graphs_match_the_tokenizer(exported: Path) -> None:
    from unipose_sdk.checkpoint.embedded import load_embedded

    runtime = OnnxRuntimeRuntime(exported)
    tokenizer = load_embedded("cpu").model.pose_tokenizer
    pose_6d = load_example_pose("squatting").rotation_6d()
    codes = runtime.encode_poses(pose_6d)
    assert codes.dtype == torch.int64 and torch.equal(codes, tokenizer.encode(pose_6d))
    assert torch.allclose(runtime.decode_poses(codes), tokenizer.decode_6d(codes), atol=1e-5)
    assert "onnxruntime" in runtime.describe()


def test_every_graph_describes_itself(exported: Path) -> None:
    info = read_directory(exported)
    assert info.precision == "fp32" and info.emission == "decomposed"
    assert info.is_random is (not embedded_model_is_trained())
    assert info.config.name == "unipose-tiny"
    decoder = info.graphs["decoder"]
    assert decoder.spec.input_names[:7] == ["input_embeds", "positions", "block_start", "block_end", "key_start",
                                            "query_offset", "logits_index"]
    vocab = json.loads(decoder.metadata[S.META_VOCAB])
    assert vocab["pose_begin_id"] == info.config.vocab.pose_begin_id
    import onnxruntime as ort

    session = ort.InferenceSession(str(decoder.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == decoder.spec.input_names
    assert [o.name for o in session.get_outputs()] == decoder.spec.output_names
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["input_embeds"][:2] == ["batch", "tokens"] and shapes["past_key_0"][2] == "keys"
    assert is_export_directory(exported) and not is_export_directory(exported / "decoder.onnx")


def test_damaged_directories_are_refused(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_directory(tmp_path / "missing")
    partial = tmp_path / "partial"
    shutil.copytree(exported, partial)
    (partial / "vision.onnx").unlink()
    with pytest.raises(CheckpointError, match="vision.onnx"):
        read_directory(partial)
    # A graph file that was not written by `unipose export` (metadata removed).
    import onnx

    foreign = tmp_path / "foreign"
    shutil.copytree(exported, foreign)
    model = onnx.load(str(foreign / "embed.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(foreign / "embed.onnx"))
    with pytest.raises(CheckpointError, match="not written by `unipose export`"):
        read_directory(foreign)
    notok = tmp_path / "no-tokenizer"
    shutil.copytree(exported, notok)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        Generator.from_pretrained(notok, backend="onnxruntime")


def test_the_export_carries_the_pose_codebook_for_expected_code_decoding(exported: Path, tmp_path: Path) -> None:
    from unipose_sdk.session import UniPose

    onnx = Generator.from_pretrained(exported, backend="onnxruntime", device="cpu", **SHORT)
    ref = Generator.from_pretrained(None, backend="torch", device="cpu", **SHORT)
    assert onnx.session.config.pose_decoding == "expected_code"
    assert onnx.session.config.text_to_pose_code_temperature == ref.session.config.text_to_pose_code_temperature
    assert torch.equal(onnx.session.pose_code_vectors, ref.session.pose_code_vectors)
    assert onnx.generate("arms crossed").run.fallback is None
    # An export from before the codebook file: argmax decoding, and every result says so.
    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    (old / S.POSE_CODEBOOK_FILE).unlink()
    UniPose._cache.clear()
    result = Generator.from_pretrained(old, backend="onnxruntime", device="cpu", **SHORT).generate("arms crossed")
    assert "pose_decoding='expected_code'" in result.run.fallback and "argmax" in result.run.fallback
    # A codebook of the wrong shape is refused.
    np.save(old / S.POSE_CODEBOOK_FILE, np.zeros((3, 2), np.float32))
    with pytest.raises(CheckpointError, match="pose_codebook.npy of shape"):
        read_directory(old)


def test_backend_errors(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="unipose export"):
        Generator.from_pretrained(None, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider|cuda"):
        OnnxRuntimeRuntime(exported, "cuda") if torch.cuda.is_available() else Generator.from_pretrained(
            exported, backend="onnxruntime", device="cuda")
    with pytest.raises(InvalidInputError, match="graph_optimization"):
        OrtOptions(graph_optimization="fastest")
    with pytest.raises(InvalidInputError, match="num_threads"):
        OrtOptions(num_threads=0)


def test_sessions_share_torchs_thread_budget_and_do_not_spin(exported: Path) -> None:
    """Five sessions and torch share the cores: every session gets torch's thread count (unless told otherwise)
    and idle pool threads sleep instead of spinning (spinning pools made the ORT rows 3x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runtime = OnnxRuntimeRuntime(exported, "cpu")
        spinning = OnnxRuntimeRuntime(exported, "cpu", OrtOptions(num_threads=2, spin_threads=True))
    finally:
        torch.set_num_threads(before)
    for name, graph in runtime._graphs.items():
        options = graph.session.get_session_options()
        assert options.intra_op_num_threads == 1, name
        assert options.inter_op_num_threads == 1, name
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", name
    options = spinning._graphs["vision"].session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_bench_loads_an_export_or_exports_the_tiny_model_first(exported: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from unipose_sdk.export import onnx as export_module

    from unipose_sdk.bench.harness import load_onnx_session

    cpu = torch.device("cpu")
    assert load_onnx_session(None, cpu)[0] is None
    session, note = load_onnx_session(str(exported), cpu)
    assert session.runtime.backend == "onnxruntime" and note.startswith(f"loaded {exported.name}")
    assert str(exported) not in note  # the note goes into committed results: no path of this machine
    assert "idle threads sleep" in note
    (tmp_path / "junk").mkdir()
    session, note = load_onnx_session(str(tmp_path / "junk"), cpu)
    assert session is None and "not a directory written by `unipose export`" in note
    calls = []

    def fake_export(model, out, **kwargs):  # type: ignore[no-untyped-def]  # a copy stands in for the 60 s export
        calls.append((model, kwargs["precision"]))
        shutil.copytree(exported, out)

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    session, note = load_onnx_session(str(tmp_path / "new"), cpu)
    assert calls == [(None, "fp32")] and session is not None and note.startswith("exported the embedded unipose-tiny")
    session, note = load_onnx_session(str(tmp_path / "other"), cpu, model="unipose-7b")  # no export of a random 7B
    assert session is None and calls == [(None, "fp32")]
