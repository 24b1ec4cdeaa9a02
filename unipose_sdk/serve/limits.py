"""The service's settings and limits: one frozen object that the CLI builds, `--print-config` writes into a Serve
config (as the application's `args`) and every replica reads back. Imports neither Ray nor FastAPI."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from unipose_sdk.errors import InvalidOptionError

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: exposing the service is a decision, not a default
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold and how long it may wait.

    max_body_bytes: the request body (JSON or multipart), checked before it is parsed (413).
    max_image_pixels: width x height of each image, checked from its header before it is decoded (413).
    max_text_chars: each prompt / instruction (422, as the SDK's own text errors).
    max_batch_items: inputs in one request (413); at most the deployment's batch size.
    max_queued_requests: requests that may wait for a model beyond the batch it is running: each replica admits
        max_batch + max_queued_requests per model (for a model other than the default, its handle holds up to
        max_queued_requests more beyond what its replicas admit); one more is answered 503 with Retry-After
        instead of growing a queue.
    request_timeout_s: a request still unanswered after this long is cancelled and answered 504.
    retry_after_s: the Retry-After of a 503.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 2000
    max_batch_items: int = 16
    max_queued_requests: int = 64
    request_timeout_s: float = 60.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidOptionError.make(f"{f.name}={value!r}", "a positive number",
                                              f"Pass e.g. {f.name}={f.default}.")


@dataclass(frozen=True)
class ServeSettings:
    """One service: the models (one Serve deployment each, the first is the default), how each runs, the limits.

    max_batch: the most inputs one model call takes; concurrent requests are batched up to it (`serve.batch`),
        and each replica accepts at least that many requests at once (`max_ongoing_requests`; Serve's default of 5
        would cap every batch at 5).
    batch_wait_ms: how long a replica under load waits for more requests before running a batch that is not full
        (a request that finds its replica without other work runs at once: `deployment.batch_wait_s`).
    api_key_sha256: the SHA-256 hex digest of the API key requests must carry (None: no key). Only the digest is
        kept, so neither the Serve config nor Ray's state holds the key itself.
    max_poses: most pose blocks one /v1/chat reply may hold (`AssistantOptions.max_poses`; each reserves its 82
        tokens of the model's context).
    gpus_per_replica: the GPUs Ray reserves for each model replica (a fraction shares one GPU between replicas).
        Ray hides every GPU from an actor that reserves none (an empty CUDA_VISIBLE_DEVICES), so a replica runs
        on a GPU only with a share of one: None means 1 with device="cuda" and 0 otherwise.
    compile: compile the decoder calls (`BaseOptions.compile`). Off by default in a service, on every device:
        concurrent requests form batches of every size from 1 to max_batch, and each new batch shape would stall
        the requests in it for seconds to a minute of compiling.
    """

    models: tuple[str, ...] = ("unipose-tiny",)
    backend: str = "auto"
    device: str = "auto"
    dtype: str | None = None
    max_new_tokens: int = 128
    replicas: int = 1
    max_batch: int = 16
    batch_wait_ms: float = 20.0
    threads_per_replica: int = 1
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key_sha256: str | None = None
    max_poses: int = 2
    gpus_per_replica: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise InvalidOptionError.make(f"models={self.models!r}", "one or more model names or directories",
                                          "Pass --model unipose-tiny or a model directory.")
        if len(set(self.models)) != len(self.models):
            raise InvalidOptionError.make(f"models={list(self.models)}", "each model once",
                                          "Remove the repeated --model.")
        for name in ("replicas", "max_batch", "threads_per_replica", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError.make(f"{name}={value!r}", "a positive integer", f"Pass e.g. {name}=1.")
        if isinstance(self.max_poses, bool) or not isinstance(self.max_poses, int) or not 0 <= self.max_poses <= 16:
            raise InvalidOptionError.make(f"max_poses={self.max_poses!r}", "an int in [0, 16]",
                                          "Pass e.g. max_poses=2.")
        if not (isinstance(self.batch_wait_ms, (int, float)) and 0 <= self.batch_wait_ms <= 1000):
            raise InvalidOptionError.make(f"batch_wait_ms={self.batch_wait_ms!r}", "a number in [0, 1000]",
                                          "Pass e.g. batch_wait_ms=20.")
        if not isinstance(self.compile, bool):
            raise InvalidOptionError.make(f"compile={self.compile!r}", "True or False", "Pass compile=False.")
        gpus = self.gpus_per_replica
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0
                                 or (gpus > 1 and gpus != int(gpus))):
            raise InvalidOptionError.make(f"gpus_per_replica={gpus!r}",
                                          "0, a fraction of one GPU in (0, 1], or a whole number of GPUs",
                                          "Pass e.g. --gpus-per-replica 0.5 to share one GPU between 2 replicas.")
        if self.device == "cpu" and gpus:
            raise InvalidOptionError.make(f"device='cpu' with gpus_per_replica={gpus!r}",
                                          "GPUs reserved only for replicas that run on a GPU",
                                          "Pass --device cuda (or auto), or leave --gpus-per-replica out.")
        if self.device == "cuda" and gpus == 0:
            raise InvalidOptionError.make("device='cuda' with gpus_per_replica=0",
                                          "a share of a GPU for replicas that run on one (Ray hides the GPUs from "
                                          "an actor that reserves none)",
                                          "Leave --gpus-per-replica out (1 GPU each) or pass a fraction like 0.5.")
        if self.limits.max_batch_items > self.max_batch:
            object.__setattr__(self, "limits", dataclasses.replace(self.limits, max_batch_items=self.max_batch))

    @property
    def replica_gpus(self) -> float:
        """The GPUs Ray reserves for one model replica (see `gpus_per_replica`)."""
        if self.gpus_per_replica is not None:
            return float(self.gpus_per_replica)
        return 1.0 if self.device == "cuda" else 0.0

    @property
    def replica_resources(self) -> dict[str, float]:
        """`ray_actor_options` of a replica that runs a model: its CPU threads and its GPU share."""
        resources: dict[str, float] = {"num_cpus": self.threads_per_replica}
        if self.replica_gpus:
            resources["num_gpus"] = self.replica_gpus
        return resources

    @property
    def max_ongoing_requests(self) -> int:
        """Per replica: a full batch plus the admitted waiting requests. At least the batch size, or no full batch
        could form; and the waiting requests wait inside the replica's batch queue, where waiting costs nothing,
        rather than in the handle's queue, which Serve drains by probing the replicas (measured on 2 cores with
        64 clients: 26 requests/s with 32 admitted per replica, 73 with all 64 admitted)."""
        return self.max_batch + self.limits.max_queued_requests

    @property
    def handle_queue_limit(self) -> int:
        """Requests a model's handle may hold before it answers 503. Serve counts a request as queued at the handle
        until a replica has accepted it, so a burst that the replicas would admit all at once sits in the handle's
        queue first: the limit covers what every replica admits plus the waiting requests, or such a burst is
        refused while the replicas are idle."""
        return self.replicas * self.max_ongoing_requests + self.limits.max_queued_requests

    def to_args(self) -> dict[str, Any]:
        """The plain-JSON form: a Serve config's application `args` (`from_args` reads it back)."""
        args = dataclasses.asdict(self)
        args["models"] = list(self.models)
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise InvalidOptionError.make(f"the service settings {unknown}", f"names among {sorted(known)}",
                                          "Fix the application's args in the Serve config.")
        values = dict(args)
        if "models" in values:
            values["models"] = tuple(values["models"])
        if isinstance(values.get("limits"), dict):
            limit_names = {f.name for f in dataclasses.fields(ServeLimits)}
            bad = sorted(set(values["limits"]) - limit_names)
            if bad:
                raise InvalidOptionError.make(f"the limits {bad}", f"names among {sorted(limit_names)}",
                                              "Fix the limits in the Serve config.")
            values["limits"] = ServeLimits(**values["limits"])
        return cls(**values)


class WorkAdmission:
    """Admission by the work a model has in hand, beside the request counts of `ServeLimits.max_queued_requests`.

    Counting requests does not bound the wait: sixteen descriptions of up to 128 tokens each are one request, as
    one short prompt is. So every request is charged, while it is in flight, its inputs times the replica seconds
    one input of its kind ("generate", "describe:image" ...) takes, an exponential average of what the replicas
    report (a batch's model time over its inputs, under whatever batching the load forms). A request whose wait
    (the charges ahead of it, spread over the replicas) plus its own charge would pass `budget_fraction` of the
    request timeout is refused at once with 503 and a Retry-After of about the excess, where admitting it would
    only have let it run into a 504. A kind with no report yet is charged nothing: the request counts bound it
    until its first answer. Single-threaded: a service replica calls it from its event loop.
    """

    def __init__(self, replicas: int, timeout_s: float, budget_fraction: float = 0.8, smoothing: float = 0.3):
        self.replicas = max(1, int(replicas))
        self.budget_fraction = float(budget_fraction)
        self.budget_s = float(timeout_s) * self.budget_fraction
        self.smoothing = float(smoothing)
        self.seconds_per_input: dict[str, float] = {}
        self.charged_s: dict[int, float] = {}  # ticket -> seconds charged
        self._next_ticket = 0

    @property
    def wait_s(self) -> float:
        """The estimated wait of a request admitted now: the charged work spread over the replicas."""
        return sum(self.charged_s.values()) / self.replicas

    def admit(self, kind: str, inputs: int) -> tuple[int | None, float]:
        """(a ticket to `release`, or None when refused; the Retry-After in seconds a refusal should carry)."""
        charge = self.seconds_per_input.get(kind, 0.0) * max(1, int(inputs))
        over_s = self.wait_s + charge / self.replicas - self.budget_s
        if charge > 0.0 and over_s > 0.0 and self.charged_s:  # an idle model takes any one request
            return None, max(1.0, float(math.ceil(over_s)))
        ticket = self._next_ticket
        self._next_ticket += 1
        self.charged_s[ticket] = charge
        return ticket, 0.0

    def release(self, ticket: int | None, kind: str, seconds_per_input: float | None = None) -> None:
        """The request is answered (or failed): drop its charge, and learn from the replica's report if any."""
        if ticket is not None:
            self.charged_s.pop(ticket, None)
        if seconds_per_input is not None and seconds_per_input > 0.0:
            known = self.seconds_per_input.get(kind)
            self.seconds_per_input[kind] = (seconds_per_input if known is None else
                                            known + self.smoothing * (seconds_per_input - known))


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


APP_NAME = "unipose"


def serve_config(settings: ServeSettings, host: str, port: int) -> dict[str, Any]:
    """A Serve config file for `serve deploy` on a cluster: the same application (`unipose_sdk.serve.app:build_app`),
    settings and HTTP options."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port, "request_timeout_s": settings.limits.request_timeout_s + 5},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": "unipose_sdk.serve.app:build_app",
                          "args": settings.to_args()}],
    }
