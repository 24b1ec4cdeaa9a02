"""The optional frozen sentence encoder (unipose-tiny v2): BERT parity, int8-row storage, prompt slots, and the
whole path from a saved directory through the task classes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from unipose_sdk.checkpoint.sdk_format import (
    INT8_SCALE_SUFFIX,
    INT8_SUFFIX,
    dequantize_int8_rows,
    load_model,
    quantize_int8_rows,
    save_model,
)
from unipose_sdk.errors import CheckpointError, ConfigError, InvalidInputError, VocabularyError
from unipose_sdk.models.config import TextEncoderConfig, UniPoseConfig, get_preset
from unipose_sdk.models.text_encoder import SentenceEncoder
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer
from unipose_sdk.text.prompts import PromptBuilder, Task

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "person", "raise", "your", "left", "right", "hand", "arm", "up",
         "sit", "down", "squat", "##s", "##ing", ".", ",", "the", "ceiling", "point", "at", "someone", "is"]
SMALL = TextEncoderConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=64, max_tokens=16, num_rows=3,
                          projector_hidden_size=48)


def wordpiece_tokenizer() -> Tokenizer:
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return backend


@pytest.fixture(scope="module")
def embedded_tokenizer():  # noqa: ANN201
    from unipose_sdk.training.pipeline import load_text_tokenizer

    return load_text_tokenizer()


def small_config() -> UniPoseConfig:
    return dataclasses.replace(get_preset("unipose-tiny"), text_encoder=SMALL)


def test_bert_matches_transformers_on_random_weights() -> None:
    transformers = pytest.importorskip("transformers")
    bert_config = transformers.BertConfig(
        vocab_size=SMALL.vocab_size, hidden_size=SMALL.hidden_size, intermediate_size=SMALL.intermediate_size,
        num_hidden_layers=SMALL.num_hidden_layers, num_attention_heads=SMALL.num_attention_heads,
        max_position_embeddings=SMALL.max_position_embeddings, type_vocab_size=SMALL.type_vocab_size,
        layer_norm_eps=SMALL.layer_norm_eps, hidden_act="gelu")
    torch.manual_seed(0)
    reference = transformers.BertModel(bert_config, add_pooling_layer=False).eval()
    ours = SentenceEncoder(SMALL, 16).eval()
    state = {k: v for k, v in reference.state_dict().items() if k != "embeddings.position_ids"}
    ours.bert.load_state_dict(state, strict=True)
    ids = torch.tensor([[2, 4, 5, 6, 7, 3, 0, 0], [2, 24, 25, 13, 14, 18, 20, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        got = ours.sentence_embedding(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Padding must not change a text's embedding.
    with torch.no_grad():
        alone = ours.sentence_embedding(ids[:1, :6], mask[:1, :6])
    torch.testing.assert_close(alone, got[:1], atol=1e-5, rtol=1e-5)


def test_int8_rows_round_trip_and_damaged_pairs_are_refused() -> None:
    matrix = torch.randn(50, 33) * torch.linspace(0.01, 5.0, 50)[:, None]  # rows of very different ranges
    quantized, scale = quantize_int8_rows(matrix)
    assert quantized.dtype == torch.int8 and scale.shape == (50,)
    restored = dequantize_int8_rows({"w" + INT8_SUFFIX: quantized, "w" + INT8_SCALE_SUFFIX: scale})["w"]
    row_error = (restored - matrix).abs().amax(1) / matrix.abs().amax(1)
    assert float(row_error.max()) <= 0.5 / 127 + 1e-6  # at most half a step of each row's own range
    with pytest.raises(CheckpointError, match="scale"):
        dequantize_int8_rows({"w" + INT8_SUFFIX: quantized})
    with pytest.raises(CheckpointError, match="without their matrices"):
        dequantize_int8_rows({"w" + INT8_SCALE_SUFFIX: scale})
    with pytest.raises(CheckpointError):
        dequantize_int8_rows({"w" + INT8_SUFFIX: quantized, "w" + INT8_SCALE_SUFFIX: scale[:10]})


def test_config_round_trip_and_bad_values() -> None:
    config = small_config()
    assert UniPoseConfig.from_dict(config.to_dict()) == config
    assert UniPoseConfig.from_dict(get_preset("unipose-tiny").to_dict()).text_encoder is None
    bad = config.to_dict()
    bad["text_encoder"]["max_tokens"] = 1000
    with pytest.raises(ConfigError, match="max_tokens"):
        UniPoseConfig.from_dict(bad)
    bad = config.to_dict()
    bad["text_encoder"]["num_rows"] = "four"
    with pytest.raises(ConfigError, match="num_rows"):
        UniPoseConfig.from_dict(bad)


def test_prompt_slots_follow_bos_and_hold_the_caption(embedded_tokenizer) -> None:  # noqa: ANN001
    builder = PromptBuilder(embedded_tokenizer, 64, 512, text_rows=3)
    plain = PromptBuilder(embedded_tokenizer, 64, 512)
    row = builder.build_task(Task.TEXT_TO_POSE, "someone pointing at the ceiling")
    base = plain.build_task(Task.TEXT_TO_POSE, "someone pointing at the ceiling")
    layout = embedded_tokenizer.layout
    assert row.text_start == 1 and row.encoder_text == "someone pointing at the ceiling"
    assert row.input_ids == [layout.bos_id] + [layout.pad_id] * 3 + base.input_ids[1:]
    assert base.text_start is None
    free = builder.build("Describe <pose> in words.", poses=[[0] * 80])
    assert free.encoder_text == "Describe in words."
    described = builder.build_task(Task.POSE_DESCRIPTION, poses=[[0] * 80])
    assert described.encoder_text == "Generate description of the pose ."


def test_the_unconditional_prompt_drops_the_caption_for_both_readers(embedded_tokenizer) -> None:  # noqa: ANN001
    builder = PromptBuilder(embedded_tokenizer, 64, 512, text_rows=3)
    row = builder.build_unconditional(Task.TEXT_TO_POSE)
    # The LLM sees the template with nothing where the caption goes (as caption dropout trains it), the encoder
    # reads no text.
    assert row.encoder_text == "" and row.text_start == 1
    assert row.text == "[INST] Generate pose of the description: . [/INST]"
    assert len(row.input_ids) < len(builder.build_task(Task.TEXT_TO_POSE, "someone pointing up").input_ids)
    for task in (Task.POSE_EDITING, Task.POSE_ESTIMATION, Task.POSE_DESCRIPTION):
        with pytest.raises(InvalidInputError, match=f"task {task.value}.*text2pose"):
            builder.build_unconditional(task)


def test_sentence_tokenizer_checks_its_vocabulary() -> None:
    with pytest.raises(VocabularyError, match="26 ids"):
        SentenceTokenizer(wordpiece_tokenizer(), dataclasses.replace(SMALL, vocab_size=100))
    tokenizer = SentenceTokenizer(wordpiece_tokenizer(), SMALL)
    ids, mask = tokenizer(["raise your left hand", "a person " * 40])
    assert ids.shape[1] == SMALL.max_tokens and mask[0].sum() == 6 and ids[0, 0] == 2 and ids[0, 5] == 3


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, embedded_tokenizer):  # noqa: ANN001, ANN201
    torch.manual_seed(3)
    model = UniPoseModel.from_config(small_config())
    directory = tmp_path_factory.mktemp("text-encoder") / "model"
    save_model(model, directory, embedded_tokenizer, dtype=torch.float16, int8_prefixes=("text_encoder.bert.",))
    SentenceTokenizer(wordpiece_tokenizer(), SMALL).save(directory)
    return directory, model


def test_saved_directory_loads_with_int8_encoder(saved_model) -> None:  # noqa: ANN001
    directory, model = saved_model
    loaded = load_model(directory)
    assert loaded.sentence_tokenizer is not None and loaded.model.text_encoder is not None
    ids, mask = loaded.sentence_tokenizer(["raise your left hand", "someone is squatting down"])
    with torch.no_grad():
        want = model.text_encoder.sentence_embedding(ids, mask)
        got = loaded.model.text_encoder.float().sentence_embedding(ids, mask)
    assert float((want * got).sum(-1).min()) > 0.99


def test_task_classes_feed_the_encoder_rows(saved_model) -> None:  # noqa: ANN001
    from unipose_sdk import Generator

    directory, _ = saved_model
    generator = Generator.from_pretrained(directory, backend="torch")
    session = generator._session()
    rows = [session.prompts.build_task(Task.TEXT_TO_POSE, text) for text in ("raise your left hand", "sit down")]
    embeds = session.embed_rows(rows, None)
    # Same LLM tokens apart from the caption, different sentence rows: the rows are what the encoder made.
    encoded = session.encode_texts(["raise your left hand", "sit down"])
    torch.testing.assert_close(embeds[0][1:4], encoded[0].to(embeds[0].dtype))
    torch.testing.assert_close(embeds[1][1:4], encoded[1].to(embeds[1].dtype))
    assert not torch.allclose(encoded[0], encoded[1])
    result = generator.generate("point at the ceiling")
    assert result.pose.joints().shape[-2:] == (22, 3)


def test_a_directory_without_its_sentence_tokenizer_is_refused(saved_model, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from unipose_sdk.errors import ModelNotFoundError

    directory, _ = saved_model
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    (broken / "sentence_tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="sentence_tokenizer.json"):
        load_model(broken)


def test_onnx_export_runs_the_encoder_with_the_same_tokens(saved_model, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("onnxruntime")
    from unipose_sdk.export.onnx import export_onnx

    from unipose_sdk import Describer, Generator

    directory, _ = saved_model
    report = export_onnx(str(directory), tmp_path / "onnx", precision="fp32", validate=True)
    graphs = {g.name: g for g in report.graphs}
    assert graphs["text_encoder"].validated
    assert (tmp_path / "onnx" / "sentence_tokenizer.json").is_file()
    prompts = ["raise your left hand", "someone is squatting down", "point at the ceiling"]
    by_torch = Generator.from_pretrained(directory, backend="torch").generate(prompts)
    by_ort = Generator.from_pretrained(tmp_path / "onnx", backend="onnxruntime").generate(prompts)
    assert [r.pose_codes for r in by_torch] == [r.pose_codes for r in by_ort]
    described = Describer.from_pretrained(tmp_path / "onnx", backend="onnxruntime").describe(pose=by_ort[0].pose)
    assert isinstance(described.text, str)
    # The tokenizer beside the graphs belongs to this export: another one is refused.
    (tmp_path / "onnx" / "sentence_tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CheckpointError):
        Generator.from_pretrained(tmp_path / "onnx", backend="onnxruntime").generate("sit down")


@pytest.mark.parametrize("argv, names", [
    (["--text-encoder-from", "{tmp}"], "config.json"),
    (["--task-mix", "text2pose=0.5,bogus=1"], "bogus=1"),
    (["--task-mix", "text2pose=-1"], "weights must be >= 0"),
])
def test_train_refuses_bad_encoder_sources_and_task_mixes_before_any_work(tmp_path, capsys, argv, names) -> None:  # noqa: ANN001
    from unipose_sdk.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "-o", str(out), *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert stopped.value.code == 2
    assert names in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- quantized exports
@pytest.fixture(scope="module")
def quantized_onnx(saved_model, tmp_path_factory):  # noqa: ANN001, ANN201
    """A float export of the small model and its int8 copy. Block size 32: the small encoder's tables are 32
    wide, so they are whole blocks and the graph holds both rewrites (MiniLM's 384 is three blocks of 128)."""
    pytest.importorskip("onnxruntime")
    from unipose_sdk.export.onnx import export_onnx, quantize_export

    directory, _ = saved_model
    root = tmp_path_factory.mktemp("text-encoder-quant")
    export_onnx(str(directory), root / "float", precision="fp32", validate=False, optimize=False, progress=False)
    report = quantize_export(root / "float", root / "int8", "int8", block_size=32)
    return root / "float", root / "int8", report


def test_the_one_step_export_quantizes_and_compares_the_encoder(saved_model, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("onnxruntime")
    import unipose_sdk.export.quantize as Q
    from unipose_sdk.export.onnx import export_onnx

    directory, _ = saved_model
    report = export_onnx(str(directory), tmp_path / "int8", precision="fp32", weights="int8", block_size=32,
                         graphs=("text_encoder",), progress=False, optimize=False)
    (graph,) = report.graphs
    assert graph.weights == Q.INT8_DYNAMIC_GATHER and graph.validated == "yes"
    assert 0 < graph.quant_relative_error < 0.1  # compared with the float graph on the validation inputs
    assert set(Q.SCHEME_OPS[Q.INT8_DYNAMIC_GATHER]) <= Q.graph_op_types(tmp_path / "int8" / "text_encoder.onnx")


def test_an_int8_export_quantizes_the_encoder_and_serves_it_close_to_float(quantized_onnx) -> None:  # noqa: ANN001
    import json

    import onnx
    import unipose_sdk.export.quantize as Q
    from unipose_sdk.export.artifacts import read_directory, read_graph_metadata

    from unipose_sdk import Generator

    float_dir, int8_dir, report = quantized_onnx
    by_name = {g.name: g for g in report.graphs}
    assert by_name["text_encoder"].weights == Q.INT8_DYNAMIC_GATHER
    assert 0 < by_name["text_encoder"].quant_relative_error < 0.1
    ops = Q.graph_op_types(int8_dir / "text_encoder.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger", "GatherBlockQuantized"} <= ops
    tables = [t.name for t in onnx.load(str(int8_dir / "text_encoder.onnx")).graph.initializer
              if t.name.endswith(("word_embeddings.weight", "position_embeddings.weight"))]
    assert tables == []  # the word and position tables are read block-quantized, their float copies gone
    recorded = json.loads(read_graph_metadata(int8_dir / "text_encoder.onnx")[Q.META_QUANTIZATION])
    assert recorded["scheme"] == Q.INT8_DYNAMIC_GATHER and recorded["precision"] == "int8"
    assert recorded["quantized_bytes"] < recorded["float_bytes"] / 3
    exported = read_directory(int8_dir)
    assert exported.weights == "int8" and exported.quantization["text_encoder"].scheme == Q.INT8_DYNAMIC_GATHER
    texts = ["raise your left hand", "someone is squatting down", "point at the ceiling", "sit down"]
    want = Generator.from_pretrained(float_dir, backend="onnxruntime")._session().encode_texts(texts)
    session = Generator.from_pretrained(int8_dir, backend="onnxruntime")._session()
    assert session.runtime.weights == "int8"
    got = session.encode_texts(texts)
    assert got.shape == want.shape == (4, SMALL.num_rows, 128)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(1).float(), want.flatten(1).float(), dim=-1)
    assert float(cosine.min()) > 0.99 and not torch.equal(got, want)  # close, and really quantized


def test_a_swapped_or_relabelled_encoder_graph_is_refused(quantized_onnx, tmp_path) -> None:  # noqa: ANN001
    import json
    import shutil

    import onnx
    import unipose_sdk.export.quantize as Q
    import unipose_sdk.export.specs as S
    from unipose_sdk.export.artifacts import read_directory, read_graph_metadata

    float_dir, int8_dir, _ = quantized_onnx
    meta = read_graph_metadata(int8_dir / "text_encoder.onnx")

    def relabel(path, **values: str) -> None:  # noqa: ANN001
        model = onnx.load(str(path))
        props = {p.key: p.value for p in model.metadata_props} | values
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))

    # The float graph copied in as it is: another export's part.
    copied = tmp_path / "copied"
    shutil.copytree(int8_dir, copied)
    shutil.copy(float_dir / "text_encoder.onnx", copied / "text_encoder.onnx")
    with pytest.raises(CheckpointError, match="text_encoder.onnx"):
        read_directory(copied)
    # The float graph given the int8 graph's export id and quantization record: it lacks the ops it claims.
    swapped = tmp_path / "swapped"
    shutil.copytree(copied, swapped)
    relabel(swapped / "text_encoder.onnx", **{S.META_EXPORT_ID: meta[S.META_EXPORT_ID],
                                              Q.META_QUANTIZATION: meta[Q.META_QUANTIZATION]})
    with pytest.raises(CheckpointError, match=r"text_encoder\.onnx whose metadata says 'int8-dynamic\+int8-gather' "
                                              r"but whose graph lacks \['DynamicQuantizeLinear'"):
        read_directory(swapped)
    # The int8 graph relabelled as float: it holds quantized ops.
    relabelled = tmp_path / "relabelled"
    shutil.copytree(int8_dir, relabelled)
    record = json.loads(meta[Q.META_QUANTIZATION])
    relabel(relabelled / "text_encoder.onnx", **{Q.META_QUANTIZATION: json.dumps({**record, "scheme": Q.FLOAT})})
    with pytest.raises(CheckpointError, match=r"says 'float' but whose graph holds"):
        read_directory(relabelled)
    # A scheme the int8 plan does not give the encoder.
    relabel(relabelled / "text_encoder.onnx", **{Q.META_QUANTIZATION: json.dumps({**record,
                                                                                  "scheme": Q.INT4_NBITS})})
    with pytest.raises(CheckpointError, match=r"weights 'int4-nbits' in a int8 export"):
        read_directory(relabelled)


def test_the_memory_planner_prices_the_encoder_as_its_graph_stores_it(quantized_onnx) -> None:  # noqa: ANN001
    import unipose_sdk.export.quantize as Q
    from unipose_sdk.export.artifacts import read_directory

    from unipose_sdk import memory

    float_dir, int8_dir, _ = quantized_onnx
    encoder = {p: next(c for c in memory.plan_memory(d, dtype="float32").components if c.name == "text encoder")
               for p, d in (("float", float_dir), ("int8", int8_dir))}
    assert encoder["float"].scheme == "float" and encoder["float"].bytes == encoder["float"].float_bytes
    assert encoder["int8"].scheme == Q.INT8_DYNAMIC_GATHER and encoder["int8"].parameters == encoder["float"].parameters
    # Priced at block 128, where the small encoder's 32-wide tables stay float; its Linears are int8 either way.
    recorded = read_directory(int8_dir).quantization["text_encoder"]
    assert encoder["int8"].bytes < encoder["float"].bytes - 0.6 * recorded.float_bytes


def test_the_qdq_form_gives_the_encoder_int8_weights_behind_dequantize_linear(quantized_onnx, tmp_path) -> None:  # noqa: ANN001
    import unipose_sdk.export.quantize as Q
    from unipose_sdk.export.artifacts import read_directory
    from unipose_sdk.export.onnx import quantize_export

    float_dir, _, _ = quantized_onnx
    report = quantize_export(float_dir, tmp_path / "qdq", "int4", form="qdq")
    assert {g.name: g.weights for g in report.graphs}["text_encoder"] == Q.QDQ_INT8
    ops = Q.graph_op_types(tmp_path / "qdq" / "text_encoder.onnx")
    assert "DequantizeLinear" in ops and not ops & {"MatMulInteger", "GatherBlockQuantized", "MatMulNBits"}
    assert read_directory(tmp_path / "qdq").quantization["text_encoder"].form == "qdq"
