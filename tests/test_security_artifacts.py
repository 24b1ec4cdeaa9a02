"""Damaged or wrong artifacts are refused with a typed error that names the file and the field or tensor.

config.json of an SDK model directory and of a pose-tokenizer directory, checked by type and range; damaged
safetensors, JSON and torch files; weights with NaN / infinity or of the wrong kind; the release's JSON files
(shard index, Hugging Face config, LoRA adapter config)."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from unipose_sdk.checkpoint.lora import read_adapter_config
from unipose_sdk.checkpoint.official import read_hf_weights, read_json, torch_load_tensors
from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer, random_tiny_tokenizer, save_pose_tokenizer
from unipose_sdk.checkpoint.sdk_format import load_model, read_config, read_metadata, save_model
from unipose_sdk.errors import CheckpointError, ConfigError
from unipose_sdk.models.config import UniPoseConfig, get_preset
from unipose_sdk.models.unipose import UniPoseModel

TINY = get_preset("unipose-tiny")


@pytest.fixture(scope="module")
def sdk_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(UniPoseModel.from_config(TINY), tmp_path_factory.mktemp("sdk") / "model", source="test")


def _copy(directory: Path, root: Path) -> Path:
    return Path(shutil.copytree(directory, root / directory.name))


def _edit_config(directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    path = directory / "config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = meta["config"]
        for name in parents:
            node = node[name]
        node[last] = value

    return edit


# ------------------------------------------------------------------------------------------------ config.json fields

# (field, bad value, text the message must contain besides the field name)
BAD_FIELDS = [
    ("llm.hidden_size", "128", "(str); expected int"),
    ("llm.num_hidden_layers", True, "(bool); expected int"),
    ("llm.intermediate_size", 512.0, "(float); expected int"),
    ("llm.hidden_size", -128, "an integer >= 1"),
    ("llm.num_hidden_layers", 0, "an integer >= 1"),
    ("llm.rope_theta", -10000.0, "a finite number > 0"),
    ("llm.rope_theta", 0, "a finite number > 0"),
    ("llm.rope_theta", "1e4", "(str)"),
    ("llm.rms_norm_eps", float("nan"), "a finite number > 0"),
    ("llm.rms_norm_eps", float("inf"), "a finite number > 0"),
    ("llm.tie_word_embeddings", "false", "true or false"),
    ("llm.num_key_value_heads", 3, "a multiple of num_key_value_heads=3"),
    ("llm.head_dim", 63, "an even number"),
    ("vocab.bos_id", -1, "an id >= 0"),
    ("vocab.pad_id", 5000, "below text_vocab_size=1024"),
    ("clip.num_attention_heads", 3, "a multiple of num_attention_heads=3"),
    ("clip.hidden_act", "relu", "'quick_gelu' or 'gelu'"),
    ("clip.select_layer", 0, "a non-zero layer index"),
    ("clip.select_layer", 99, "within num_hidden_layers=4"),
    ("clip.image_mean", [0.5, 0.5], "a list of 3 values"),
    ("clip.image_std", [0.2, 0.0, 0.2], "finite number > 0"),
    ("clip.layer_norm_eps", None, "(NoneType)"),
    ("pose_vit.num_heads", 3, "a multiple of num_heads=3"),
    ("pose_vit.patch_padding", -1, "pixels >= 0"),
    ("pose_vit.mlp_ratio", float("-inf"), "a finite number > 0"),
    ("pose_tokenizer.ema_decay", 1.5, "in [0, 1)"),
    ("pose_tokenizer.encoder_lengths", [40, 81, 160], "double"),
    ("pose_tokenizer.decoder_lengths", [65, 51, 36, 21], "ending at num_joints=22"),
    ("pose_tokenizer.encoder_lengths", "40,80,160", "a list of one or more values"),
    ("max_text_tokens", "512", "(str); expected int"),
    ("pose_decoding", "beam", "one of ('argmax', 'expected_code')"),
    ("text_to_pose_code_temperature", 0.0, "a number in [0.05, 10]"),
    ("text_to_pose_code_temperature", "0.7", "(str); expected float"),
    ("text_to_pose_guidance", -1.0, "a number in [0, 10]"),
    ("text_to_pose_guidance", float("nan"), "a number in [0, 10]"),
    ("name", 7, "(int); expected str"),
    ("extra", [], "a JSON object"),
    ("llm", "oops", "a JSON object of LLMConfig fields"),
    ("llm.flash", True, "unknown LLMConfig fields ['llm.flash']"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_FIELDS,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_model_config_field_is_refused_naming_it(tmp_path: Path, sdk_dir: Path, field: str, value: Any,
                                                 expected: str) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(sdk_dir / "config.json", directory / "config.json")  # read_config needs only the config
    path = _edit_config(directory, _set(field, value))
    with pytest.raises(ConfigError) as info:
        read_config(directory)
    message = str(info.value)
    assert str(path) in message and field.rsplit(".", 1)[-1] in message and expected in message
    assert isinstance(info.value, ValueError)  # generic `except ValueError` code still catches it


def test_load_model_refuses_before_building(tmp_path: Path, sdk_dir: Path, monkeypatch) -> None:
    directory = _copy(sdk_dir, tmp_path)
    _edit_config(directory, _set("llm.hidden_size", "128"))

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the model was built")

    monkeypatch.setattr(UniPoseModel, "from_config", fail)
    with pytest.raises(ConfigError, match="llm.hidden_size = '128'"):
        load_model(directory)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["config"]["vocab"].__setitem__("codebook_size", 256), "parts disagree"),
    (lambda m: m["config"].pop("llm"), "missing fields ['llm']"),
    (lambda m: m["config"].__setitem__("colour", 1), "unknown fields ['colour']"),
    (lambda m: m.__setitem__("config", [1, 2]), "UniPoseConfig = [1, 2]"),
    (lambda m: m.__setitem__("is_random", "false"), "is_random = 'false'"),
    (lambda m: m.__setitem__("source", 3), "source = 3"),
    (lambda m: m.__setitem__("format_version", "1"), "format_version '1'"),
], ids=["cross-part", "missing-part", "unknown-top", "config-not-object", "is_random-str", "source-int",
        "version-str"])
def test_model_metadata_is_refused_naming_the_file(tmp_path: Path, sdk_dir: Path, edit, expected: str) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(sdk_dir / "config.json", directory / "config.json")
    path = _edit_config(directory, edit)
    with pytest.raises(CheckpointError) as info:
        read_config(directory)
    assert expected in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000, b"[1, 2]", b""],
                         ids=["syntax", "not-utf8", "deep-nesting", "list", "empty"])
def test_unparseable_model_config(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_metadata(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


# ------------------------------------------------------------------------------------------------ SDK weights


def _rewrite_weights(directory: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def _poison(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value

    return change


def _to_int(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].round().to(torch.int32)

    return change


BAD_WEIGHTS = [
    ("llm.model.layers.1.mlp.up_proj.weight", _poison("llm.model.layers.1.mlp.up_proj.weight", float("nan")),
     "NaN or infinite values"),
    ("vision.projector.0.bias", _poison("vision.projector.0.bias", float("inf")), "NaN or infinite values"),
    ("pose_tokenizer.quantizer.codebook", _poison("pose_tokenizer.quantizer.codebook", float("-inf")),
     "NaN or infinite values"),
    ("llm.model.embed_tokens.weight", _to_int("llm.model.embed_tokens.weight"), "(int32, model float32)"),
    ("pose_tokenizer.quantizer.codebook", _to_int("pose_tokenizer.quantizer.codebook"), "(int32, model float32)"),
]


@pytest.mark.parametrize(("tensor", "change", "expected"), BAD_WEIGHTS,
                         ids=[f"{t}-{e.split()[0]}" for t, _, e in BAD_WEIGHTS])
def test_bad_weights_are_refused_naming_the_tensor(tmp_path: Path, sdk_dir: Path, tensor: str, change,
                                                   expected: str) -> None:
    directory = _copy(sdk_dir, tmp_path)
    _rewrite_weights(directory, change)
    with pytest.raises(CheckpointError) as info:
        load_model(directory)
    assert tensor in str(info.value) and expected in str(info.value)
    assert str(directory / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "zeroed-header", "empty", "huge-header-length"])
def test_damaged_safetensors_is_refused(tmp_path: Path, sdk_dir: Path, damage: str) -> None:
    directory = _copy(sdk_dir, tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zeroed-header": b"\x00" * 64 + data[64:],
                      "empty": b"", "huge-header-length": (2**62).to_bytes(8, "little") + data[8:]}[damage])
    with pytest.raises(CheckpointError, match="safetensors cannot read") as info:
        load_model(directory)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------ pose tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_pose_tokenizer(random_tiny_tokenizer(seed=2), tmp_path_factory.mktemp("tok") / "pose_tokenizer")


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("width", "128", "config.width = '128' (str)"),
    ("codebook_size", True, "config.codebook_size = True (bool)"),
    ("code_dim", 0, "config.code_dim = 0"),
    ("num_tokens", -80, "config.num_tokens = -80"),
    ("ema_decay", float("nan"), "config.ema_decay = nan"),
])
def test_tokenizer_config_field_is_refused(tmp_path: Path, tokenizer_dir: Path, field: str, value: Any,
                                           expected: str) -> None:
    directory = _copy(tokenizer_dir, tmp_path)
    path = _edit_config(directory, _set(field, value))
    with pytest.raises(ConfigError) as info:
        load_pose_tokenizer(directory)
    assert expected in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("config_json", [json.dumps([1]), json.dumps({"format": "unipose-sdk/pose-tokenizer"}),
                                         json.dumps({"format": "unipose-sdk/pose-tokenizer", "config": "x"})],
                         ids=["list", "no-config", "config-str"])
def test_tokenizer_config_shape_is_refused(tmp_path: Path, tokenizer_dir: Path, config_json: str) -> None:
    directory = _copy(tokenizer_dir, tmp_path)
    (directory / "config.json").write_text(config_json)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(directory)
    assert str(directory / "config.json") in str(info.value)


@pytest.mark.parametrize(("change", "expected"), [
    (_poison("quantizer.codebook", float("nan")), "NaN or infinite values in 1 tensors: quantizer.codebook"),
    (_to_int("encoder.encoder.0.weight"), "encoder.encoder.0.weight (int32, model float32)"),
], ids=["nan", "int"])
def test_tokenizer_bad_weights(tmp_path: Path, tokenizer_dir: Path, change, expected: str) -> None:
    directory = _copy(tokenizer_dir, tmp_path)
    _rewrite_weights(directory, change)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(directory)
    assert expected in str(info.value)


@pytest.mark.parametrize(("change", "expected"), [
    (_poison("decoder.decoder.0.weight", float("nan")), "NaN or infinite values in 1 tensors: decoder.decoder.0."),
    (_to_int("quantizer.codebook"), "quantizer.codebook (int32, model float32)"),
], ids=["nan", "int"])
def test_official_tokenizer_bad_weights(tmp_path: Path, change, expected: str) -> None:
    state = dict(random_tiny_tokenizer(seed=2).state_dict())
    change(state)
    path = tmp_path / "best_MPJPE.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(path)
    assert expected in str(info.value) and str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------ torch files


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "zip-without-data"])
def test_damaged_torch_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "non_lora_trainables.bin"
    torch.save({"w": torch.randn(32, 32)}, path)
    data = path.read_bytes()
    if damage == "zip-without-data":
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/other.txt", "hello")
    else:
        path.write_bytes({"truncated": data[: len(data) // 3], "empty": b"", "text": b"hello world\n"}[damage])
    with pytest.raises(CheckpointError) as info:
        torch_load_tensors(path, "UniPose's non-LoRA trainables")
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------ release JSON files


@pytest.mark.parametrize(("index", "expected"), [
    (b"{broken", "not readable JSON"),
    (b"[]", "holding a JSON list"),
    (json.dumps({"weight_map": ["a"]}).encode(), "'weight_map' is"),
    (json.dumps({"weight_map": {"w": "../../etc/passwd"}}).encode(), "'weight_map' is"),
    (json.dumps({"metadata": {}}).encode(), "'weight_map' is"),
], ids=["syntax", "list", "map-list", "shard-outside", "no-map"])
def test_shard_index_is_checked(tmp_path: Path, index: bytes, expected: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(CheckpointError, match=expected) as info:
        read_hf_weights(tmp_path, "LLaVA base")
    assert str(tmp_path / "model.safetensors.index.json") in str(info.value)


def test_hf_config_json_is_checked(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"hidden_size": 40')
    with pytest.raises(CheckpointError, match="not readable JSON") as info:
        read_json(tmp_path / "config.json", "a Hugging Face model config")
    assert str(tmp_path / "config.json") in str(info.value)


GOOD_ADAPTER = {"peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "bias": "none", "target_modules": ["q_proj"]}


@pytest.mark.parametrize(("change", "expected"), [
    ({"r": "4"}, "r = '4' (str)"), ({"r": True}, "r = True (bool)"), ({"r": 0}, "r = 0"),
    ({"lora_alpha": float("nan")}, "lora_alpha = nan"), ({"lora_alpha": "8"}, "lora_alpha = '8'"),
    ({"target_modules": 3}, "target_modules = 3"), ({"rank_pattern": {"q_proj": -1}}, "rank_pattern"),
    ({"use_rslora": "yes"}, "use_rslora = 'yes'"),
])
def test_adapter_config_types(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    config = copy.deepcopy(GOOD_ADAPTER)
    config.update(change)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        read_adapter_config(tmp_path)
    assert expected in str(info.value) and str(tmp_path / "adapter_config.json") in str(info.value)


@pytest.mark.parametrize("content", [b"[1]", b"\xff\xff", b"{"], ids=["list", "not-utf8", "syntax"])
def test_adapter_config_unparseable(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "adapter_config.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_adapter_config(tmp_path)
    assert str(tmp_path / "adapter_config.json") in str(info.value)


def test_good_configs_still_load(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(GOOD_ADAPTER))
    assert read_adapter_config(tmp_path).scale_for("model.layers.0.self_attn.q_proj") == 2.0
    for name in ("unipose-tiny", "unipose-7b"):
        config = get_preset(name)
        assert UniPoseConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(("key", "tensor"), [
    ("encoder.encoder.0.weight", torch.zeros(())), ("quantizer.codebook", torch.zeros(512)),
    ("quantizer.codebook", torch.zeros(0, 64)), ("encoder.encoder.0.weight", torch.zeros(0, 6, 3)),
], ids=["scalar-conv", "1d-codebook", "empty-codebook", "empty-conv"])
def test_official_tokenizer_odd_shapes_are_named(tmp_path: Path, key: str, tensor: torch.Tensor) -> None:
    state = {**random_tiny_tokenizer(seed=2).state_dict(), key: tensor}
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_pose_tokenizer(path)
    assert key in str(info.value) and str(path) in str(info.value)
