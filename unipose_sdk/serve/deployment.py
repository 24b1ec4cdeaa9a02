"""`ModelServer`, one loaded model: the four task classes over one shared session, with dynamic batching. The
default model's runs inside each replica of the service (`app.Service`); every further model is a Serve deployment
of `ModelServer` that the service calls through a handle.

Each task has its own `serve.batch` queue. Concurrent requests for the same task (each holding one or more inputs)
are gathered for up to `batch_wait_ms` (only under load: `batch_wait_s`), to at most `max_batch` inputs, and run
as ONE call of the task class, which takes real batches; a batch's results are bit-for-bit those of its rows run
alone (the task classes' padding is exact, as `tests/test_reliability_concurrency.py` checks). The model call
runs on the replica's event loop: the requests that arrive meanwhile wait in Ray's queue and form the next batch.
A worker thread per call only competes with the loop for the GIL: measured through the HTTP service on 2 cores,
16 clients then formed batches of 1.4 and got 27 requests/s, against 7.2 and 52 inline. If a batch fails on one
request's input, every request of it is run again alone, so only the faulty one gets the error.

A conversation turn (`chat`) is not batched: conversations differ in history and length. The request carries the
whole conversation; the replica's one Assistant restores its earlier turns (`Assistant.restore`: no model run for
them), asks the new one and forgets it all again, so any replica can answer any turn and nothing is kept between
requests. The turn runs inline on the event loop like a batch, so a replica runs one turn at a time, and chat
requests wait under the same admission limits as the task requests (a full queue is a 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve

from unipose_sdk.errors import UniPoseError
from unipose_sdk.serve.limits import ServeSettings
from unipose_sdk.serve.wire import encode_result, error_body

TASKS = ("estimate", "generate", "edit", "describe")
DESCRIBE_MODES = ("pose", "image", "poses", "images")


@dataclass
class Work:
    """One request's inputs for one task (checked and decoded by the service); `mode` is the describe kind."""

    items: list[Any]
    mode: str = ""


@dataclass
class ChatWork:
    """One conversation turn (checked and decoded by the service): the earlier turns as `PastTurn`s and the new
    one; a pose given by its codes is a `wire.PoseCodes` until the replica, which knows the codebook, checks it."""

    history: list[Any]
    text: str
    images: list[Any]
    poses: Any  # a list, or {"A": ..., "B": ...}


@dataclass
class Answered:
    """What a batch queue hands one request: its results (or its typed error as (status, body)) and the seconds of
    model time per input of the call that ran it, which the service's `WorkAdmission` learns the cost of work from."""

    outcome: Any
    seconds_per_input: float
    batch_inputs: int = 1  # inputs of the model call that ran it


def batch_wait_s(waiting: int, last_batch_inputs: int, batch_wait_ms: float) -> float:
    """How long a batch opened by a new request waits for more: `batch_wait_ms` under load, nothing when the
    request is alone (no other request of its task in the queue, and the task's last batch held one input).

    A lone client then never waits for company that is not coming (its requests arrive while the replica is
    idle), while under load the requests one batch answered come back within milliseconds of each other and are
    gathered again. Measured through the HTTP service on 2 cores (ONNX Runtime, 16 clients): batches of 6.8 with
    a 5 ms wait, 8.4 with 20 ms, and one client at 30 ms p50 either way."""
    if waiting == 0 and last_batch_inputs <= 1:
        return 0.0
    return batch_wait_ms / 1000.0


def _items_in(works: Sequence[Work]) -> int:
    return sum(len(w.items) for w in works)


# The batch size and wait are set per replica from the settings; these are only the decorator's defaults.
_batched = serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, batch_size_fn=_items_in)


class ModelServer:
    """A replica: one model, its four task objects (one batch queue each) and an Assistant for /v1/chat turns."""

    def __init__(self, model: str, settings_args: dict[str, Any]) -> None:
        import torch

        from unipose_sdk.options import AssistantOptions, DescriberOptions, EditorOptions, EstimatorOptions
        from unipose_sdk.tasks import Assistant, Describer, Editor, Estimator, Generator

        settings = ServeSettings.from_args(settings_args)
        torch.set_num_threads(settings.threads_per_replica)  # this process is the replica's own
        where = {"model": model, "backend": settings.backend, "device": settings.device, "dtype": settings.dtype,
                 "max_new_tokens": settings.max_new_tokens, "compile": settings.compile}
        self.model = model
        self.settings = settings
        self.generator = Generator.from_pretrained(**where)
        session = self.generator.session
        self.estimator = Estimator.from_session(session, EstimatorOptions(**where))
        self.editor = Editor.from_session(session, EditorOptions(**where))
        self.describer = Describer.from_session(session, DescriberOptions(**where))
        self.assistant = Assistant.from_session(session, AssistantOptions(**where, max_poses=settings.max_poses))
        self.queues = {"estimate": self._estimate, "generate": self._generate, "edit": self._edit,
                       "describe": self._describe}
        for queue in self.queues.values():  # the wait is set per request (`batch_wait_s`)
            queue.set_max_batch_size(settings.max_batch)
        self.waiting = dict.fromkeys(TASKS, 0)  # requests of each task inside its batch queue
        self.last_batch_inputs = dict.fromkeys(TASKS, 0)

    # ------------------------------------------------------------------ what the service calls

    async def run(self, task: str, work: Work | ChatWork, formats: Sequence[str] = ()) -> dict[str, Any]:
        """One request: its results as wire JSON (see `wire`), or {"error": (status, body)} for a typed error."""
        started = time.perf_counter()
        if isinstance(work, ChatWork):
            try:
                outcome: Any = [self._chat(work)]  # inline: one turn at a time on this replica
            except UniPoseError as exc:
                outcome = error_body(exc)
            seconds_per_input = time.perf_counter() - started
        else:
            queue = self.queues[task]
            queue.set_batch_wait_timeout_s(batch_wait_s(self.waiting[task], self.last_batch_inputs[task],
                                                        self.settings.batch_wait_ms))
            self.waiting[task] += 1
            try:
                answered = await queue(work)
            finally:
                self.waiting[task] -= 1
            outcome, seconds_per_input = answered.outcome, answered.seconds_per_input
            self.last_batch_inputs[task] = answered.batch_inputs
        if isinstance(outcome, tuple):
            return {"error": outcome, "model_s_per_input": seconds_per_input}
        batched_ms = (time.perf_counter() - started) * 1000.0
        if formats:  # rendering and writing files: off the event loop, which keeps gathering the next batch
            results = await asyncio.to_thread(lambda: [encode_result(r, formats) for r in outcome])
        else:
            results = [encode_result(r) for r in outcome]
        return {"results": results, "model_s_per_input": seconds_per_input,
                "replica_ms": {"queue_and_model": round(batched_ms, 3),
                               "total": round((time.perf_counter() - started) * 1000.0, 3)}}

    def _chat(self, work: ChatWork) -> Any:
        """One conversation turn: the new turn checked, the history restored (both before any model run), the turn
        asked; the Assistant is reset afterwards, whatever happened, so no conversation outlives its request."""
        from unipose_sdk.tasks.assistant import PastTurn, check_turn

        session = self.assistant.session
        with_codes = _reply_poses(session, [work.poses, *(t.poses for t in work.history)])
        poses, *history_poses = with_codes
        check_turn(work.text, work.images, poses)
        try:
            self.assistant.restore([PastTurn(t.text, t.reply_text, t.reply_codes, t.images, p)
                                    for t, p in zip(work.history, history_poses)])
            return self.assistant.ask(work.text, images=work.images, poses=poses)
        finally:
            self.assistant.reset()

    def info(self) -> dict[str, Any]:
        session = self.generator.session
        config = session.config
        return {"name": self.model, "run": session.run_info().__dict__, "max_new_tokens": self.settings.max_new_tokens,
                "max_poses": self.settings.max_poses,
                "max_batch": self.settings.max_batch, "replicas": self.settings.replicas,
                "image_tokens": int(config.image_tokens), "max_text_tokens": int(config.max_text_tokens)}

    def ping(self) -> bool:
        return self.generator.session is not None

    # ------------------------------------------------------------------ the batch queues

    @_batched
    async def _estimate(self, works: list[Work]) -> list[Answered]:
        def call(items: list[Any]) -> list[Any]:
            boxes = [box for _, box in items]
            return self.estimator.estimate([image for image, _ in items],
                                           bbox=boxes if any(b is not None for b in boxes) else None)
        return _run_batch(works, call)

    @_batched
    async def _generate(self, works: list[Work]) -> list[Answered]:
        return _run_batch(works, self.generator.generate)

    @_batched
    async def _edit(self, works: list[Work]) -> list[Answered]:
        return _run_batch(works, lambda items: self.editor.edit([p for p, _ in items], [t for _, t in items]))

    @_batched
    async def _describe(self, works: list[Work]) -> list[Answered]:
        # One call per kind of input present in the batch (a pose and an image cannot share a prompt batch).
        outcomes: list[Any] = [None] * len(works)
        for mode in DESCRIBE_MODES:
            picked = [i for i, w in enumerate(works) if w.mode == mode]
            if picked:
                done = _run_batch([works[i] for i in picked],
                                  lambda items, m=mode: self.describer.describe(**{m: items}))
                for i, outcome in zip(picked, done):
                    outcomes[i] = outcome
        return outcomes


def _reply_poses(session: Any, turns_poses: list[Any]) -> list[Any]:
    """Each turn's poses with every `PoseCodes` checked against the model's codebook (InvalidInputError, before
    any work) and then made a ReplyPose (its codes go into the prompt unchanged; the pose is decoded from them)."""
    import torch

    from unipose_sdk.results import ReplyPose
    from unipose_sdk.serve.wire import PoseCodes

    found = []
    for t, poses in enumerate(turns_poses):
        items = poses.items() if isinstance(poses, dict) else enumerate(poses or [])
        for key, pose in items:
            if isinstance(pose, PoseCodes):
                where = "the new turn" if t == 0 else f"turn {t - 1} of the history"
                session.prompts.pose_ids(list(pose.codes), what=f"the codes of pose {key} of {where}")
                found.append(pose)
    if not found:
        return turns_poses
    with session.lock, torch.inference_mode():
        decoded = session.decode_poses(torch.tensor([p.codes for p in found], dtype=torch.long))
    made = {id(p): ReplyPose(decoded[i], list(p.codes)) for i, p in enumerate(found)}

    def swap(pose: Any) -> Any:
        return made.get(id(pose), pose)

    return [{k: swap(v) for k, v in poses.items()} if isinstance(poses, dict) else [swap(v) for v in poses or []]
            for poses in turns_poses]


def _run_batch(works: Sequence[Work], call: Callable[[list[Any]], list[Any]]) -> list[Answered]:
    """Run every work's items as one call and hand each work its results; on a typed error, run each work alone so
    that only the work at fault gets it (as its (status, body) tuple)."""
    items = [item for w in works for item in w.items]
    started = time.perf_counter()
    try:
        results = call(items)
    except UniPoseError as exc:
        if len(works) == 1:
            return [Answered(error_body(exc), (time.perf_counter() - started) / max(1, len(items)), len(items))]
        return [_run_batch([w], call)[0] for w in works]
    seconds_per_input = (time.perf_counter() - started) / max(1, len(items))
    answered, start = [], 0
    for w in works:
        answered.append(Answered(results[start:start + len(w.items)], seconds_per_input, len(items)))
        start += len(w.items)
    return answered
