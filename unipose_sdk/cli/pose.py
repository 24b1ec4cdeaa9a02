"""`unipose pose ...`: render pose files, turn poses into the model's 80 pose tokens and back.

    unipose pose roundtrip -o out/                      # the shipped example -> 80 tokens -> pose, side by side
    unipose pose tokenize pose.npz -o tokens.json [--tokenizer CKPT]
    unipose pose detokenize tokens.json -o pose.npz [--tokenizer CKPT]
    unipose pose render a.npz b.npy -o poses.png
    unipose pose export pose.npz --format bvh -o pose.bvh   # also glb (Blender, Unity, three.js), npz, npy, json

CKPT is the official pose VQ-VAE Lightning checkpoint (.ckpt) or an SDK pose-tokenizer directory; without it
the tokenizer embedded in the package (unipose-tiny) is used.

Inputs and the output path are checked before any work (exit 2); an existing output is replaced only with
--overwrite. Nothing is written when a command fails or is interrupted (SIGTERM, SIGHUP, Ctrl-C): every output
appears complete or not at all. --json prints a machine-readable summary, --quiet nothing but errors.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipose_sdk.cli.tasks import add_output_flags
from unipose_sdk.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

TOKENS_FORMAT = "unipose-pose-tokens"
TOKENS_VERSION = 1
MAX_TOKENS_JSON_DEPTH = 6  # document, poses, one pose, its code list (+ room for the tokenizer entry)
OVERWRITE_HINT = "Pass --overwrite to replace it, or choose another -o path."


# ---------------------------------------------------------------------------------------------- helpers


def _load_tokenizer(path: str | None) -> Any:
    from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer

    return load_pose_tokenizer(path)


def _vocab_for(config: Any) -> tuple[str, Any]:
    """The preset whose tokenizer config matches (its VocabLayout gives the ids); else a layout with the 7B text
    vocabulary and this codebook (ids = 32000 + code)."""
    from unipose_sdk.models.config import PRESETS, VocabLayout

    for name, make in PRESETS.items():
        preset = make()
        if preset.pose_tokenizer == config:
            return name, preset.vocab
    return "custom", VocabLayout(codebook_size=config.codebook_size, num_pose_tokens=config.num_tokens)


def _write_json(path: Path, data: Any) -> Path:
    from unipose_sdk.fileio import atomic_write

    text = json.dumps(data, indent=2)
    # One line per list of numbers (80 codes per pose), so the file stays readable.
    text = re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    payload = (text + "\n").encode()
    return atomic_write(path, lambda handle: handle.write(payload))


def _check_output(args: argparse.Namespace, suffixes: tuple[str, ...], what: str) -> Path:
    """The -o file: the right extension, a writable directory, and not an existing file unless --overwrite."""
    from unipose_sdk.fileio import check_output_file

    out = Path(args.output).expanduser()
    if out.suffix.lower() not in suffixes:
        raise InvalidInputError.make(f"the output path {str(out)!r}", f"{what} ending in {' / '.join(suffixes)}",
                                     f"Change the extension, e.g. {out.with_suffix(suffixes[0]).name!r}.")
    return check_output_file(out, args.overwrite, OVERWRITE_HINT)


def _say(args: argparse.Namespace, human: str, summary: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(human)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


def tokens_document(codes: torch.Tensor, tokenizer: Any) -> dict[str, Any]:
    """[B, T] codes -> the JSON document `tokenize` writes (codes, vocabulary ids, the full 82-id sequence)."""
    config_name, vocab = _vocab_for(tokenizer.config)
    ids = vocab.pose_token_ids(codes.cpu()).tolist()
    return {
        "format": TOKENS_FORMAT,
        "version": TOKENS_VERSION,
        "tokenizer": {"config": config_name, "source": tokenizer.source,
                      "codebook_size": tokenizer.config.codebook_size, "num_tokens": tokenizer.config.num_tokens},
        "vocab": {"layout": config_name, "pose_id_offset": vocab.pose_id_offset, "pose_begin_id": vocab.pose_begin_id,
                  "pose_end_id": vocab.pose_end_id},
        "poses": [
            {"codes": row_codes, "token_ids": row_ids,
             "sequence_ids": [vocab.pose_begin_id, *row_ids, vocab.pose_end_id]}
            for row_codes, row_ids in zip(codes.cpu().tolist(), ids)
        ],
    }


def read_tokens_document(path: str | Path, tokenizer: Any) -> torch.Tensor:
    """A tokens JSON file (as `tokenize` writes it) -> [B, T] LongTensor of codes, checked against `tokenizer`."""
    return check_tokens_codes(path, load_tokens_document(path), tokenizer)


def load_tokens_document(path: str | Path) -> dict[str, Any]:
    """Read and check the structure of a tokens JSON file (no tokenizer needed): a regular file, valid JSON of
    bounded depth, the format name, and a non-empty "poses" list of {"codes": [integers]}."""
    from unipose_sdk.fileio import open_regular_file, parse_json

    fix = "Create one with `unipose pose tokenize POSE_FILE -o TOKENS.json`."
    with open_regular_file(path, "tokens JSON file", InvalidInputError, fix) as handle:
        data = handle.read()
    p = Path(path).expanduser()
    doc = parse_json(data, p, InvalidInputError, MAX_TOKENS_JSON_DEPTH, "a tokens JSON document")
    poses = doc.get("poses") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != TOKENS_FORMAT or not isinstance(poses, list) or not poses \
            or not all(isinstance(e, dict) and isinstance(e.get("codes"), list) for e in poses):
        found = f"format {doc.get('format')!r}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise InvalidInputError.make(
            f"{str(p)!r} with {found}", f'{{"format": "{TOKENS_FORMAT}", "poses": [{{"codes": [...]}}, ...]}}',
            "Create the file with `unipose pose tokenize`.",
        )
    made_by = doc.get("tokenizer", {})
    if not isinstance(made_by, dict) or not (made_by.get("codebook_size") is None
                                             or type(made_by.get("codebook_size")) is int):
        raise InvalidInputError.make(f"{str(p)!r} whose \"tokenizer\" is {made_by!r}",
                                     '{"codebook_size": <int>, ...} or no "tokenizer" entry',
                                     "Re-create the file with `unipose pose tokenize`.")
    rows = [e["codes"] for e in poses]
    if not all(type(c) is int for row in rows for c in row):
        raise InvalidInputError.make(f"{str(p)!r} with non-integer codes", "lists of integer codebook indices",
                                     "Re-create the file with `unipose pose tokenize`.")
    return doc


def check_tokens_codes(path: str | Path, doc: dict[str, Any], tokenizer: Any) -> torch.Tensor:
    """The codes of a structurally checked tokens document, checked against `tokenizer` -> [B, T] LongTensor."""
    p = Path(path).expanduser()
    made_with = doc.get("tokenizer", {}).get("codebook_size")
    if made_with is not None and made_with != tokenizer.config.codebook_size:
        raise InvalidInputError.make(
            f"tokens made by a tokenizer with {made_with} codes", f"tokens of this tokenizer "
            f"({tokenizer.config.codebook_size} codes, {tokenizer.source})",
            "Pass the tokenizer the tokens were made with via --tokenizer.",
        )
    rows = [e["codes"] for e in doc["poses"]]
    if len({len(r) for r in rows}) != 1:
        raise InvalidInputError.make(f"{str(p)!r} with code lists of lengths {sorted({len(r) for r in rows})}",
                                     f"{tokenizer.config.num_tokens} codes per pose",
                                     "Re-create the file with `unipose pose tokenize`.")
    flat = [c for row in rows for c in row]
    if flat and not (0 <= min(flat) and max(flat) < tokenizer.config.codebook_size):
        raise InvalidInputError.make(f"{str(p)!r} with codes in [{min(flat)}, {max(flat)}]",
                                     f"codebook indices in [0, {tokenizer.config.codebook_size - 1}]",
                                     "Pass the tokenizer the tokens were made with via --tokenizer.")
    import torch

    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------------- commands


def _render(args: argparse.Namespace) -> int:
    from unipose_sdk.body.pose import Pose
    from unipose_sdk.body.render import render_poses_png

    out = _check_output(args, (".png",), "a PNG file")
    poses = [Pose.load(path) for path in args.inputs]  # read everything first: a bad input writes nothing
    titles = args.titles or [Path(path).stem for path in args.inputs]
    if len(titles) != len(poses):
        raise InvalidInputError.make(f"{len(titles)} titles for {len(poses)} pose files", "one title per file",
                                     "Pass as many --titles as inputs, or none.")
    render_poses_png(poses, out, titles=titles)
    _say(args, f"wrote {out} ({len(poses)} pose file{'s' if len(poses) > 1 else ''})",
         {"output": str(out), "inputs": [str(p) for p in args.inputs]})
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from unipose_sdk.body.pose import Pose

    out = _check_output(args, (".json",), "a JSON file")
    pose = Pose.load(args.pose_file)
    tokenizer = _load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    codes = tokenizer.encode(pose)
    encode_ms = _ms(start)
    doc = tokens_document(codes, tokenizer)
    doc["input"] = str(args.pose_file)
    doc["encode_ms"] = encode_ms
    _write_json(out, doc)
    _say(args, f"wrote {out}: {codes.shape[0]} pose(s) x {codes.shape[1]} tokens (vocabulary ids "
               f"{doc['vocab']['pose_id_offset']}+code, {doc['vocab']['layout']} layout) in {encode_ms} ms",
         {"output": str(out), "input": str(args.pose_file), "poses": int(codes.shape[0]),
          "tokens_per_pose": int(codes.shape[1]), "encode_ms": encode_ms})
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    out = _check_output(args, (".npz", ".npy", ".json"), "a pose file")
    doc = load_tokens_document(args.tokens_file)
    tokenizer = _load_tokenizer(args.tokenizer)
    codes = check_tokens_codes(args.tokens_file, doc, tokenizer)
    start = time.perf_counter()
    pose = tokenizer.decode(codes)
    decode_ms = _ms(start)
    pose.save(out)
    _say(args, f"wrote {out}: {pose.batch_size} pose(s) decoded in {decode_ms} ms",
         {"output": str(out), "input": str(args.tokens_file), "poses": pose.batch_size, "decode_ms": decode_ms})
    return 0


ROUNDTRIP_FILES = ("reconstruction.npz", "roundtrip.png", "roundtrip.json")


def _roundtrip(args: argparse.Namespace) -> int:
    from unipose_sdk.body.examples import DEFAULT_EXAMPLE, example_pose_path
    from unipose_sdk.body.pose import Pose
    from unipose_sdk.body.render import render_poses_png
    from unipose_sdk.fileio import OutputSet, check_output_directory
    from unipose_sdk.models.pose_tokenizer import mpjpe_mm

    if args.pose_file:
        pose_path = Path(args.pose_file).expanduser()
    else:
        pose_path = example_pose_path(args.example or DEFAULT_EXAMPLE)
    out_dir = Path(args.output).expanduser()
    hint = "Pass --overwrite to replace them, or choose another -o directory."
    check_output_directory(out_dir, ROUNDTRIP_FILES, args.overwrite, hint)
    original = Pose.load(pose_path)
    start = time.perf_counter()
    tokenizer = _load_tokenizer(args.tokenizer)
    load_ms = _ms(start)
    start = time.perf_counter()
    codes = tokenizer.encode(original)
    encode_ms = _ms(start)
    start = time.perf_counter()
    reconstruction = tokenizer.decode(codes)
    decode_ms = _ms(start)
    errors_mm = mpjpe_mm(reconstruction.rotmat, original.rotmat.to(reconstruction.rotmat))

    summary = tokens_document(codes, tokenizer)
    summary.update({
        "input": str(pose_path),
        "mpjpe_mm": [round(float(e), 2) for e in errors_mm],
        "mpjpe_mm_mean": round(float(errors_mm.mean()), 2),
        "mpjpe_note": "FK joints of the built-in skeleton, pelvis aligned",
        "timings_ms": {"load_tokenizer": load_ms, "encode": encode_ms, "decode": decode_ms},
        "outputs": {"png": "roundtrip.png", "reconstruction": "reconstruction.npz"},
    })
    with OutputSet(out_dir, ROUNDTRIP_FILES, overwrite=args.overwrite, overwrite_hint=hint) as out:
        reconstruction.save(out.path("reconstruction.npz"))
        render_poses_png([original, reconstruction], out.path("roundtrip.png"),
                         titles=["original", f"reconstruction ({tokenizer.config.num_tokens} tokens)"])
        _write_json(out.path("roundtrip.json"), summary)

    if args.json:
        print(json.dumps({**summary, "files": [str(out_dir / name) for name in ROUNDTRIP_FILES]}, indent=2))
        return 0
    if args.quiet:
        return 0
    first = summary["poses"][0]["codes"]
    if tokenizer.source.startswith("RANDOM"):
        print(f"WARNING: {tokenizer.source}; the reconstruction is meaningless")
    print(f"tokenizer : {tokenizer.source}")
    print(f"input     : {pose_path} ({original.batch_size} pose{'s' if original.batch_size > 1 else ''})")
    print(f"tokens    : {codes.shape[1]} per pose, codes {' '.join(map(str, first[:8]))} ... "
          f"(vocabulary ids {summary['vocab']['pose_id_offset']}+code)")
    print(f"MPJPE     : {summary['mpjpe_mm_mean']} mm (FK joints, pelvis aligned)")
    print(f"timings   : load {load_ms} ms, encode {encode_ms} ms, decode {decode_ms} ms")
    print(f"wrote     : {out_dir / 'roundtrip.png'}, {out_dir / 'reconstruction.npz'}, {out_dir / 'roundtrip.json'}")
    return 0

EXPORT_FORMATS = ("bvh", "glb", "npz", "npy", "json")


def _export(args: argparse.Namespace) -> int:
    from unipose_sdk.body.io import read_pose_file

    out_path = Path(args.output).expanduser()
    fmt = args.format or out_path.suffix.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise InvalidInputError.make(f"the output path {str(out_path)!r} and no --format",
                                     f"--format one of {', '.join(EXPORT_FORMATS)} or an -o path ending in one",
                                     "Pass e.g. --format bvh -o pose.bvh.")
    out = _check_output(args, (f".{fmt}",), f"a {fmt} file")
    if fmt == "glb":
        from unipose_sdk.body.gltf import require_pygltflib

        require_pygltflib()  # before reading the input: a missing optional writer is a setup error
    source = read_pose_file(args.pose_file)
    if fmt == "npy":
        source.pose.save(out)  # the demo's matrices hold no translation or shape
    elif fmt in ("bvh", "glb"):
        source.pose.save(out, transl_m=source.transl_m)
    else:
        source.pose.save(out, transl_m=source.transl_m, betas=source.betas)
    _say(args, f"wrote {out}: {source.pose.batch_size} pose(s) as {fmt}",
         {"output": str(out), "input": str(args.pose_file), "format": fmt, "poses": source.pose.batch_size})
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pose", help="render and export pose files; encode poses into pose tokens and back",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="pose_command", metavar="SUBCOMMAND")
    commands.required = True
    tokenizer_help = "official pose VQ-VAE .ckpt or SDK tokenizer directory (default: the embedded tiny tokenizer)"

    p = commands.add_parser("render", help="draw one or more pose files side by side into a PNG")
    p.add_argument("inputs", nargs="+", metavar="IN", help="pose files (.npz smplx/AMASS, .npy matrices, .json)")
    add_output_flags(p, "the PNG to write", required=True, metavar="OUT.png")
    p.add_argument("--titles", nargs="+", help="one title per input (default: file names)")
    p.set_defaults(handler=_render)

    p = commands.add_parser("tokenize", help="encode the poses of a file into pose tokens (JSON)")
    p.add_argument("pose_file", metavar="POSE_FILE")
    add_output_flags(p, "the tokens JSON to write", required=True, metavar="TOKENS.json")
    p.add_argument("--tokenizer", metavar="CKPT", help=tokenizer_help)
    p.set_defaults(handler=_tokenize)

    p = commands.add_parser("detokenize", help="decode a tokens JSON file into a pose file")
    p.add_argument("tokens_file", metavar="TOKENS.json")
    add_output_flags(p, "pose file (.npz, .npy or .json)", required=True, metavar="POSE.npz")
    p.add_argument("--tokenizer", metavar="CKPT", help=tokenizer_help)
    p.set_defaults(handler=_detokenize)

    p = commands.add_parser("roundtrip", help="encode a pose (default: the shipped example) and decode it again")
    p.add_argument("pose_file", nargs="?", metavar="POSE_FILE", help="default: the shipped example pose")
    p.add_argument("--example", metavar="NAME", help="which shipped example to use when POSE_FILE is not given")
    add_output_flags(p, "directory for roundtrip.png, reconstruction.npz and roundtrip.json", required=True,
                     metavar="OUT_DIR")
    p.add_argument("--tokenizer", metavar="CKPT", help=tokenizer_help)
    p.set_defaults(handler=_roundtrip)

    p = commands.add_parser("export", help="convert a pose file to BVH, glTF (.glb), .npz, .npy or JSON")
    p.add_argument("pose_file", metavar="POSE", help="pose file (.npz smplx / AMASS, .npy, .json, .bvh)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                   help="output format (default: from the -o extension); bvh: one frame per pose, metres; glb: "
                        "skeleton nodes and a mannequin, an animation for several poses (needs the gltf extra)")
    add_output_flags(p, "the file to write", required=True, metavar="OUT")
    p.set_defaults(handler=_export)
