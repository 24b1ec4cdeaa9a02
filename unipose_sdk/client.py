"""`Client(url)`: the four task methods of a `unipose serve` service, with the local classes' signatures and
result types, so code moves between local and remote by changing the line that builds the object:

    from unipose_sdk.client import Client
    generator = Client("http://127.0.0.1:8000")        # instead of Generator.from_pretrained()
    result = generator.generate("a person squatting with both arms raised")    # a GenerateResult

Inputs travel as the service expects them (`unipose_sdk.serve.wire`): files as their bytes, Poses as their exact
float32 matrices, arrays as JSON numbers or .npy; results come back as the same dataclasses with the same values
(the pose from its exact matrices). A typed error of the service is raised here as the same class with the same
message; an overloaded service raises `ServiceOverloadedError` (with `retry_after_s`), a timeout
`ServiceTimeoutError`. Only the standard library's HTTP client is used: no serving stack is needed to call a
service.

`Client.assistant()` is a conversation as `Assistant` holds one (`ask`, `history`, `reset`, AssistantReply with
ReplyPoses): the history is kept here and sent whole with each turn to /v1/chat, which keeps nothing between
requests, so any replica answers any turn:

    assistant = Client("http://127.0.0.1:8000").assistant()   # instead of Assistant.from_pretrained()
    squat = assistant.ask("Generate pose of the description: a person squatting.")
    edited = assistant.ask("Edit pose <pose> by description: raise the left arm.", poses=[squat.poses[0]])
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.serve.wire import (
    ServiceError,
    decode_result,
    encode_chat_pose,
    encode_image,
    encode_pose,
    error_from_body,
)

__all__ = ["Client", "RemoteAssistant"]


def _batch(value: Any, single_types: tuple[type, ...]) -> tuple[list[Any], bool]:
    """As the task classes read their inputs: a list / tuple is a batch (never empty), anything else one item."""
    if isinstance(value, (list, tuple)) and not isinstance(value, single_types):
        if len(value) == 0:
            raise InvalidInputError.make("an empty list", "at least one input", "Pass one input or a non-empty list.")
        return list(value), False
    return [value], True


def _box(box: Any) -> Any:
    return None if box is None else [float(v) for v in box] if isinstance(box, (list, tuple)) else box


class Client:
    """A `unipose serve` service at `url`. `api_key`: the service's key, if it asks for one; `timeout_s`: how long
    one call may take on the wire; `model`: which of the service's models to use (None: its default)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout_s: float = 120.0,
                 model: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInputError.make(f"url={url!r}", "an http:// or https:// URL",
                                         "Pass the address `unipose serve` printed, e.g. http://127.0.0.1:8000.")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.model = model

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held between calls; kept so that code written for the local classes runs unchanged."""

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            raise error_from_body(exc.code, body, exc.headers.get("Retry-After")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"received no answer from {self.url} ({reason}); expected a running `unipose serve`. "
                               "Start it, or check the URL and port.") from None

    def _task(self, task: str, payload: dict[str, Any]) -> Any:
        if self.model is not None:
            payload["model"] = self.model
        answer = self._request("POST", f"/v1/{task}", payload)
        results = [decode_result(item) for item in answer["results"]]
        return results[0] if answer.get("single") else results

    def health(self) -> dict[str, Any]:
        """The service's /v1/health document (raises ServiceError when it is unreachable)."""
        return self._request("GET", "/v1/health")

    def model_info(self) -> dict[str, Any]:
        """The service's /v1/model document: models, limits, skeleton, formats."""
        return self._request("GET", "/v1/model")

    def assistant(self) -> RemoteAssistant:
        """A new conversation with the service's model, used as `Assistant` (see `RemoteAssistant`)."""
        return RemoteAssistant(self)

    # ------------------------------------------------------------------ the four tasks (as the local classes)

    def estimate(self, image: Any, bbox: Any = None) -> Any:
        """As `Estimator.estimate`: one image -> EstimateResult, a list -> a list (one batch)."""
        import numpy as np

        images, single = _batch(image, (str, np.ndarray) + _tensor_types())
        payload: dict[str, Any] = {"image": encode_image(images[0]) if single else [encode_image(i) for i in images]}
        if bbox is not None:
            payload["bbox"] = _box(bbox) if single else (
                [_box(b) for b in bbox] if isinstance(bbox, (list, tuple)) else bbox)
        return self._task("estimate", payload)

    def generate(self, text: str | Sequence[str]) -> Any:
        """As `Generator.generate`: one text -> GenerateResult, a list -> a list (one batch)."""
        texts, single = _batch(text, (str,))
        return self._task("generate", {"text": texts[0] if single else texts})

    def edit(self, pose: Any, instruction: str | Sequence[str]) -> Any:
        """As `Editor.edit`: a pose (Pose, array, file path) or a list, and one instruction or one per pose."""
        from unipose_sdk.body.pose import Pose

        poses, single = _batch(pose, (str, Pose))
        instructions, single_text = _batch(instruction, (str,))
        return self._task("edit", {"pose": encode_pose(poses[0]) if single else [encode_pose(p) for p in poses],
                                   "instruction": instructions[0] if single_text else instructions})

    def describe(self, *, pose: Any = None, image: Any = None, poses: Any = None, images: Any = None) -> Any:
        """As `Describer.describe`: exactly one of pose=, image=, poses=(a, b) or a list of pairs, images=(a, b)."""
        import numpy as np

        from unipose_sdk.body.pose import Pose

        given = {k: v for k, v in (("pose", pose), ("image", image), ("poses", poses), ("images", images))
                 if v is not None}
        if len(given) != 1:
            raise InvalidInputError.make(f"arguments {sorted(given) or 'none'}",
                                         "exactly one of pose=, image=, poses=(a, b), images=(a, b)",
                                         "Pass one kind of input per call.")
        if pose is not None:
            items, single = _batch(pose, (str, Pose, np.ndarray) + _tensor_types())
            return self._task("describe", {"pose": encode_pose(items[0]) if single else
                                           [encode_pose(p) for p in items]})
        if image is not None:
            items, single = _batch(image, (str, np.ndarray) + _tensor_types())
            return self._task("describe", {"image": encode_image(items[0]) if single else
                                           [encode_image(i) for i in items]})
        name, value, encode = ("poses", poses, encode_pose) if poses is not None else ("images", images, encode_image)
        if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
            return self._task("describe", {name: [encode(value[0]), encode(value[1])]})
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return self._task("describe", {name: [[encode(a), encode(b)] for a, b in value]})
        raise InvalidInputError.make(f"{name}={type(value).__name__}", f"a pair ({name[:-1]}_a, {name[:-1]}_b) or a "
                                     "list of such pairs", f"Pass {name}=(a, b).")


class RemoteAssistant:
    """A conversation with a `unipose serve` service, used as `Assistant`: `ask(text, images=, poses=)` returns the
    same AssistantReply (text, ReplyPoses with their codes), `history` holds the ChatTurns, `reset()` starts over.
    The history lives here: each turn sends the earlier turns (what was asked, the replies' text and pose codes)
    with the new one, and the service restores them without running the model on them. The service's options
    (max_new_tokens, greedy decoding) apply; its replies carry `reused_tokens` 0 (no cache outlives a request).

    Raises (ask): the service's typed errors as the local Assistant raises them (InvalidTextError,
    InvalidInputError, ConversationTooLongError, ...), ServiceOverloadedError, ServiceTimeoutError, ServiceError.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._turns: list[tuple[dict[str, Any], Any]] = []  # (the turn as sent, its ChatTurn)

    def __enter__(self) -> RemoteAssistant:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held on the service; kept so that code written for `Assistant` runs unchanged."""

    @property
    def history(self) -> tuple[Any, ...]:
        """The finished turns (ChatTurn), oldest first."""
        return tuple(chat_turn for _, chat_turn in self._turns)

    def reset(self) -> None:
        """Start a new conversation."""
        self._turns = []

    def ask(self, text: str, images: Sequence[Any] | None = None,
            poses: Sequence[Any] | Mapping[str, Any] | None = None,
            on_chunk: Callable[[Any], None] | None = None) -> Any:
        """As `Assistant.ask`: `images` fill the `<image>`s in order, `poses` the `<pose>`s (or a list A, B or
        {"A": ..., "B": ...} for `<poseA>` / `<poseB>`); a ReplyPose of an earlier reply travels as its codes.
        `on_chunk` receives the reply's text, then each pose, once the reply has arrived (the service does not
        stream)."""
        from unipose_sdk.body.pose import Pose
        from unipose_sdk.results import ReplyPose, describe_input
        from unipose_sdk.tasks.assistant import ChatTurn, ReplyChunk, _describe_poses

        if images is not None and (isinstance(images, (str, bytes)) or not isinstance(images, Sequence)):
            images = [images]
        image_list = list(images or [])
        if isinstance(poses, Mapping):
            pose_items: Any = dict(poses)
            wire_poses: Any = {k: encode_chat_pose(v) for k, v in pose_items.items()}
        else:
            if poses is not None and (isinstance(poses, (str, Pose, ReplyPose)) or not isinstance(poses, Sequence)):
                poses = [poses]
            pose_items = list(poses or [])
            wire_poses = [encode_chat_pose(p) for p in pose_items]
        turn = {"text": text, "images": [encode_image(i) for i in image_list], "poses": wire_poses}
        payload: dict[str, Any] = {"history": [sent for sent, _ in self._turns], **turn}
        if self.client.model is not None:
            payload["model"] = self.client.model
        answer = self.client._request("POST", "/v1/chat", payload)
        reply = decode_result(answer["results"][0])
        sent = {**turn, "reply": {"text": reply.text, "pose_codes": [list(p.codes) for p in reply.poses]}}
        described = _describe_poses(pose_items)
        self._turns.append((sent, ChatTurn(text, tuple(describe_input(i) for i in image_list), tuple(described),
                                           reply)))
        if on_chunk is not None:
            on_chunk(ReplyChunk(text=reply.text))
            for item in reply.poses:
                on_chunk(ReplyChunk(pose=item))
        return reply


def _tensor_types() -> tuple[type, ...]:
    import torch

    return (torch.Tensor,)
