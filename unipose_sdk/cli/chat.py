"""`unipose chat`: a conversation with the model (`unipose_sdk.Assistant`), interactive or scripted.

Interactive (a terminal): type a turn and the reply streams as it decodes. Attach inputs for the next turn first:
`/image PATH` (fills an `<image>`), `/pose PATH` (a pose file) or `/pose last` (the last pose the model made)
(fills a `<pose>` / `<poseA>` / `<poseB>`); `/reset` starts over, `/save DIR` writes the replies so far (numbered
chat_NNN files, as below), `/quit` (or end of input) leaves. `/help` lists them.

Scripted (`--json`): the turns come from `--turns FILE` (or stdin) as JSON lines (one object per line) or as one
JSON list of objects, each {"text": "...", "images": [PATH, ...], "poses": [POSE, ...]}; a POSE is a pose file path
or {"reply": K, "pose": J}: pose J (default 0) of the reply to turn K (negative K counts back from the last reply).
"poses" may also be {"A": POSE, "B": POSE}. One JSON document goes to stdout: {"task": "chat", "results": [...]}
with each reply's text, poses (axis-angle, joints, codes), timings and token counts. With `-o DIR` every reply
writes chat_NNN.json and, per pose k, chat_NNN.pose<k>.npz / .npy / .png (`--formats`); a run takes the next
free numbers and writes its files together at the end, or none (see `unipose estimate`). Every file, pose and
text of the turns is checked before the model loads (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unipose_sdk.cli.tasks import OVERWRITE_HINT, add_output_flags, add_runtime_flags, finite_float, positive_int
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.results import DEFAULT_POSE_FORMATS, POSE_RESULT_FORMATS

_MAX_TURNS_BYTES = 16 * 1024 * 1024
_HELP = """commands (before a turn):
  /image PATH   attach an image to the next turn (one per <image>)
  /pose PATH    attach a pose file to the next turn (one per <pose>, <poseA>, <poseB>)
  /pose last    attach the last pose the model made
  /reset        start a new conversation
  /save DIR     write the replies so far (chat_NNN.json and the poses' files)
  /quit         leave (so does end of input)"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="a conversation with the model: text, images and poses in and out",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", metavar="FILE", default=None,
                   help="with --json: the turns as JSON lines or a JSON list (default: stdin; '-' is stdin)")
    add_output_flags(p, "with --json: directory for each reply's JSON and pose files (created if missing); a run "
                        "takes the next free numbers chat_NNN", metavar="DIR",
                     overwrite_help="number this run's files from chat_000, replacing files of those names")
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="'unipose-tiny' (the embedded default) or a model / export directory")
    add_runtime_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N",
                   help="most text tokens per reply (each pose block adds its 82 on top, see --max-poses)")
    p.add_argument("--max-poses", type=int, default=2, metavar="N", help="most poses per reply (default 2)")
    p.add_argument("--temperature", type=finite_float, default=0.0, metavar="T",
                   help="0 (default): greedy, the official decoding; above 0: sample")
    p.add_argument("--top-p", type=finite_float, default=1.0, metavar="P", help="nucleus cut when sampling")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed (replies repeat under it)")
    p.add_argument("--formats", nargs="+", choices=POSE_RESULT_FORMATS, default=list(DEFAULT_POSE_FORMATS),
                   metavar="FORMAT",
                   help=f"pose files each reply writes per pose, from {', '.join(POSE_RESULT_FORMATS)}"
                   f" (default: {' '.join(DEFAULT_POSE_FORMATS)})")
    p.set_defaults(handler=_chat)


# ---------------------------------------------------------------------------------------------- scripted turns


def read_turns(source: str | None) -> list[dict[str, Any]]:
    """The turns of a scripted chat from a file (or stdin for None / '-'): JSON lines, or one JSON list."""
    from unipose_sdk.fileio import open_regular_file, parse_json

    if source is None or source == "-":
        data, name = sys.stdin.buffer.read(_MAX_TURNS_BYTES + 1), "<stdin>"
    else:
        with open_regular_file(source, "turns file") as handle:
            data, name = handle.read(_MAX_TURNS_BYTES + 1), source
    if len(data) > _MAX_TURNS_BYTES:
        raise InvalidInputError.make(f"{name!r}, larger than {_MAX_TURNS_BYTES} bytes", "a turns file of a chat",
                                     "Split the conversation into several runs.")
    expected = 'JSON lines or a JSON list of {"text": ..., "images": [...], "poses": [...]} objects'
    if data.lstrip().startswith(b"["):
        turns = parse_json(data, name, InvalidInputError, 8, expected)
    else:
        turns = [parse_json(line, f"{name} line {i + 1}", InvalidInputError, 8, expected)
                 for i, line in enumerate(data.splitlines()) if line.strip()]
    if not isinstance(turns, list) or not turns:
        raise InvalidInputError.make(f"{name!r} holding no turns", expected, "Write one object per turn.")
    return [_checked_turn_spec(turn, i, name) for i, turn in enumerate(turns)]


def _checked_turn_spec(turn: Any, index: int, source: str) -> dict[str, Any]:
    where = f"turn {index} of {source}"
    if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
        raise InvalidInputError.make(f"{where}: {turn!r}"[:200], 'an object with "text" (and optional "images", '
                                     '"poses")', 'Write e.g. {"text": "Generate pose of the image: <image>.", '
                                     '"images": ["person.png"]}.')
    unknown = sorted(set(turn) - {"text", "images", "poses"})
    if unknown:
        raise InvalidInputError.make(f"{where}: the keys {unknown}", 'only "text", "images", "poses"',
                                     "Remove or rename them.")
    images = turn.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise InvalidInputError.make(f"{where}: images={images!r}", "a list of image file paths",
                                     'Write "images": ["a.png"].')
    poses = turn.get("poses", [])
    items = list(poses.values()) if isinstance(poses, dict) else poses
    if not isinstance(items, list) or not all(_is_pose_spec(p, index) for p in items):
        raise InvalidInputError.make(
            f"{where}: poses={poses!r}", 'a list (or {"A": ..., "B": ...}) of pose file paths or {"reply": K, '
            '"pose": J} references to an earlier reply', 'Write "poses": ["pose.npz"] or [{"reply": 0}].')
    return {"text": turn["text"], "images": images, "poses": poses}


def _is_pose_spec(spec: Any, index: int) -> bool:
    if isinstance(spec, str):
        return True
    if not isinstance(spec, dict) or set(spec) - {"reply", "pose"} or not isinstance(spec.get("reply"), int):
        return False
    reply, pose = spec["reply"], spec.get("pose", 0)
    return isinstance(pose, int) and pose >= 0 and (0 <= reply < index or -index <= reply < 0)


def _precheck(turns: list[dict[str, Any]]) -> None:
    """Every turn's text, placeholders and files, before the model loads (reply poses stand in as placeholders)."""
    from unipose_sdk.body.pose import Pose
    from unipose_sdk.results import ReplyPose
    from unipose_sdk.tasks.assistant import check_turn

    stand_in = ReplyPose(Pose.identity(), [0])
    for i, turn in enumerate(turns):
        poses = turn["poses"]
        resolved: Any = ({k: stand_in if isinstance(v, dict) else v for k, v in poses.items()}
                         if isinstance(poses, dict) else [stand_in if isinstance(v, dict) else v for v in poses])
        try:
            check_turn(turn["text"], turn["images"], resolved)
        except InvalidInputError as error:
            raise type(error)(f"turn {i}: {error}") from None


def _resolve_poses(poses: Any, replies: list[Any], index: int) -> Any:
    def one(spec: Any) -> Any:
        if isinstance(spec, str):
            return spec
        reply = replies[spec["reply"]]
        pose = spec.get("pose", 0)
        if pose >= len(reply.poses):
            raise InvalidInputError.make(
                f"turn {index}: pose {pose} of the reply to turn {reply.turn}, which holds {len(reply.poses)} "
                f"pose(s) (text {reply.text!r})", "a pose that reply made",
                "Refer to a reply that answered with a pose, or give a pose file.")
        return reply.poses[pose]

    return {k: one(v) for k, v in poses.items()} if isinstance(poses, dict) else [one(v) for v in poses]


# ---------------------------------------------------------------------------------------------- running


def _build(args: argparse.Namespace) -> Any:
    from unipose_sdk.tasks.assistant import Assistant

    return Assistant.from_pretrained(model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                     max_new_tokens=args.max_new_tokens, max_poses=args.max_poses,
                                     temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _save(replies: list[Any], directory: Path, args: argparse.Namespace) -> list[list[str]]:
    from unipose_sdk.results import save_replies

    saved = save_replies(replies, directory, [f"chat_{i:03d}" for i in range(len(replies))],
                         overwrite=args.overwrite, overwrite_hint=OVERWRITE_HINT, numbered=not args.overwrite,
                         formats=args.formats)
    return [[str(p) for p in paths] for paths in saved]


def _check_options(args: argparse.Namespace) -> None:
    from unipose_sdk.options import AssistantOptions

    AssistantOptions(max_new_tokens=args.max_new_tokens, max_poses=args.max_poses, temperature=args.temperature,
                     top_p=args.top_p, seed=args.seed)  # a bad value is refused before anything loads


def _chat(args: argparse.Namespace) -> int:
    if args.json:
        return _scripted(args)
    if args.turns is not None or args.output is not None:
        raise InvalidInputError.make("--turns / -o without --json", "--json for a scripted chat",
                                     "Add --json, or use /save DIR inside the interactive chat.")
    return _interactive(args)


def _scripted(args: argparse.Namespace) -> int:
    from unipose_sdk.results import check_formats

    _check_options(args)
    check_formats(args.formats)
    turns = read_turns(args.turns)
    _precheck(turns)
    if args.output is not None:
        from unipose_sdk.fileio import check_output_directory

        check_output_directory(args.output)
    replies: list[Any] = []
    with _build(args) as assistant:
        for i, turn in enumerate(turns):
            replies.append(assistant.ask(turn["text"], images=turn["images"],
                                         poses=_resolve_poses(turn["poses"], replies, i)))
    written = _save(replies, args.output, args) if args.output is not None else []
    payload = []
    for i, reply in enumerate(replies):
        item = reply.to_dict()
        if written:
            item["files"] = written[i]
        payload.append(item)
    print(json.dumps({"task": "chat", "results": payload}, indent=2))
    return 0


def _interactive(args: argparse.Namespace) -> int:
    _check_options(args)
    out = sys.stdout
    images: list[str] = []
    poses: list[Any] = []
    replies: list[Any] = []
    with _build(args) as assistant:
        if not args.quiet:
            print("unipose chat: type a turn (<image> / <pose> where attached inputs go); /help for commands",
                  file=out)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print(file=out)
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command, _, rest = line.partition(" ")
                rest = rest.strip()
                if command == "/quit":
                    return 0
                if command == "/help":
                    print(_HELP, file=out)
                elif command == "/reset":
                    assistant.reset()
                    images, poses, replies = [], [], []
                    print("(new conversation)", file=out)
                elif command == "/image" and rest:
                    images.append(rest)
                    print(f"(image {len(images)} attached: {rest})", file=out)
                elif command == "/pose" and rest:
                    made = [pose for reply in replies for pose in reply.poses]
                    if rest == "last" and not made:
                        print("error: no pose made yet", file=sys.stderr)
                        continue
                    poses.append(made[-1] if rest == "last" else rest)
                    print(f"(pose {len(poses)} attached: {rest})", file=out)
                elif command == "/save" and rest and not replies:
                    print("(nothing to save yet)", file=out)
                elif command == "/save" and rest:
                    try:
                        for paths in _save(replies, Path(rest), args):
                            print(f"wrote {', '.join(paths)}", file=out)
                    except InvalidInputError as error:
                        print(f"error: {error}", file=sys.stderr)
                else:
                    print(f"error: unknown command {line!r}\n{_HELP}", file=sys.stderr)
                continue
            try:
                stream = assistant.ask_stream(line, images=images, poses=poses)
            except InvalidInputError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            images, poses = [], []
            print("assistant> ", end="", file=out, flush=True)
            for chunk in stream:
                if chunk.text:
                    print(chunk.text, end="", file=out, flush=True)
            reply = stream.reply
            replies.append(reply)
            note = f" [{len(reply.poses)} pose(s); /pose last to use one]" if reply.poses else ""
            print(f"{note} ({reply.latency_ms:.0f} ms)", file=out)
