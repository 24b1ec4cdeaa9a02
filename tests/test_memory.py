"""The memory planner: component counts against the meta-device model, the storage layouts against the quantizer's
own byte counts, the KV cache arithmetic, device fits, and `unipose info --memory`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unipose_sdk import memory
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel


@pytest.mark.parametrize("name", ["unipose-7b", "unipose-tiny"])
def test_components_add_up_to_the_meta_device_parameter_count(name: str) -> None:
    model = UniPoseModel.from_config(get_preset(name), device="meta")
    plan = memory.plan_memory(name, "float", "float16")
    assert plan.parameters == sum(p.numel() for p in model.parameters())
    by_name = {c.name: c for c in plan.components}
    llm = sum(c.parameters for label, c in by_name.items() if label.startswith("llm"))
    assert llm == sum(p.numel() for p in model.llm.parameters())
    assert by_name["vision pose_vit"].parameters == sum(p.numel() for p in model.vision.pose_vit.parameters())
    # float16: two bytes per parameter, the pose tokenizer four.
    pose = by_name["pose tokenizer (float32)"]
    assert plan.weights_bytes == 2 * (plan.parameters - pose.parameters) + 4 * pose.parameters


def test_the_7b_numbers() -> None:
    plan = memory.plan_memory("unipose-7b", "float", "bfloat16")
    by_name = {c.name: c.parameters for c in plan.components}
    assert by_name["llm embedding table"] + by_name["llm decoder layers"] + by_name["llm final norm + lm head"] \
        == 7_259_197_440
    assert by_name["vision clip"] == 303_507_456 and by_name["vision pose_vit"] == 630_912_000
    assert plan.parameters == 8_232_188_678
    assert plan.weights_bytes / memory.GB == pytest.approx(16.49, abs=0.01)
    # KV cache: 2 (k, v) x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token; 720 tokens = 94.4 MB.
    assert plan.kv_bytes_per_token == 128 * 1024
    image = next(v for k, v in plan.prompts.items() if k.startswith("image prompt"))
    assert image["tokens"] == 720 and image["kv_mb"] == pytest.approx(720 * 131072 / 1e6)


def test_quantized_weights_shrink_and_the_pose_tokenizer_stays_float32() -> None:
    sizes = {p: memory.plan_memory("unipose-7b", p, "float16") for p in ("float", "int8", "int4", "mixed")}
    gb = {p: plan.weights_bytes / memory.GB for p, plan in sizes.items()}
    assert gb["int4"] < gb["mixed"] < gb["int8"] < gb["float"] / 1.9
    assert gb["int4"] < gb["float"] / 3.5
    for plan in sizes.values():
        pose = next(c for c in plan.components if c.name.startswith("pose tokenizer"))
        assert pose.bytes == 4 * pose.parameters and pose.scheme == "float"
    decoder = next(c for c in sizes["int4"].components if c.name == "llm decoder layers")
    # 4-bit blocks of 128 with one float16 scale each: 0.5 + 2 / 128 bytes per weight, norms in float16.
    layer_norms = 32 * 2 * 4096
    assert decoder.bytes == (decoder.parameters - layer_norms) * (0.5 + 2 / 128) + 2 * layer_norms


@pytest.mark.parametrize("scheme", ["int4-nbits", "int8-dynamic", "qdq-int8"])
@pytest.mark.parametrize("k", [256, 200])
def test_linear_layouts_match_the_quantizer_byte_for_byte(scheme: str, k: int) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from unipose_sdk.export import quantize as Q

    n = 24
    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph)
    info = Q.quantize_model(model, scheme, "int4" if scheme == "int4-nbits" else "int8")
    assert memory.linear_bytes(k, n, scheme, 4) == info.quantized_bytes
    assert sum(len(t.raw_data) for t in model.graph.initializer) == info.quantized_bytes


@pytest.mark.parametrize("scheme", ["int4-gather", "int8-gather"])
def test_table_layouts_match_the_quantizer_byte_for_byte(scheme: str) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from unipose_sdk.export import quantize as Q

    table = np.random.default_rng(0).standard_normal((30, 256)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["T", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])],
                              [numpy_helper.from_array(table, "T")])
    info = Q.quantize_model(helper.make_model(graph), scheme, "int4" if scheme == "int4-gather" else "int8")
    assert memory.table_bytes(30, 256, scheme, 4) == info.quantized_bytes
    assert memory.table_bytes(30, 200, scheme, 4) == 30 * 200 * 4  # not whole blocks: left float


def test_device_fits_follow_the_arithmetic() -> None:
    int4 = memory.plan_memory("unipose-7b", "int4", "float16")
    fl = memory.plan_memory("unipose-7b", "float", "float16")
    nano = {d["device"]: d for d in int4.devices}["Jetson Orin Nano 8GB"]
    image_kv_gb = 720 * int4.kv_bytes_per_token / 1e9
    assert nano["needed_gb"] == pytest.approx(int4.weights_bytes / 1e9 + int4.overhead_gb + image_kv_gb)
    assert nano["fits"] is (nano["needed_gb"] <= 5.2)
    fits_float = {d["device"]: d["fits"] for d in fl.devices}
    assert not fits_float["Jetson Orin NX 16GB"] and fits_float["Jetson AGX Orin 32GB"]
    assert fits_float["24 GB desktop GPU"] and fits_float["80 GB data-centre GPU"]
    for d in int4.devices:
        if d["fits"]:
            spare = d["usable_gb"] - int4.weights_bytes / 1e9 - int4.overhead_gb
            assert d["image_prompts_in_cache"] == int(spare // image_kv_gb)
    # Twice the batch: twice the cache per prompt set and more activations.
    double = memory.plan_memory("unipose-7b", "int4", "float16", batch=2)
    assert double.overhead_gb > int4.overhead_gb
    assert all(double.prompts[k]["kv_mb"] == pytest.approx(2 * int4.prompts[k]["kv_mb"]) for k in int4.prompts)


def test_bad_inputs_are_typed_errors() -> None:
    with pytest.raises(InvalidInputError, match=r"precision='int2'.*expected one of"):
        memory.plan_memory("unipose-7b", "int2")
    with pytest.raises(InvalidInputError, match=r"--model 'nope'.*Pass --model unipose-7b"):
        memory.plan_memory("nope", "int4")
    with pytest.raises(InvalidInputError, match="dtype"):
        memory.plan_memory("unipose-7b", "int4", "float8")
    with pytest.raises(InvalidInputError, match="batch"):
        memory.plan_memory("unipose-7b", "int4", batch=0)


def test_cli_prints_the_plan_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.cli import main

    assert main(["info", "--memory", "--model", "unipose-7b", "--precision", "mixed"]) == 0
    text = capsys.readouterr().out
    assert "KV cache: 128 KiB per token" in text and "Jetson Orin Nano 8GB" in text and "assumed:" in text
    assert main(["info", "--memory", "--model", "unipose-tiny", "--precision", "int4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["precision"] == "int4" and data["model"] == "unipose-tiny" and len(data["devices"]) == 7
    assert main(["info", "--memory", "--precision", "int3"]) == 2
    assert "received precision='int3'" in capsys.readouterr().err
    assert main(["info", "--precision", "int4"]) == 2
    assert "without --memory" in capsys.readouterr().err
