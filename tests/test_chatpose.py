"""ChatPose (PoseGPT) behind the SDK's classes: config family, the released layout's conversion, parity with the
official model on tiny random weights, the task classes and the CLI.

The "release" here is synthesised at tiny size with the official key names (`write_release`): a merged
LlavaLlama directory (sharded safetensors + index, config.json, tokenizer.json) holding `model.layers.*`,
`model.mm_projector.*`, `model.text_hidden_fcs.0.{0,2}.*`, `lm_head.*`, plus keys the merge also writes and the
SDK drops (rotary `inv_freq`, `model.smplx.*`), and a Hugging Face CLIP vision directory.

Parity: REFERENCE holds the official ChatPose classes' outputs (yfeng95/PoseGPT's ChatPoseForCausalLM on LLaVA's
LlavaLlamaForCausalLM, transformers 4.31, run outside this repository on the weights `chatpose_weights(0)` writes)
for the input `parity_inputs()`: logits at a few positions and the pose regressed before [SEG]. The SDK must give
the same numbers from the converted directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unipose_sdk import Describer, Editor, Estimator, Generator, example_image_path
from unipose_sdk.cli import main as cli_main
from unipose_sdk.errors import CheckpointError, ConfigError, InvalidOptionError, UnsupportedTaskError
from unipose_sdk.loading import load_torch_model
from unipose_sdk.models.config import UniPoseConfig, get_preset
from unipose_sdk.models.unipose import UniPoseModel, chatpose_rotmat, splice_image_embeds
from unipose_sdk.text.tokenizer import build_tiny_tokenizer

PRESET = "chatpose-tiny"
_CORPUS = ["A chat between a curious human and an artificial intelligence assistant.",
           "The assistant gives helpful, detailed, and polite answers to the human's questions.",
           "Can you predict the SMPL pose of the person in this image? There is a person: squatting with arms up.",
           "Please output this person's SMPL pose. Describe the pose of the person in this image."] * 8


# ---- the synthesised release ----------------------------------------------------------------------------------
def chatpose_weights(seed: int) -> dict[str, torch.Tensor]:
    """SDK-keyed chatpose-tiny weights from a seeded generator, key by key in sorted order (independent of how the
    model initialises itself): normal(0, 0.05) everywhere, norm and layer-norm weights 1 + normal(0, 0.1)."""
    config = get_preset(PRESET)
    shapes = {k: tuple(v.shape) for k, v in UniPoseModel.from_config(config, device="meta").state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key in sorted(shapes):
        values = torch.randn(shapes[key], generator=generator)
        is_norm_weight = key.endswith(".weight") and len(shapes[key]) == 1 and "norm" in key
        weights[key] = 1.0 + 0.1 * values if is_norm_weight else 0.05 * values
    return weights


def official_names(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SDK keys -> (merged directory keys, CLIP directory keys) as the release names them."""
    merged, clip = {}, {}
    for key, value in weights.items():
        if key.startswith("vision.clip."):
            clip[key.removeprefix("vision.clip.")] = value
        elif key.startswith("llm.pose_head."):
            merged["model.text_hidden_fcs.0." + key.removeprefix("llm.pose_head.")] = value
        elif key.startswith("vision.projector."):
            merged["model.mm_projector." + key.removeprefix("vision.projector.")] = value
        elif key.startswith("llm.model."):
            merged["model." + key.removeprefix("llm.model.")] = value
        else:
            assert key.startswith("llm.lm_head."), key
            merged[key.removeprefix("llm.")] = value
    return merged, clip


def write_release(root: Path, seed: int = 0, *, drop: str | None = None, extra: dict | None = None,
                  shard_format: str = "safetensors") -> tuple[Path, Path]:
    """The ChatPose release layout at tiny size under `root`: (merged directory, CLIP directory). `drop` removes
    the merged keys starting with it; `extra` adds merged keys (for the converter's error tests); shard_format
    "bin" writes the shards as transformers 4.31's save_pretrained does by default (pytorch_model-*.bin)."""
    config = get_preset(PRESET)
    merged_keys, clip_keys = official_names(chatpose_weights(seed))
    llm = config.llm
    # Keys the official merge writes that the SDK deliberately drops.
    for i in range(llm.num_hidden_layers):
        merged_keys[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(llm.head_dim // 2)
    merged_keys["model.smplx.v_template"] = torch.zeros(10, 3)
    if drop is not None:
        merged_keys = {k: v for k, v in merged_keys.items() if not k.startswith(drop)}
    merged_keys.update(extra or {})
    clip_keys["vision_model.embeddings.position_ids"] = torch.arange(config.clip.num_patches + 1).unsqueeze(0)

    clip_dir, merged_dir = root / "clip-vit-tiny", root / "CHATPOSE-TINY"
    clip_dir.mkdir(parents=True)
    merged_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in clip_keys.items()}, str(clip_dir / "model.safetensors"),
              metadata={"format": "pt"})  # as Hugging Face writes them
    c = config.clip
    (clip_dir / "config.json").write_text(json.dumps({
        "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "image_size": c.image_size, "patch_size": c.patch_size,
        "hidden_act": c.hidden_act, "layer_norm_eps": c.layer_norm_eps, "num_channels": 3, "projection_dim": 64,
        "torch_dtype": "float32"}))
    (clip_dir / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": c.image_size, "size": c.image_size, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": list(c.image_mean), "image_std": list(c.image_std), "resample": 3,
        "feature_extractor_type": "CLIPFeatureExtractor"}))

    names = sorted(merged_keys)
    stem, suffix = ("pytorch_model", "bin") if shard_format == "bin" else ("model", "safetensors")
    shards = {f"{stem}-00001-of-00002.{suffix}": names[: len(names) // 2],
              f"{stem}-00002-of-00002.{suffix}": names[len(names) // 2:]}
    for shard, keys in shards.items():
        tensors = {k: merged_keys[k].contiguous() for k in keys}
        if shard_format == "bin":
            torch.save(tensors, merged_dir / shard)
        else:
            save_file(tensors, str(merged_dir / shard), metadata={"format": "pt"})
    (merged_dir / f"{stem}.{suffix}.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    (merged_dir / "config.json").write_text(json.dumps({
        "architectures": ["ChatPoseForCausalLM"], "model_type": "llava", "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size, "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads, "num_key_value_heads": llm.num_key_value_heads,
        "vocab_size": llm.vocab_size, "rms_norm_eps": llm.rms_norm_eps, "hidden_act": "silu",
        "max_position_embeddings": llm.max_position_embeddings, "initializer_range": 0.02, "pretraining_tp": 1,
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "use_cache": True, "mm_vision_tower": str(clip_dir), "vision_tower": str(clip_dir),
        "mm_hidden_size": c.hidden_size,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": c.select_layer,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": True, "mm_use_im_patch_token": False,
        "pretrain_mm_mlp_adapter": None, "out_dim": llm.pose_head_outputs}))
    build_tiny_tokenizer(_CORPUS, config.vocab.text_vocab_size, layout=config.vocab).save(merged_dir)
    return merged_dir, clip_dir


# ---- the parity input and the official reference -----------------------------------------------------------------
def parity_inputs() -> tuple[list[int], int, torch.Tensor]:
    """(ids with ONE image placeholder id -200 as LLaVA's tokenizer_image_token writes it, the [SEG] id,
    CLIP pixels [1, 3, 112, 112]). The ids end with [SEG]: the pose is regressed at the position before it."""
    vocab = get_preset(PRESET).vocab
    text = [523, 87, 301, 999, 45, 612]
    ids = [vocab.bos_id, *text[:3], vocab.image_start_id, -200, vocab.image_end_id, *text[3:], vocab.pose_token_id]
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(7))
    return ids, vocab.pose_token_id, pixels


# Written from the official classes' outputs (see the module docstring). Positions index the sequence after the
# image's 64 embeddings replace its placeholder (7 ids before it, 63 more positions).
REFERENCE = {
    "logit_positions": [0, 6, 40, 72, 73], "logit_columns": [0, 1, 2, 1024, 1025, 1026],
    "logits": [
        [0.1149795, 0.0214842, 0.0711387, 0.7128915, 0.1289220, -0.1113771],
        [0.1996321, -0.3499268, 0.2987162, 0.1241437, 0.1842587, 0.1584304],
        [-0.5237970, -0.9474103, -0.2521978, 0.0078684, 1.2459785, 0.1483180],
        [0.8683998, -0.0285159, -0.9685828, -0.3880814, 0.0284875, -0.4198366],
        [0.3012905, 0.0172531, -0.7016764, -0.5712926, 0.1862186, 0.0242317],
    ],
    "argmax": [
        273, 739, 739, 739, 739, 178, 739, 918, 739, 4, 273, 739, 317, 247, 216, 748, 711, 273, 739, 589,
        405, 479, 969, 498, 59, 589, 856, 929, 943, 945, 731, 748, 260, 273, 178, 50, 303, 856, 9, 900,
        711, 699, 722, 565, 9, 589, 943, 589, 273, 943, 373, 273, 695, 498, 843, 943, 894, 59, 83, 565,
        589, 247, 763, 748, 578, 59, 589, 748, 900, 257, 843, 339, 565, 606,
    ],
    "rotmat_joints": [0, 1, 21],
    "rotmat": [
        [[-0.4555786, 0.7904875, -0.4093617], [-0.8217066, -0.1965435, 0.5349476], [0.3424124, 0.5800862, 0.7390898]],
        [[0.0667063, -0.048152, 0.9966099], [0.9910201, 0.1192056, -0.0605726], [-0.1158849, 0.9917012, 0.0556714]],
        [[0.5931576, 0.8021029, -0.0692456], [-0.1685051, 0.039583, -0.9849057], [-0.7872548, 0.5958725, 0.1586374]],
    ],
}


def sdk_outputs(model: UniPoseModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [T, V] over the whole expanded sequence, rotation matrices [22, 3, 3] regressed before [SEG])."""
    ids, seg, pixels = parity_inputs()
    image_at = ids.index(-200)
    tokens = model.config.image_tokens
    expanded = ids[:image_at] + [0] * tokens + ids[image_at + 1:]
    with torch.no_grad():
        embeds = model.llm.embed(torch.tensor([expanded]))
        embeds = splice_image_embeds(embeds, model.vision(pixels), [0], [image_at])
        out = model.llm(input_embeds=embeds, logits_positions=slice(None))
    before_seg = len(expanded) - 2
    return out.logits[0], chatpose_rotmat(out.pose[0, before_seg:before_seg + 1])[0]


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_release(tmp_path_factory.mktemp("chatpose-release"))


@pytest.fixture(scope="module")
def converted(release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    merged, clip = release
    out = tmp_path_factory.mktemp("chatpose-sdk") / "chatpose-tiny"
    code = cli_main(["convert", "--family", "chatpose", "--preset", PRESET, "--merged", str(merged),
                     "--clip", str(clip), "-o", str(out)])
    assert code == 0
    return out


# ---- config ------------------------------------------------------------------------------------------------------
def test_family_is_validated_and_round_trips() -> None:
    config = get_preset(PRESET)
    assert config.family == "chatpose" and config.vocab.family == "chatpose"
    assert UniPoseConfig.from_dict(config.to_dict()) == config
    assert UniPoseConfig.from_dict({k: v for k, v in get_preset("unipose-tiny").to_dict().items()
                                    if k != "family"}).family == "unipose"  # configs written before the field
    data = config.to_dict()
    with pytest.raises(ConfigError, match="family"):
        UniPoseConfig.from_dict({**data, "family": "posegpt"})
    with pytest.raises(ConfigError, match="family"):
        UniPoseConfig.from_dict({**data, "family": "unipose"})  # a chatpose vocabulary in a unipose config
    big = get_preset("chatpose-13b")
    assert (big.llm.hidden_size, big.llm.num_hidden_layers, big.llm.num_key_value_heads) == (5120, 40, 40)
    assert big.image_tokens == 576 and big.llm.vocab_size == 32003 and big.vocab.pose_token_id == 32000
    assert big.projector.input_size == big.clip.hidden_size == 1024


def test_hmr2_6d_convention() -> None:
    """ChatPose's 6D holds the first two columns: R @ e1 = normalise(a1), and R is a rotation."""
    params = torch.randn(3, 144, generator=torch.Generator().manual_seed(1))
    rotmat = chatpose_rotmat(params)
    assert rotmat.shape == (3, 22, 3, 3)
    a1 = params.view(3, 24, 6)[:, :22, :3]
    torch.testing.assert_close(rotmat[..., :, 0], a1 / a1.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(rotmat @ rotmat.transpose(-1, -2), torch.eye(3).expand(3, 22, 3, 3), atol=1e-5,
                               rtol=0)
    assert torch.allclose(torch.linalg.det(rotmat), torch.ones(3, 22), atol=1e-5)


# ---- conversion and parity ---------------------------------------------------------------------------------------
def test_converted_release_matches_the_official_model(converted: Path) -> None:
    loaded = load_torch_model(str(converted))
    assert loaded.config.family == "chatpose" and loaded.model.pose_tokenizer is None
    logits, rotmat = sdk_outputs(loaded.model)
    ref = REFERENCE
    got = logits[ref["logit_positions"]][:, ref["logit_columns"]]
    torch.testing.assert_close(got, torch.tensor(ref["logits"]), atol=2e-5, rtol=0)
    assert logits.argmax(-1).tolist() == ref["argmax"]
    torch.testing.assert_close(rotmat[ref["rotmat_joints"]], torch.tensor(ref["rotmat"]), atol=2e-5, rtol=0)


def test_bin_shards_convert_to_the_same_weights(converted: Path, tmp_path: Path) -> None:
    """The .bin shards (read by the restricted loader, nothing unpickled) give the safetensors shards' model."""
    from unipose_sdk.checkpoint.sdk_format import read_weights

    merged, clip = write_release(tmp_path, shard_format="bin")
    assert sorted(p.name for p in merged.glob("*.bin")) == ["pytorch_model-00001-of-00002.bin",
                                                              "pytorch_model-00002-of-00002.bin"]
    out = tmp_path / "sdk"
    assert cli_main(["convert", "--family", "chatpose", "--preset", PRESET, "--merged", str(merged), "--clip",
                     str(clip), "-o", str(out)]) == 0
    got, want = read_weights(out / "model.safetensors"), read_weights(converted / "model.safetensors")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_converter_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    merged, clip = write_release(tmp_path / "a", drop="model.text_hidden_fcs.")
    with pytest.raises(CheckpointError, match=r"4 missing keys: 4 of the pose head: --merged"):
        _convert(merged, clip, tmp_path / "out")
    merged, clip = write_release(tmp_path / "b", extra={"model.some_new_part.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="model.some_new_part.weight"):
        _convert(merged, clip, tmp_path / "out")
    merged, clip = write_release(tmp_path / "c", extra={"model.mm_projector.2.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match=r"vision.projector.2.bias \(7,\) vs model \(128,\)"):
        _convert(merged, clip, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_cli_refuses_unipose_pieces_and_the_wrong_preset(release: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    merged, clip = release
    base = ["convert", "--family", "chatpose", "--merged", str(merged), "--clip", str(clip), "-o", str(tmp_path / "o")]
    assert cli_main([*base, "--preset", "unipose-tiny"]) == 2
    assert "unipose preset" in capsys.readouterr().err
    assert cli_main([*base, "--preset", PRESET, "--tokenhmr", str(merged / "config.json")]) == 2
    assert "--tokenhmr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _convert(merged: Path, clip: Path, out: Path) -> None:
    from unipose_sdk.checkpoint.chatpose import load_chatpose_state

    load_chatpose_state(merged, clip, get_preset(PRESET))


# ---- the task classes --------------------------------------------------------------------------------------------
def test_tasks_on_a_chatpose_model(converted: Path) -> None:
    with Generator.from_pretrained(converted, max_new_tokens=6) as generator:
        single = generator.generate("a person squatting with both arms raised")
        batch = generator.generate(["a person squatting with both arms raised", "a person standing"])
    assert single.run.family == "chatpose" and single.to_dict()["run"]["family"] == "chatpose"
    # ChatPose regresses its pose: guidance of pose codes has nothing to act on and changes nothing.
    with Generator.from_pretrained(converted, max_new_tokens=6, pose_guidance=3.0) as guided:
        torch.testing.assert_close(guided.generate("a person squatting with both arms raised").pose.rotmat,
                                   single.pose.rotmat, atol=1e-6, rtol=0)
    assert single.text == "[POSE]" and single.pose.rotmat.shape == (1, 22, 3, 3) and single.pose_codes == []
    torch.testing.assert_close(batch[0].pose.rotmat, single.pose.rotmat, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0].pose.rotmat, batch[1].pose.rotmat)

    # The pose is the head's output before the forced [SEG], whether or not text follows it.
    with Generator.from_pretrained(converted, max_new_tokens=6, pose_only=False) as generator:
        chatty = generator.generate("a person squatting with both arms raised")
    assert chatty.text.startswith("[POSE]") and chatty.decode_steps > 0
    torch.testing.assert_close(chatty.pose.rotmat, single.pose.rotmat, atol=1e-5, rtol=0)

    image = example_image_path("person")
    estimated = Estimator.from_pretrained(converted).estimate(image)
    assert estimated.pose.rotmat.shape == (1, 22, 3, 3) and estimated.run.family == "chatpose"
    described = Describer.from_pretrained(converted, max_new_tokens=5).describe(image=image)
    assert isinstance(described.text, str) and described.decode_steps > 0


def test_chatpose_refuses_what_it_cannot_do(converted: Path) -> None:
    pose = Generator.from_pretrained(converted).generate("a person standing").pose
    with pytest.raises(UnsupportedTaskError, match="family 'unipose'"):
        Editor.from_pretrained(converted).edit(pose, "raise your left arm")
    describer = Describer.from_pretrained(converted)
    with pytest.raises(UnsupportedTaskError, match="UniPose"):
        describer.describe(pose=pose)
    with pytest.raises(UnsupportedTaskError, match="image_difference for a ChatPose model"):
        describer.describe(images=(example_image_path("person"), example_image_path("person")))
    with pytest.raises(InvalidOptionError):
        Describer.from_pretrained(converted, pose_only=True)


def test_pose_regressed_wherever_the_answer_holds_the_pose_token(converted: Path) -> None:
    """The generation hook finds every [SEG] of an answer and regresses the state one step before it, as the
    official model's full forward does."""
    from unipose_sdk.generation import pose_params_at_pose_tokens

    loaded = load_torch_model(str(converted))
    llm, seg = loaded.model.llm, loaded.config.vocab.pose_token_id
    prompt = llm.embed(torch.tensor([[1, 523, 87, 301]]))[0]
    answer = [45, seg, 612, 999, seg, 2]
    with torch.no_grad():
        params = pose_params_at_pose_tokens(llm, prompt, answer, seg)
        full = llm(torch.tensor([[1, 523, 87, 301, *answer]]), logits_positions=slice(None)).pose[0]
    assert params.shape == (2, 144)
    torch.testing.assert_close(params, full[[4, 7]], atol=1e-5, rtol=0)
    assert pose_params_at_pose_tokens(llm, prompt, [45, 2], seg).shape[0] == 0


def test_cli_tasks_on_a_chatpose_model(converted: Path, tmp_path: Path) -> None:
    assert cli_main(["generate", "a person squatting", "--model", str(converted), "-o", str(tmp_path / "g"),
                     "--quiet"]) == 0
    record = json.loads((tmp_path / "g" / "generate_000.json").read_text())
    assert record["run"]["family"] == "chatpose" and record["text"] == "[POSE]"
    assert np.load(tmp_path / "g" / "generate_000.npy").shape == (22, 3, 3)
    assert cli_main(["estimate", str(example_image_path("person")), "--model", str(converted), "-o",
                     str(tmp_path / "e"), "--quiet"]) == 0
    assert cli_main(["describe", "--image", str(example_image_path("person")), "--model", str(converted),
                     "--max-new-tokens", "4", "-o", str(tmp_path / "d"), "--quiet"]) == 0
    assert cli_main(["edit", str(tmp_path / "g" / "generate_000.npz"), "raise your arm", "--model",
                     str(converted), "-o", str(tmp_path / "x"), "--quiet"]) == 2


def test_bench_rows_for_chatpose_shapes() -> None:
    """`unipose bench --model chatpose-tiny`: random weights (said in the report), the tasks ChatPose can do."""
    from unipose_sdk.bench import bench

    result = bench(model=PRESET, tasks=("generate", "edit", "describe_image"), runs=1, warmup=0, max_new_tokens=3,
                   only=("ref-sdk-eager", "sdk-fast"), log=lambda line: None)
    assert "RANDOM weights" in result["weights"] and "latency only" in result["weights"]
    rows = {(r["task"], r["backend"]) for r in result["results"]}
    assert rows == {(t, b) for t in ("generate", "describe_image") for b in ("ref-sdk-eager", "sdk-fast")}
    assert all(r["same_output_as_first_reference"] for r in result["results"])
    assert "pose_head" in next(r for r in result["results"] if r["task"] == "generate")["stats"]


def test_chatpose_prompts(converted: Path) -> None:
    """llava_v1 conversation, <im_start> + N image slots + <im_end>, ChatPose's phrasings, [SEG] shown as [POSE]."""
    from unipose_sdk.text.prompts import CHATPOSE_SYSTEM, ChatPosePromptBuilder, Task

    loaded = load_torch_model(str(converted))
    vocab, tokens = loaded.config.vocab, loaded.config.image_tokens
    builder = ChatPosePromptBuilder(loaded.tokenizer, tokens, loaded.config.max_text_tokens)
    row = builder.build_task(Task.POSE_ESTIMATION)
    assert row.text.startswith(CHATPOSE_SYSTEM + " USER: <image>\n") and row.text.endswith(" ASSISTANT:")
    start = row.image_starts[0]
    assert row.input_ids[0] == vocab.bos_id and row.input_ids[start - 1] == vocab.image_start_id
    assert row.input_ids[start + tokens] == vocab.image_end_id and row.image_starts == [start]
    generate = builder.build_task(Task.TEXT_TO_POSE, caption="a person squatting.")
    assert "There is a person: a person squatting. Please output this person's SMPL pose." in generate.text
    assert generate.image_starts == [] and vocab.image_start_id not in generate.input_ids
    hello = loaded.tokenizer.encode("Sure, it is")
    assert builder.answer_text([*hello, vocab.pose_token_id, vocab.eos_id]) == "Sure, it is[POSE]"
    with pytest.raises(UnsupportedTaskError):
        builder.build("Describe <pose>.", poses=[[0] * 80])


def _pose_token_first(converted: Path, out: Path, user: str) -> Path:
    """A copy of `converted` whose lm_head makes `[SEG]` the first answer token of the open turn `user` (its row
    is the last prompt state scaled up), so a conversation's pose path runs on random weights."""
    from unipose_sdk.checkpoint.sdk_format import save_model
    from unipose_sdk.text.prompts import ChatPosePromptBuilder, ConversationTurn

    loaded = load_torch_model(str(converted))
    builder = ChatPosePromptBuilder(loaded.tokenizer, loaded.config.image_tokens, loaded.config.max_text_tokens)
    ids = builder.build_conversation([ConversationTurn(user)]).input_ids
    llm = loaded.model.llm
    with torch.no_grad():
        hidden = llm(torch.tensor([ids]), return_hidden=True).hidden[0, -1]
        llm.lm_head.weight[loaded.config.vocab.pose_token_id] = 50.0 * hidden / hidden.pow(2).sum()
    save_model(loaded.model, out, loaded.tokenizer, source="test: [SEG] first")
    return out


def test_assistant_on_a_chatpose_model(converted: Path, tmp_path: Path) -> None:
    """The Assistant runs ChatPose conversations: llava_v1 over several turns, a pose wherever the reply holds
    [SEG] (streamed when it is decoded, equal to the Generator's pose for the same prompt), the earlier answer
    written back with its [SEG], restore() giving the live prompt, and pose inputs refused naming UniPose."""
    from unipose_sdk import Assistant
    from unipose_sdk.tasks.assistant import PastTurn
    from unipose_sdk.text.prompts import CHATPOSE_SYSTEM, ChatPosePromptBuilder, ConversationTurn

    user = "There is a person: a person squatting. Please output this person's SMPL pose."
    model = _pose_token_first(converted, tmp_path / "seg-first", user)
    with Generator.from_pretrained(model) as generator:
        expected = generator.generate("a person squatting.").pose
    with Assistant.from_pretrained(model, max_new_tokens=4) as assistant:
        chunks = list(assistant.ask_stream(user))
        first = assistant.history[-1].reply
        assert first.run.family == "chatpose" and first.text.startswith("<pose>") and first.poses
        assert [c.pose for c in chunks if c.pose is not None] == first.poses  # each pose streamed as decoded
        assert first.poses[0].codes == [] and first.poses[0].pose.rotmat.shape == (1, 22, 3, 3)
        torch.testing.assert_close(first.poses[0].pose.rotmat, expected.rotmat, atol=1e-5, rtol=0)
        second = assistant.ask("Now describe it in one word.")
        with pytest.raises(UnsupportedTaskError, match="UniPose"):
            assistant.ask("Describe <pose>.", poses=[first.poses[0]])
    loaded = load_torch_model(str(model))
    vocab = loaded.config.vocab
    builder = ChatPosePromptBuilder(loaded.tokenizer, loaded.config.image_tokens, None)
    prompt = second.prompt_ids
    assert builder.build_conversation([ConversationTurn(user)]).input_ids == first.prompt_ids
    assert prompt[: len(first.prompt_ids)] == first.prompt_ids  # the first turn as it was
    answer = prompt[len(first.prompt_ids):]
    assert answer.count(vocab.pose_token_id) == first.text.count("<pose>") and vocab.eos_id in answer
    row = builder.build_conversation([ConversationTurn(user, answer=builder.answer_pieces(first.generated_ids)),
                                      ConversationTurn("Now describe it in one word.")])
    assert row.input_ids == prompt and row.text.startswith(CHATPOSE_SYSTEM + " USER: ")
    assert "</s>USER: Now describe it in one word. ASSISTANT:" in row.text
    with Assistant.from_pretrained(model, max_new_tokens=4) as restored:
        restored.restore([PastTurn.of(user, first)])
        again = restored.ask("Now describe it in one word.")
    assert again.prompt_ids == prompt and again.text == second.text
    with pytest.raises(UnsupportedTaskError, match="one image per chat|at most one <image>"):
        builder.build_conversation([ConversationTurn("<image> a", num_images=1, answer=("b",)),
                                    ConversationTurn("<image> c", num_images=1)])
