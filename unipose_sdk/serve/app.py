"""The Serve application: one `Service` deployment that is both the FastAPI ingress and the default model.

A `Service` replica parses a request and runs it on the `ModelServer` it holds in its own process: no second actor,
no serialising the decoded inputs and the results across a handle. Every further `--model` is a `ModelServer`
deployment of its own that the `Service` reaches through a handle. (The first design put every model behind a
handle: on 2 cores the ingress replica took a quarter to a half of a core at 16 clients, and one client's request
crossed two actors.)

Endpoints (JSON in and out; the input and result layouts are in `unipose_sdk.serve.wire`):
    POST /v1/estimate   {"image": IMAGE | [IMAGE, ...], "bbox": null | [x1, y1, x2, y2] | [box or null, ...]}
    POST /v1/generate   {"text": "..." | ["...", ...]}
    POST /v1/edit       {"pose": POSE | [POSE, ...], "instruction": "..." | ["...", ...]}
    POST /v1/describe   exactly one of {"pose": ...}, {"image": ...}, {"poses": [A, B] | [[A, B], ...]},
                        {"images": [A, B] | [[A, B], ...]}
    POST /v1/chat       {"history": [TURN, ...], "text": "...", "images": [IMAGE, ...],
                         "poses": [CHAT_POSE, ...] | {"A": CHAT_POSE, "B": CHAT_POSE}}   (JSON only)
                        TURN = {"text", "images", "poses", "reply": {"text": "... <pose> ...",
                                                                      "pose_codes": [[80 ints], ...]}}
                        the client sends the whole conversation each turn; the service keeps nothing between requests.
                        The answer is one AssistantReply in "results" (its poses in `poses`, see `wire`).
        every task also takes "formats": ["npz", "npy", "json", "bvh", "glb", "png"] (pose files in the results)
        and "model": a name from /v1/model (default: the first). The same fields work as multipart/form-data
        (files for images and poses, form fields for the rest).
    GET  /v1/health, GET /v1/model, GET /v1/openapi.json, GET /docs (the API page), GET / (the web demo).

Every typed SDK error is answered 4xx with the error's own text (422; 413 for the size limits), a full model queue
(each replica admits `ServeSettings.max_ongoing_requests` requests per model) or more queued work than the request
timeout leaves time for (`WorkAdmission`) 503 with Retry-After, a request past its timeout 504; with an API key
set, /v1 task and model calls need it (`Authorization: Bearer KEY` or `X-API-Key: KEY`).
"""

import asyncio
import base64
import hmac
import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from unipose_sdk._version import __version__
from unipose_sdk.errors import InvalidInputError, UniPoseError
from unipose_sdk.fileio import parse_json
from unipose_sdk.serve.deployment import DESCRIBE_MODES, ChatWork, ModelServer, Work
from unipose_sdk.serve.limits import ServeLimits, ServeSettings, WorkAdmission, api_key_digest
from unipose_sdk.serve.wire import (
    MAX_REQUEST_JSON_DEPTH,
    WIRE_POSE_FORMATS,
    AuthenticationError,
    LimitExceededError,
    PoseCodes,
    ServiceOverloadedError,
    ServiceTimeoutError,
    check_batch,
    check_wire_formats,
    decode_chat_pose,
    decode_image,
    decode_pose,
    decode_pose_codes,
    decode_text,
    error_body,
    is_batch_of_objects,
)

STATIC_DIR = Path(__file__).parent / "static"
API_VERSION = "v1"

api = FastAPI(title="unipose-sdk service", version=__version__, docs_url=None, redoc_url=None,
              openapi_url="/v1/openapi.json",
              description="Estimate, generate, edit and describe 3D human poses. Inputs and results are JSON "
                          "(images and pose files in base64) or multipart uploads; errors carry the SDK's "
                          "received / expected / fix text.")


def _body_doc(fields: dict[str, Any], required: list[str], multipart: bool = True) -> dict[str, Any]:
    """The request body of a task endpoint for the OpenAPI page (parsed by hand: see `Service._payload`)."""
    common = {"formats": {"type": "array", "items": {"enum": list(WIRE_POSE_FORMATS)},
                          "description": "pose files to return with each pose result (base64 in `files`)"},
              "model": {"type": "string", "description": "a model name from /v1/model (default: the first)"}}
    schema = {"type": "object", "properties": {**fields, **common}, "required": required}
    content = {"application/json": {"schema": schema}}
    if multipart:
        content["multipart/form-data"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


_IMAGE_DOC = {"description": "IMAGE or a list of IMAGE: base64 image file bytes, {\"data\": base64}, or "
                             "{\"npy\": base64 .npy bytes}"}
_POSE_DOC = {"description": "POSE or a list of POSE objects: a nested array in one pose layout (66 axis-angle, "
                            "22x3, 22x3x3, 22x6), {\"array\": ..., \"dtype\": ...}, or {\"file\": base64 pose file}"}
_TEXT_DOC = {"description": "a string, or a list of strings (one batch)"}
_CHAT_POSES_DOC = {"description": "one CHAT_POSE per pose placeholder, in order, or {\"A\": CHAT_POSE, \"B\": "
                                  "CHAT_POSE} for <poseA> / <poseB>; a CHAT_POSE is a POSE or {\"codes\": [80 ints]}, "
                                  "a pose of an earlier reply by its codes"}
_CHAT_DOC = {
    "history": {"type": "array", "description": "the earlier turns, oldest first (default none): each {\"text\": "
                "the user's text, \"images\": [IMAGE, ...], \"poses\": as below, \"reply\": {\"text\": the "
                "reply's text with <pose> per pose, \"pose_codes\": [[80 ints], ...] of those poses}}"},
    "text": {"type": "string", "description": "the new user turn, with <image> / <pose> / <poseA> / <poseB> "
             "where its inputs go"},
    "images": {"type": "array", "description": "one IMAGE per <image> of the text, in order"},
    "poses": _CHAT_POSES_DOC,
}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _error_response(exc: BaseException, retry_after_s: int) -> JSONResponse:
    status, body = error_body(exc)
    return _json(status, body, {"Retry-After": str(retry_after_s)} if status == 503 else None)


def _unknown_fields(payload: dict[str, Any], allowed: set[str], task: str) -> None:
    unknown = sorted(set(payload) - allowed - {"formats", "model"})
    if unknown:
        raise InvalidInputError.make(f"the fields {unknown} for /v1/{task}",
                                     f"fields among {sorted(allowed | {'formats', 'model'})}",
                                     "Remove or rename them (see /docs).")


def _required(payload: dict[str, Any], name: str, task: str) -> Any:
    if payload.get(name) is None:
        raise InvalidInputError.make(f"a /v1/{task} request without {name!r}", f"the field {name!r}",
                                     "See /docs for the request layout.")
    return payload[name]


async def _awaited(response: Any) -> Any:
    return await response


async def _ready(value: Any) -> Any:
    return value


async def await_within(response: Any, timeout_s: float) -> Any:
    """Await a deployment response (or a call in this replica) within the request timeout; past it, cancel it (the
    replica stops working on it) and raise ServiceTimeoutError (504)."""
    try:
        return await asyncio.wait_for(_awaited(response), timeout_s)
    except asyncio.TimeoutError:
        if hasattr(response, "cancel"):  # a deployment response; a local coroutine is cancelled by wait_for
            response.cancel()
        raise ServiceTimeoutError.make(f"a request still running after {timeout_s} s",
                                       "an answer within the service's request timeout",
                                       "Send fewer inputs per request, or retry later.") from None


def _api_page(schema: dict[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page (no CDN: the service works offline)."""
    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            fields = "".join(
                f"<li><code>{html.escape(name)}</code>{' (required)' if name in body.get('required', []) else ''}: "
                f"{html.escape(str(spec.get('description', spec.get('type', ''))))}</li>"
                for name, spec in body.get("properties", {}).items()) if body else ""
            rows.append(f"<section><h2><code>{method.upper()} {html.escape(path)}</code></h2>"
                        f"<p>{html.escape(op.get('summary', ''))}</p>{f'<ul>{fields}</ul>' if fields else ''}"
                        f"</section>")
    info = schema.get("info", {})
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(info.get('title', ''))} API"
            "</title><link rel='stylesheet' href='/static/demo.css'></head><body class='docs'>"
            f"<h1>{html.escape(info.get('title', ''))} {html.escape(info.get('version', ''))}</h1>"
            f"<p>{html.escape(info.get('description', ''))}</p>"
            "<p>Machine-readable: <a href='/v1/openapi.json'>/v1/openapi.json</a>. Web demo: <a href='/'>/</a>.</p>"
            f"{''.join(rows)}<h2>The OpenAPI document</h2><pre>{html.escape(json.dumps(schema, indent=1))}</pre>"
            "</body></html>")


def parse_chat(payload: dict[str, Any], limits: ServeLimits) -> ChatWork:
    """The conversation as `Assistant.restore` and `ask` take it. Each user text has the service's length
    limit; the images and the poses sent as poses (they need the model's encoders) count against the batch
    limit over the whole conversation; placeholders and context are the Assistant's to check."""
    from unipose_sdk.tasks.assistant import PastTurn

    _unknown_fields(payload, {"history", "text", "images", "poses"}, "chat")
    history = payload.get("history") or []
    if not isinstance(history, list):
        raise InvalidInputError.make(f"history of type {type(history).__name__}", "a list of earlier turns",
                                     "Send history: [] for the first turn (see /docs).")
    counts = {"images": 0, "poses": 0}

    def turn_inputs(turn: dict[str, Any], where: str) -> tuple[str, list[Any], Any]:
        try:
            text = decode_text(_required(turn, "text", "chat"), "turn", limits.max_text_chars)
        except UniPoseError as exc:  # named as Assistant.restore names a history turn's errors
            raise (exc if where == "the new turn" else type(exc)(f"{where}: {exc}")) from None
        images = turn.get("images") or []
        if not isinstance(images, list):
            raise InvalidInputError.make(f"images of type {type(images).__name__} in {where}",
                                         "a list with one IMAGE per <image>", "Send images: [IMAGE, ...].")
        poses = turn.get("poses") or []
        if isinstance(poses, dict):
            decoded: Any = {k: decode_chat_pose(v, f"pose {k} of {where}") for k, v in poses.items()}
        elif isinstance(poses, list):
            decoded = [decode_chat_pose(v, f"pose {i} of {where}") for i, v in enumerate(poses)]
        else:
            raise InvalidInputError.make(f"poses of type {type(poses).__name__} in {where}",
                                         'a list of CHAT_POSE, or {"A": ..., "B": ...}',
                                         "Send poses: [POSE or {\"codes\": [...]}, ...].")
        counts["images"] += len(images)
        counts["poses"] += sum(not isinstance(p, PoseCodes)
                               for p in (decoded.values() if isinstance(decoded, dict) else decoded))
        check_batch([None] * counts["images"], limits.max_batch_items, "images in the conversation")
        check_batch([None] * counts["poses"], limits.max_batch_items, "poses (not codes) in the conversation")
        return text, [decode_image(v, f"image {i} of {where}", limits.max_image_pixels)
                      for i, v in enumerate(images)], decoded

    past = []
    for i, turn in enumerate(history):
        where = f"turn {i} of the history"
        if not isinstance(turn, dict):
            raise InvalidInputError.make(f"{where} of type {type(turn).__name__}", "a turn object",
                                         'Send {"text", "images", "poses", "reply"} (see /docs).')
        unknown = sorted(set(turn) - {"text", "images", "poses", "reply"})
        reply = turn.get("reply")
        if unknown or not isinstance(reply, dict) or sorted(set(reply) - {"text", "pose_codes"}):
            raise InvalidInputError.make(
                f"{where} with the fields {sorted(turn)}" + (
                    f" and a reply with {sorted(reply)}" if isinstance(reply, dict) else ""),
                'a turn {"text", "images", "poses", "reply": {"text", "pose_codes"}}',
                "Send each earlier turn with the reply's text and pose codes (see /docs).")
        text, images, poses = turn_inputs(turn, where)
        codes = reply.get("pose_codes") or []
        if not isinstance(codes, list):
            raise InvalidInputError.make(f"pose_codes of type {type(codes).__name__} in {where}",
                                         "a list with the codes of each pose of the reply",
                                         "Send the reply's poses' codes as they came.")
        past.append(PastTurn(text, reply.get("text", ""),
                             [list(decode_pose_codes(c, f"reply pose {k} of {where}").codes)
                              for k, c in enumerate(codes)], images, poses))
    text, images, poses = turn_inputs(payload, "the new turn")
    return ChatWork(past, text, images, poses)


@serve.deployment(name="service", ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class Service:
    """Checks and decodes requests, runs them on the default model in this replica or on another model's deployment,
    turns every failure into a JSON answer."""

    def __init__(self, other_models: list[Any], settings_args: dict[str, Any]) -> None:
        self.settings = ServeSettings.from_args(settings_args)
        self.limits = self.settings.limits
        self.default_model = self.settings.models[0]
        self.local = ModelServer(self.default_model, settings_args)
        self.handles = dict(zip(self.settings.models[1:], other_models))
        # Each replica admits by the work it sees. For the default model that is all of its own queue. For another
        # model it is this replica's share of that model's traffic, which has as many replicas as this deployment:
        # one replica's worth either way.
        self.admissions = {model: WorkAdmission(1, self.limits.request_timeout_s) for model in self.settings.models}
        self.local_in_flight = 0

    def _model_call(self, model: str, method: str, *args: Any) -> Any:
        """An awaitable call of a `ModelServer` method: in this process for the default model, through the model's
        deployment handle for the others."""
        if model == self.default_model:
            value = getattr(self.local, method)(*args)
            return value if asyncio.iscoroutine(value) else _ready(value)
        return getattr(self.handles[model], method).remote(*args)

    # ------------------------------------------------------------------ request plumbing

    def _authorize(self, request: Request) -> None:
        expected = self.settings.api_key_sha256
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(api_key_digest(given), expected):
            raise AuthenticationError.make("a request " + ("with a wrong API key" if given else "without an API key"),
                                           "the service's API key",
                                           "Send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.")

    async def _payload(self, request: Request) -> dict[str, Any]:
        """The request's fields: a JSON object, or a multipart form (files become base64 IMAGE / POSE objects).
        The size is checked from Content-Length before anything is read (the server reads exactly that many)."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise LimitExceededError.make("a request body without a Content-Length", "a body of known length",
                                          "Send the body in one piece (no chunked transfer encoding).")
        if int(length) > self.limits.max_body_bytes:
            raise LimitExceededError.make(f"a request body of {int(length)} bytes",
                                          f"at most {self.limits.max_body_bytes} bytes",
                                          "Send fewer or smaller inputs per request.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await self._form(request)
        payload = parse_json(await request.body(), "the request body", InvalidInputError, MAX_REQUEST_JSON_DEPTH,
                             "a JSON object")
        if not isinstance(payload, dict):
            raise InvalidInputError.make(f"a JSON {type(payload).__name__} as the request body", "a JSON object",
                                         "Send the fields as an object (see /docs).")
        return payload

    async def _form(self, request: Request) -> dict[str, Any]:
        limit = self.limits.max_batch_items * 2
        try:
            form = await request.form(max_files=limit, max_fields=limit + 8)
        except Exception as exc:  # starlette's multipart errors: the request's fault
            raise InvalidInputError.make(f"a multipart body that cannot be parsed ({exc})",
                                         f"a multipart/form-data body with at most {limit} files",
                                         "Send the fields as a form (see /docs).") from None
        payload: dict[str, Any] = {}
        try:
            for name in set(form.keys()):
                values = []
                for value in form.getlist(name):
                    if hasattr(value, "read"):  # an uploaded file
                        data = base64.b64encode(await value.read()).decode("ascii")
                        values.append({"file": data, "name": value.filename or name} if "pose" in name
                                      else {"data": data})
                    else:
                        values.append(value)
                if name in ("bbox", "formats") and len(values) == 1 and isinstance(values[0], str):
                    text = values[0].strip()
                    payload[name] = (parse_json(text.encode(), f"the form field {name!r}", InvalidInputError, 4,
                                                "JSON") if text.startswith("[") else text or None)
                elif name in ("poses", "images"):
                    payload[name] = values  # a pair of files
                else:
                    payload[name] = values[0] if len(values) == 1 else values
        finally:
            await form.close()
        return payload

    async def _run(self, request: Request, task: str, parse: Callable[[dict[str, Any]], tuple[Any, bool]]
                   ) -> Response:
        started = time.perf_counter()
        try:
            self._authorize(request)
            if task == "chat" and request.headers.get("content-type", "").lower().startswith("multipart/"):
                raise InvalidInputError.make("a multipart body for /v1/chat", "a JSON body (a conversation nests "
                                             "its turns)", "Send the conversation as JSON (see /docs).")
            payload = await self._payload(request)
            model = payload.pop("model", None) or self.default_model
            if model not in self.admissions:
                raise InvalidInputError.make(f"model={model!r}", f"one of {list(self.settings.models)}",
                                             "GET /v1/model lists the loaded models.")
            formats = check_wire_formats(payload.pop("formats", None))
            if task in ("estimate", "chat") or "image" in payload or "images" in payload:
                work, single = await asyncio.to_thread(parse, payload)  # decoding images: off the event loop
            else:
                work, single = parse(payload)  # texts and pose arrays: cheaper than a thread hop
            parsed_ms = (time.perf_counter() - started) * 1000.0
            outcome = await self._admitted(model, task, work, list(formats))
        except (UniPoseError, BackPressureError) as exc:
            exc = self._overload(exc)
            return _error_response(exc, int(getattr(exc, "retry_after_s", None) or self.limits.retry_after_s))
        except Exception as exc:  # a failure of the service, not of the request: 500 with a one-line reason
            return _error_response(exc, self.limits.retry_after_s)
        if "error" in outcome:
            status, body = outcome["error"]
            return _json(status, body)
        return _json(200, {"results": outcome["results"], "single": single,
                           "service_ms": {"parse": round(parsed_ms, 3), **outcome["replica_ms"],
                                          "total": round((time.perf_counter() - started) * 1000.0, 3)}})

    async def _admitted(self, model: str, task: str, work: Work | ChatWork, formats: list[str]) -> Any:
        """Run a request on the model's deployment if its estimated wait leaves it time to finish (`WorkAdmission`;
        else 503 now, not a 504 later), charging its work while it runs."""
        admission = self.admissions[model]
        local = model == self.default_model
        if local and self.local_in_flight >= self.settings.max_ongoing_requests:
            raise ServiceOverloadedError.make(
                f"a request while this replica of {model!r} holds {self.local_in_flight}",
                f"at most {self.settings.max_ongoing_requests} per replica (a batch of {self.settings.max_batch} "
                f"and {self.limits.max_queued_requests} waiting)",
                f"Retry after {self.limits.retry_after_s} s, or add replicas.")
        kind = f"{task}:{work.mode}" if isinstance(work, Work) and work.mode else task
        inputs = len(work.items) if isinstance(work, Work) else 1
        ticket, retry_after_s = admission.admit(kind, inputs)
        if ticket is None:
            exc = ServiceOverloadedError.make(
                f"a {kind} request of {inputs} input(s) while {model!r} has about {admission.wait_s:.1f} s of work "
                "queued", f"requests that can finish within {admission.budget_s:.0f} s ({admission.budget_fraction:g} "
                f"of the {self.limits.request_timeout_s:g} s request timeout)",
                f"Retry after {retry_after_s:.0f} s, send fewer inputs per request, or add replicas.")
            exc.retry_after_s = retry_after_s
            raise exc
        report = None
        self.local_in_flight += local
        try:
            outcome = await self._call(self._model_call(model, "run", task, work, formats))
            report = outcome.get("model_s_per_input")
            return outcome
        finally:
            self.local_in_flight -= local
            admission.release(ticket, kind, report)

    def _overload(self, exc: BaseException) -> BaseException:
        if isinstance(exc, BackPressureError):
            return ServiceOverloadedError.make(
                "a request while the model's queue is full", f"at most {self.limits.max_queued_requests} waiting "
                f"requests per model", f"Retry after {self.limits.retry_after_s} s, or add replicas.")
        return exc

    async def _call(self, response: Any) -> Any:
        return await await_within(response, self.limits.request_timeout_s)

    # ------------------------------------------------------------------ parsing per task

    def _images(self, value: Any, what: str) -> tuple[list[Any], bool]:
        if is_batch_of_objects(value):
            check_batch(value, self.limits.max_batch_items, "images")
            return [decode_image(v, f"{what} {i}", self.limits.max_image_pixels) for i, v in enumerate(value)], False
        return [decode_image(value, what, self.limits.max_image_pixels)], True

    def _poses(self, value: Any, what: str) -> tuple[list[Any], bool]:
        if is_batch_of_objects(value):
            check_batch(value, self.limits.max_batch_items, "poses")
            return [decode_pose(v, f"{what} {i}") for i, v in enumerate(value)], False
        return [decode_pose(value, what)], True

    def _texts(self, value: Any, what: str) -> tuple[list[str], bool]:
        if isinstance(value, list):
            if not value:
                raise InvalidInputError.make("an empty list", "at least one input", "Send one input or a list.")
            check_batch(value, self.limits.max_batch_items, f"{what}s")
            return [decode_text(v, what, self.limits.max_text_chars) for v in value], False
        return [decode_text(value, what, self.limits.max_text_chars)], True

    def _parse_generate(self, payload: dict[str, Any]) -> tuple[Work, bool]:
        _unknown_fields(payload, {"text"}, "generate")
        texts, single = self._texts(_required(payload, "text", "generate"), "text")
        return Work(texts), single

    def _parse_estimate(self, payload: dict[str, Any]) -> tuple[Work, bool]:
        _unknown_fields(payload, {"image", "bbox"}, "estimate")
        images, single = self._images(_required(payload, "image", "estimate"), "image")
        bbox = payload.get("bbox")
        if bbox is None:
            boxes = [None] * len(images)
        elif single:
            boxes = [bbox]
        elif isinstance(bbox, list) and len(bbox) == len(images) and all(b is None or isinstance(b, list)
                                                                           for b in bbox):
            boxes = bbox
        else:
            raise InvalidInputError.make(f"bbox={bbox!r} for {len(images)} images",
                                         "a list with one box (or null) per image",
                                         "Send bbox as [box_or_null, ...] in the order of the images.")
        return Work(list(zip(images, boxes))), single

    def _parse_edit(self, payload: dict[str, Any]) -> tuple[Work, bool]:
        _unknown_fields(payload, {"pose", "instruction"}, "edit")
        poses, single = self._poses(_required(payload, "pose", "edit"), "pose")
        texts, single_text = self._texts(_required(payload, "instruction", "edit"), "instruction")
        if single_text and not single:
            texts = texts * len(poses)
        if len(texts) != len(poses):
            raise InvalidInputError.make(f"{len(poses)} poses and {len(texts)} instructions",
                                         "one instruction per pose, or one for all", "Send lists of equal length.")
        return Work(list(zip(poses, texts))), single

    def _parse_describe(self, payload: dict[str, Any]) -> tuple[Work, bool]:
        _unknown_fields(payload, set(DESCRIBE_MODES), "describe")
        given = [m for m in DESCRIBE_MODES if payload.get(m) is not None]
        if len(given) != 1:
            raise InvalidInputError.make(f"the fields {given or 'none'}",
                                         "exactly one of pose, image, poses=[a, b], images=[a, b]",
                                         "Send one kind of input per request.")
        mode = given[0]
        value = payload[mode]
        if mode == "pose":
            items, single = self._poses(value, "pose")
        elif mode == "image":
            items, single = self._images(value, "image")
        else:
            decode = self._poses if mode == "poses" else self._images
            pairs, single = self._pairs(value, mode)
            items = [(decode(a, f"{mode[:-1]} A of pair {i}")[0][0], decode(b, f"{mode[:-1]} B of pair {i}")[0][0])
                     for i, (a, b) in enumerate(pairs)]
        return Work(items, mode), single

    def _parse_chat(self, payload: dict[str, Any]) -> tuple[ChatWork, bool]:
        return parse_chat(payload, self.limits), True

    def _pairs(self, value: Any, what: str) -> tuple[list[Any], bool]:
        """[a, b] -> one pair; [[a, b], ...] -> a batch of pairs (a POSE array never has 2 rows at its top)."""
        def is_pair(v: Any) -> bool:
            return isinstance(v, list) and len(v) == 2 and all(
                isinstance(x, (str, dict)) or (isinstance(x, list) and len(x) != 2) for x in v)

        if is_pair(value):
            return [value], True
        if isinstance(value, list) and value and all(is_pair(v) for v in value):
            check_batch(value, self.limits.max_batch_items, f"{what} pairs")
            return value, False
        raise InvalidInputError.make(f"{what} of type {type(value).__name__}", f"a pair [{what[:-1]}_a, "
                                     f"{what[:-1]}_b] or a list of such pairs", f"Send {what}: [a, b].")

    # ------------------------------------------------------------------ routes

    @api.post("/v1/estimate", summary="image -> 3D pose", openapi_extra=_body_doc(
        {"image": _IMAGE_DOC, "bbox": {"description": "null, [x1, y1, x2, y2] in pixels, or one box or null per "
                                                       "image"}}, ["image"]))
    async def estimate(self, request: Request) -> Response:
        return await self._run(request, "estimate", self._parse_estimate)

    @api.post("/v1/generate", summary="text -> 3D pose", openapi_extra=_body_doc({"text": _TEXT_DOC}, ["text"]))
    async def generate(self, request: Request) -> Response:
        return await self._run(request, "generate", self._parse_generate)

    @api.post("/v1/edit", summary="pose + instruction -> edited pose", openapi_extra=_body_doc(
        {"pose": _POSE_DOC, "instruction": _TEXT_DOC}, ["pose", "instruction"]))
    async def edit(self, request: Request) -> Response:
        return await self._run(request, "edit", self._parse_edit)

    @api.post("/v1/describe", summary="pose / image / difference of two -> text", openapi_extra=_body_doc(
        {"pose": _POSE_DOC, "image": _IMAGE_DOC,
         "poses": {"description": "[POSE, POSE] or a list of such pairs: what changes from the first to the second"},
         "images": {"description": "[IMAGE, IMAGE] or a list of such pairs"}}, []))
    async def describe(self, request: Request) -> Response:
        return await self._run(request, "describe", self._parse_describe)

    @api.post("/v1/chat", summary="a conversation's new turn -> the assistant's reply (text and poses)",
              openapi_extra=_body_doc(_CHAT_DOC, ["text"], multipart=False))
    async def chat(self, request: Request) -> Response:
        return await self._run(request, "chat", self._parse_chat)

    @api.get("/v1/health", summary="liveness of the service and every model it serves (no API key needed)")
    async def health(self) -> Response:
        states = {}
        for name in self.settings.models:
            try:
                alive = await asyncio.wait_for(_awaited(self._model_call(name, "ping")), 10.0)
                states[name] = "ok" if alive else "closed"
            except Exception as exc:  # a replica that does not answer is what this endpoint reports
                states[name] = f"unavailable ({type(exc).__name__}: {exc})"
        healthy = all(s == "ok" for s in states.values())
        return _json(200 if healthy else 503, {"status": "ok" if healthy else "unavailable", "models": states,
                                               "api_key_required": self.settings.api_key_sha256 is not None,
                                               "version": __version__})

    @api.get("/v1/model", summary="the loaded models, limits, skeleton and formats")
    async def model(self, request: Request) -> Response:
        from unipose_sdk.body.skeleton import JOINT_NAMES, PARENTS

        try:
            self._authorize(request)
            infos = [await self._call(self._model_call(name, "info")) for name in self.settings.models]
        except UniPoseError as exc:
            return _error_response(exc, self.limits.retry_after_s)
        return _json(200, {"api": API_VERSION, "version": __version__, "models": infos,
                           "default_model": self.settings.models[0],
                           "limits": self.limits.__dict__, "max_batch": self.settings.max_batch,
                           "formats": list(WIRE_POSE_FORMATS),
                           "skeleton": {"joint_names": list(JOINT_NAMES), "parents": list(PARENTS)}})

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> Response:
        return HTMLResponse(_api_page(api.openapi()))

    @api.get("/", include_in_schema=False)
    async def index(self) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        if name not in files:  # only the package's own files: no path from the request reaches the filesystem
            return _json(404, {"error": {"type": "NotFound", "status": 404, "message": f"no file {name!r}"}})
        return FileResponse(files[name])


# ---------------------------------------------------------------------------------------------- building it


def deployment_name(index: int) -> str:
    return f"model-{index}"


def build_app(args: dict[str, Any]) -> Any:
    """The application builder (`import_path: unipose_sdk.serve.app:build_app` in a Serve config, the settings
    in its `args`; see `serve_config`)."""
    settings = ServeSettings.from_args(args or {})
    settings_args = settings.to_args()
    others = [
        serve.deployment(ModelServer).options(
            name=deployment_name(i), num_replicas=settings.replicas,
            max_ongoing_requests=settings.max_ongoing_requests,
            max_queued_requests=settings.handle_queue_limit,
            ray_actor_options=settings.replica_resources,
        ).bind(model, settings_args)
        for i, model in enumerate(settings.models[1:], start=1)
    ]
    # A replica takes in every request it might admit and refuses the rest itself (a typed 503): the default
    # model's own limit, what the other models' handles hold, and room for health and page requests. Requests
    # beyond that wait in Ray's proxy.
    ongoing = settings.max_ongoing_requests + len(others) * settings.handle_queue_limit + 64
    return Service.options(num_replicas=settings.replicas, max_ongoing_requests=max(1000, ongoing),
                           ray_actor_options=settings.replica_resources,  # it runs the default model
                           ).bind(others, settings_args)
