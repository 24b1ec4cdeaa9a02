"""Weights formats: the official release (synthesised here with the official key names from the tiny config),
merged HF directories, the SDK format; strict error listings; LoRA merge arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unipose_sdk.checkpoint.lora import LoraConfig, merge_lora, peft_adapter_state
from unipose_sdk.checkpoint.official import OfficialPaths, load_official
from unipose_sdk.checkpoint.sdk_format import load_model, read_config, save_model
from unipose_sdk.cli import main as cli_main
from unipose_sdk.errors import CheckpointError, ModelNotFoundError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.tokenizer import build_tiny_tokenizer

CORPUS = ["The person kneels with both arms raised.", "A man sits on the floor, legs crossed."] * 10
R, ALPHA = 4, 8.0  # LoRA rank and alpha of the synthesised adapter: scale 2.0
LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def config():
    return get_preset("unipose-tiny")


@pytest.fixture(scope="module")
def truth(config) -> UniPoseModel:
    """The model the synthesised release must load into (random weights, non-zero everywhere)."""
    torch.manual_seed(0)
    model = UniPoseModel.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        model.pose_tokenizer.quantizer.codebook.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(config):
    return build_tiny_tokenizer(CORPUS, config.vocab.text_vocab_size)


def _sub(state, prefix, new_prefix=""):
    return {new_prefix + k[len(prefix):]: v.clone() for k, v in state.items() if k.startswith(prefix)}


def _write_release(root: Path, truth: UniPoseModel, tokenizer, *, base_has_tower=True, adapter_format="safetensors"):
    """Write the five downloaded pieces with the official key names; returns (paths, lora pairs)."""
    config = truth.config
    sd = {k: v.detach().clone() for k, v in truth.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    # LoRA over every linear layer of the LLM: base weight = truth - scale * B @ A, so merging restores truth.
    pairs, base_llm = {}, _sub(sd, "llm.")
    for i in range(config.llm.num_hidden_layers):
        for name in LINEAR:
            module = f"model.layers.{i}.{name}"
            w = base_llm[module + ".weight"]
            a = torch.randn(R, w.shape[1], generator=gen) * 0.1
            b = torch.randn(w.shape[0], R, generator=gen) * 0.1
            pairs[module] = (a, b)
            base_llm[module + ".weight"] = w - (ALPHA / R) * (b @ a)
    text_rows = config.vocab.text_vocab_size
    # (a) LLaVA base: 32000-style vocabulary (only the text rows), its own 1024-wide projector, image_newline.
    base = root / "llava-v1.6-mistral-7b"
    base.mkdir()
    base_state = {k: v for k, v in base_llm.items()}
    base_state["model.embed_tokens.weight"] = base_llm["model.embed_tokens.weight"][:text_rows].clone()
    base_state["lm_head.weight"] = base_llm["lm_head.weight"][:text_rows].clone()
    clip_hidden, llm_hidden = config.clip.hidden_size, config.llm.hidden_size
    base_state.update({"model.mm_projector.0.weight": torch.randn(llm_hidden, clip_hidden),
                       "model.mm_projector.0.bias": torch.randn(llm_hidden),
                       "model.mm_projector.2.weight": torch.randn(llm_hidden, llm_hidden),
                       "model.mm_projector.2.bias": torch.randn(llm_hidden),
                       "model.image_newline": torch.randn(llm_hidden)})
    if base_has_tower:
        base_state.update(_sub(sd, "vision.clip.", "model.vision_tower.vision_tower."))
    keys = sorted(base_state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: base_state[k].contiguous() for k in shard_keys}, str(base / name))
    (base / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    (base / "config.json").write_text(json.dumps({"hidden_size": llm_hidden, "mm_hidden_size": clip_hidden,
                                                  "num_hidden_layers": config.llm.num_hidden_layers}))
    # (b) UniPose directory: tokenizer, adapter, non-LoRA trainables with the PEFT prefix.
    unipose = root / "unipose"
    tokenizer.save(unipose)
    (unipose / "config.json").write_text(json.dumps({"hidden_size": llm_hidden,
                                                     "mm_hidden_size": config.projector.input_size}))
    (unipose / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "bias": "none", "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "task_type": "CAUSAL_LM"}))
    adapter = peft_adapter_state(pairs)
    if adapter_format == "safetensors":
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(unipose / "adapter_model.safetensors"))
    else:
        torch.save(adapter, unipose / "adapter_model.bin")
    non_lora = {"base_model.model.model.embed_tokens.weight": base_llm["model.embed_tokens.weight"],
                "base_model.model.lm_head.weight": base_llm["lm_head.weight"]}
    non_lora.update(_sub(sd, "vision.projector.", "base_model.model.model.mm_projector."))
    torch.save(non_lora, unipose / "non_lora_trainables.bin")
    # (c) CLIP directory: a DIFFERENT full CLIPModel (the base's fine-tuned tower must win when it has one).
    clip = root / "clip-vit-large-patch14-336"
    clip.mkdir()
    clip_state = {k: v + 1.0 for k, v in _sub(sd, "vision.clip.").items()}
    clip_state.update({"vision_model.embeddings.position_ids": torch.arange(65)[None],
                       "text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
                       "visual_projection.weight": torch.randn(8, clip_hidden), "logit_scale": torch.tensor(2.0)})
    save_file(clip_state, str(clip / "model.safetensors"))
    # (d) TokenHMR: backbone.* plus heads that are not used.
    tokenhmr = root / "tokenhmr_model.ckpt"
    torch.save({"state_dict": {**_sub(sd, "vision.pose_vit.", "backbone."),
                               "smpl_head.decpose.weight": torch.randn(3, 3)}, "epoch": 3}, tokenhmr)
    # (e) pose VQ-VAE Lightning checkpoint (with a training-only loss key).
    vqvae = root / "best_MPJPE.ckpt"
    torch.save({"state_dict": {**_sub(sd, "pose_tokenizer."), "loss.vertex_weights": torch.ones(4)},
                "global_step": 10}, vqvae)
    paths = OfficialPaths(base=base, unipose=unipose, clip=clip, tokenhmr=tokenhmr, pose_vqvae=vqvae)
    return paths, pairs


def _assert_same(model: UniPoseModel, truth: UniPoseModel, atol: float = 0.0) -> None:
    got, want = model.state_dict(), truth.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), atol=atol, rtol=0, msg=k)


def test_official_release_round_trip(tmp_path, truth, tokenizer) -> None:
    paths, pairs = _write_release(tmp_path, truth, tokenizer)
    loaded = load_official(paths, truth.config, dtype=torch.float32)
    _assert_same(loaded.model, truth, atol=1e-6)  # LoRA-merged weights differ by float rounding only
    assert loaded.tokenizer.token_to_id("<pose_query_0>") == truth.config.vocab.pose_query_offset
    # The merge is exactly W + (alpha / r) * B @ A on the base weight.
    import safetensors.torch as st
    base = {}
    for shard in sorted(paths.base.glob("*.safetensors")):
        base.update(st.load_file(str(shard)))
    a, b = pairs["model.layers.1.mlp.down_proj"]
    expected = base["model.layers.1.mlp.down_proj.weight"] + (ALPHA / R) * (b @ a)
    torch.testing.assert_close(loaded.model.llm.model.layers[1].mlp.down_proj.weight, expected, atol=0, rtol=0)
    # Quantizer statistics (non-persistent) are materialised, not left on the meta device.
    assert not any(t.is_meta for t in loaded.model.state_dict().values())
    assert not any(b.is_meta for b in loaded.model.buffers())


def test_clip_directory_fills_a_base_without_tower(tmp_path, truth, tokenizer) -> None:
    paths, _ = _write_release(tmp_path, truth, tokenizer, base_has_tower=False, adapter_format="bin")
    loaded = load_official(paths, truth.config, dtype=torch.float32)
    got = loaded.model.vision.clip.state_dict()
    for k, v in truth.vision.clip.state_dict().items():
        torch.testing.assert_close(got[k], v + 1.0)  # the CLIP directory's (shifted) tower


def test_official_to_sdk_and_back_via_cli(tmp_path, truth, tokenizer) -> None:
    paths, _ = _write_release(tmp_path, truth, tokenizer)
    out = tmp_path / "converted"
    code = cli_main(["convert", "--base", str(paths.base), "--unipose", str(paths.unipose), "--clip",
                     str(paths.clip), "--tokenhmr", str(paths.tokenhmr), "--pose-vqvae", str(paths.pose_vqvae),
                     "--preset", "unipose-tiny", "--dtype", "float32", "-o", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    loaded = load_model(out)
    _assert_same(loaded.model, truth, atol=1e-6)
    assert read_config(out) == truth.config
    assert loaded.tokenizer.encode("the man sits") == tokenizer.encode("the man sits")
    # Refuses to overwrite without --overwrite.
    assert cli_main(["convert", "--merged", str(out), "-o", str(out), "--preset", "unipose-tiny"]) == 2


def test_merged_directory(tmp_path, truth, tokenizer) -> None:
    merged = tmp_path / "merged"
    tokenizer.save(merged)
    sd = truth.state_dict()
    llava = {**_sub(sd, "llm."), **_sub(sd, "vision.projector.", "model.mm_projector."),
             **_sub(sd, "vision.clip.", "model.vision_tower.vision_tower."),
             **_sub(sd, "vision.pose_vit.", "model.hmr_vit_backbone.")}
    save_file({k: v.contiguous() for k, v in llava.items()}, str(merged / "model.safetensors"))
    vqvae = tmp_path / "vq.ckpt"
    torch.save({"state_dict": _sub(sd, "pose_tokenizer.")}, vqvae)
    with pytest.raises(CheckpointError, match="the pose tokenizer: --pose-vqvae"):
        load_official(OfficialPaths(merged=merged), truth.config)
    loaded = load_official(OfficialPaths(merged=merged, pose_vqvae=vqvae), truth.config)
    _assert_same(loaded.model, truth)


def test_sdk_format_round_trip_with_dtype(tmp_path, truth, tokenizer) -> None:
    save_model(truth, tmp_path / "m", tokenizer, dtype=torch.bfloat16)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format"] == "unipose-sdk/model" and meta["format_version"] == 1 and meta["dtype"] == "bfloat16"
    loaded = load_model(tmp_path / "m")
    assert loaded.model.llm.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.pose_tokenizer.quantizer.codebook.dtype == torch.float32
    for k, v in truth.state_dict().items():
        want = v if k.startswith("pose_tokenizer.") or not v.is_floating_point() else v.to(torch.bfloat16)
        assert torch.equal(loaded.model.state_dict()[k], want), k
    with pytest.raises(CheckpointError, match="already exists"):
        save_model(truth, tmp_path / "m", tokenizer)
    save_model(truth, tmp_path / "m", tokenizer, overwrite=True)
    assert load_model(tmp_path / "m").model.llm.lm_head.weight.dtype == torch.float32


def test_sdk_format_errors(tmp_path, truth, tokenizer) -> None:
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "absent")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llava_mistral"}))
    with pytest.raises(CheckpointError, match="unipose convert"):
        load_model(tmp_path / "hf")
    save_model(truth, tmp_path / "m", tokenizer)
    state = {k: v for k, v in truth.state_dict().items() if k != "llm.model.norm.weight"}
    state["llm.model.extra.weight"] = torch.zeros(2)
    state["vision.projector.0.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "m")
    message = str(info.value)
    assert "1 missing keys: llm.model.norm.weight" in message
    assert "1 unexpected keys: llm.model.extra.weight" in message
    assert "vision.projector.0.bias (checkpoint (3,) vs model (256,))" in message


def test_release_error_listings(tmp_path, truth, tokenizer) -> None:
    paths, _ = _write_release(tmp_path, truth, tokenizer)
    cfg = truth.config
    # Missing files are listed together, before anything is read.
    (paths.unipose / "non_lora_trainables.bin").rename(tmp_path / "moved.bin")
    with pytest.raises(ModelNotFoundError) as info:
        load_official(OfficialPaths(base=paths.base, unipose=paths.unipose, tokenhmr=tmp_path / "nope.ckpt"), cfg)
    assert "non_lora_trainables.bin (missing)" in str(info.value) and "nope.ckpt (does not exist)" in str(info.value)
    (tmp_path / "moved.bin").rename(paths.unipose / "non_lora_trainables.bin")
    # Missing parts name the flag that supplies them.
    with pytest.raises(CheckpointError) as info:
        load_official(OfficialPaths(base=paths.base, unipose=paths.unipose), cfg)
    assert "of the Pose-ViT: --tokenhmr (e.g. vision.pose_vit." in str(info.value)
    assert "of the pose tokenizer: --pose-vqvae" in str(info.value) and "--clip" not in str(info.value)
    # A key that maps nowhere.
    torch.save({"state_dict": {"backbone.pos_embed": torch.zeros(1)}, "extra": 1}, tmp_path / "bad_vq.ckpt")
    with pytest.raises(CheckpointError, match="map to no part"):
        torch.save({"model.unknown_block.weight": torch.zeros(2)}, tmp_path / "x.bin")
        from unipose_sdk.checkpoint.official import LLAVA_KEYS, remap
        remap(torch.load(tmp_path / "x.bin"), LLAVA_KEYS, "x.bin")
    # A wrong shape names the file it came from.
    with pytest.raises(CheckpointError) as info:
        load_official(OfficialPaths(base=paths.base, unipose=paths.unipose, tokenhmr=tmp_path / "bad_vq.ckpt",
                                    pose_vqvae=paths.pose_vqvae), cfg)
    assert "vision.pose_vit.pos_embed (1,) vs model" in str(info.value) and "bad_vq.ckpt" in str(info.value)
    # A missing shard.
    next(paths.base.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="missing shard files: model-00002-of-00002.safetensors"):
        load_official(paths, cfg)


def test_non_lora_without_embeddings_is_refused(tmp_path, truth, tokenizer) -> None:
    paths, _ = _write_release(tmp_path, truth, tokenizer)
    non_lora = torch.load(paths.unipose / "non_lora_trainables.bin")
    del non_lora["base_model.model.model.embed_tokens.weight"]
    torch.save(non_lora, paths.unipose / "non_lora_trainables.bin")
    with pytest.raises(CheckpointError, match="llm.model.embed_tokens.weight"):
        load_official(paths, truth.config)


def test_shifted_tokenizer_in_release_is_refused(tmp_path, truth, tokenizer) -> None:
    from unipose_sdk.errors import VocabularyError

    paths, _ = _write_release(tmp_path, truth, tokenizer)
    data = json.loads((paths.unipose / "tokenizer.json").read_text())
    # `tokenizers` numbers added tokens in file order after the model vocabulary, so one stray token in front
    # of UniPose's shifts every pose id by one.
    first = next(i for i, t in enumerate(data["added_tokens"]) if t["content"] == "<pose_id_0>")
    data["added_tokens"].insert(first, {**data["added_tokens"][first], "content": "<stray>"})
    (paths.unipose / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(VocabularyError):
        load_official(paths, truth.config)


def test_lora_merge_arithmetic_and_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen)
    a, b = torch.randn(2, 5, generator=gen), torch.randn(6, 2, generator=gen)
    weights = {"x.weight": w.clone()}
    cfg = LoraConfig(r=2, lora_alpha=3.0)
    assert merge_lora(weights, {"m": (a, b)}, cfg, lambda m: "x.weight", "t") == ["x.weight"]
    torch.testing.assert_close(weights["x.weight"], w + 1.5 * (b @ a), atol=0, rtol=0)
    rs = LoraConfig(r=4, lora_alpha=8.0, use_rslora=True, alpha_pattern={"q_proj": 2.0})
    assert rs.scale_for("model.layers.0.self_attn.k_proj") == 4.0  # 8 / sqrt(4)
    assert rs.scale_for("model.layers.0.self_attn.q_proj") == 1.0  # 2 / sqrt(4)
    with pytest.raises(CheckpointError, match="map to no weight"):
        merge_lora({"x.weight": w}, {"m": (a, b)}, cfg, lambda m: None, "t")
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        merge_lora({"x.weight": w.T.contiguous()}, {"m": (a, b)}, cfg, lambda m: "x.weight", "t")


def test_pose_decoding_is_part_of_the_config() -> None:
    import dataclasses

    from unipose_sdk.models.config import UniPoseConfig

    tiny, big = get_preset("unipose-tiny"), get_preset("unipose-7b")
    assert (tiny.pose_decoding, big.pose_decoding) == ("expected_code", "argmax")  # 7B: the official decoding
    assert UniPoseConfig.from_dict(tiny.to_dict()) == tiny
    written_before = tiny.to_dict()
    del written_before["pose_decoding"]
    assert UniPoseConfig.from_dict(written_before).pose_decoding == "argmax"
    with pytest.raises(ValueError, match="pose_decoding='soft'.*expected one of"):
        dataclasses.replace(tiny, pose_decoding="soft")
    # The Generator's code temperature travels with the config; configs written before it decode at 1.
    warm = dataclasses.replace(tiny, text_to_pose_code_temperature=0.7)
    assert UniPoseConfig.from_dict(warm.to_dict()).text_to_pose_code_temperature == 0.7
    del written_before["text_to_pose_code_temperature"]
    assert UniPoseConfig.from_dict(written_before).text_to_pose_code_temperature == 1.0
    with pytest.raises(ValueError, match="text_to_pose_code_temperature=0.0: expected a number in"):
        dataclasses.replace(tiny, text_to_pose_code_temperature=0.0)
    # So does its guidance; configs written before it decode unguided.
    guided = dataclasses.replace(tiny, text_to_pose_guidance=2.0)
    assert UniPoseConfig.from_dict(guided.to_dict()).text_to_pose_guidance == 2.0
    del written_before["text_to_pose_guidance"]
    assert UniPoseConfig.from_dict(written_before).text_to_pose_guidance == 0.0
    with pytest.raises(ValueError, match="text_to_pose_guidance=-1.0: expected a number in"):
        dataclasses.replace(tiny, text_to_pose_guidance=-1.0)
