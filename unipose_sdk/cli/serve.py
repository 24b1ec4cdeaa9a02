"""`unipose serve`: the task classes as an HTTP service (Ray Serve) with a web demo.

Without `--address` it starts a private Ray instance in this process, runs the application, prints the URL and
serves until Ctrl-C / SIGTERM, then shuts Serve and Ray down (no process is left behind). With `--address` it
joins an existing Ray cluster and, on exit, deletes only its own application. `--print-config` prints a Serve
config (YAML) for `serve deploy` instead of serving.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from unipose_sdk.cli.tasks import add_runtime_flags, non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    from unipose_sdk.serve.limits import ServeSettings


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from unipose_sdk.errors import InvalidOptionError
    from unipose_sdk.serve.limits import ServeLimits, ServeSettings, api_key_digest

    digest = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise InvalidOptionError.make(f"--api-key-env {args.api_key_env}, a variable that is unset or empty",
                                          "the name of an environment variable holding the API key",
                                          f"export {args.api_key_env}=... before starting the service.")
        digest = api_key_digest(key)
    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
                         max_text_chars=args.max_text_chars, max_batch_items=args.max_batch,
                         max_queued_requests=args.max_queued, request_timeout_s=args.request_timeout_s)
    models = tuple(args.model or ["unipose-tiny"])
    # A local model directory is named by its absolute path: the replicas may not share this working directory.
    models = tuple(str(Path(m).resolve()) if Path(m).exists() else m for m in models)
    return ServeSettings(models=models, backend=args.backend, device=args.device, dtype=args.dtype,
                         max_new_tokens=args.max_new_tokens, replicas=args.replicas, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, threads_per_replica=args.threads_per_replica,
                         limits=limits, api_key_sha256=digest, max_poses=args.max_poses,
                         gpus_per_replica=args.gpus_per_replica, compile=args.compile)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.print_config:
        import yaml

        from unipose_sdk.serve.limits import serve_config

        sys.stdout.write(yaml.safe_dump(serve_config(settings, args.host, args.port), sort_keys=False))
        return 0

    import signal
    import time

    import ray
    from ray import serve

    from unipose_sdk.serve.app import build_app
    from unipose_sdk.serve.limits import APP_NAME

    # Ray installs its own SIGTERM handler in ray.init, which ends the process at once: the command's own handlers
    # (see unipose_sdk.cli.main) are put back so that SIGTERM shuts Serve and Ray down as Ctrl-C does.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    # Ray reports usage statistics over the network unless told not to; an SDK service does not phone home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = args.address is None
    if local:  # a private instance: never attach to a cluster that RAY_ADDRESS or a running instance would name
        needed = settings.replicas * settings.threads_per_replica * len(settings.models)
        # The GPUs are counted the way the replicas will see them (torch), not left to Ray's own detection.
        gpus = _local_gpu_count() if settings.replica_gpus else 0
        _check_gpus(settings, gpus)  # before Ray starts: this machine's GPUs are all the instance will have
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed), num_gpus=gpus, include_dashboard=False,
                 log_to_driver=args.verbose, logging_level="WARNING")
    else:
        ray.init(address=args.address, log_to_driver=args.verbose, logging_level="WARNING")
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)
    try:
        if not local:
            _check_gpus(settings, ray.cluster_resources().get("GPU", 0.0))
        serve.start(http_options={"host": args.host, "port": args.port,
                                  "request_timeout_s": settings.limits.request_timeout_s + 5},
                    logging_config={"log_level": "INFO" if args.verbose else "WARNING"})
        serve.run(build_app(settings.to_args()), name=APP_NAME, route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        print(f"unipose serve: {url}/ (web demo), {url}/docs (API), models {', '.join(settings.models)}; "
              f"{settings.replicas} replica(s) per model, batches up to {settings.max_batch}"
              + ("; API key required" if settings.api_key_sha256 else "") + ". Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
            print("unipose serve: stopped", file=sys.stderr, flush=True)


def _local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_gpus(settings: ServeSettings, gpus_in_cluster: float) -> None:
    """Refuse, before anything is deployed, replicas that reserve more GPUs than Ray sees: Serve would otherwise
    wait for them forever."""
    from unipose_sdk.errors import InvalidOptionError

    needed = settings.replica_gpus * settings.replicas * len(settings.models)
    if needed > gpus_in_cluster + 1e-9:
        raise InvalidOptionError.make(
            f"{settings.replicas} replica(s) x {len(settings.models)} model(s) x {settings.replica_gpus:g} GPU "
            f"(--device {settings.device}) = {needed:g} GPUs, where Ray sees {gpus_in_cluster:g}",
            "at most as many GPUs as the Ray instance has",
            "Pass --gpus-per-replica with a fraction (e.g. 0.5 shares one GPU between 2 replicas), fewer "
            "--replicas, or --device cpu.")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve the tasks over HTTP (Ray Serve) with a web demo")
    p.add_argument("--model", action="append", metavar="NAME|DIR",
                   help="'unipose-tiny' (default) or a model / export directory; repeat for several models (one "
                        "deployment each, the first is the default)")
    add_runtime_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N",
                   help="most text tokens per answer (a pose answer's 82-token pose block is not counted)")
    p.add_argument("--max-poses", type=int, default=2, metavar="N",
                   help="most poses per /v1/chat reply (default 2; each reserves its 82 tokens of the context)")
    p.add_argument("--replicas", type=positive_int, default=1, metavar="N", help="replicas per model")
    p.add_argument("--max-batch", type=positive_int, default=16, metavar="B",
                   help="most inputs per model call: concurrent requests are batched up to B (also the most "
                        "inputs one request may hold)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, metavar="MS",
                   help="how long a replica under load waits to fill a batch (default 20; a request that finds "
                        "the replica idle runs at once)")
    p.add_argument("--threads-per-replica", type=positive_int, default=1, metavar="N",
                   help="CPU threads (and Ray CPUs) per replica")
    p.add_argument("--compile", action="store_true",
                   help="compile the decoder calls (CUDA graphs on CUDA). Off by default: concurrent requests form "
                        "batches of every size up to --max-batch, and each new shape compiles for seconds to a "
                        "minute while its requests wait")
    p.add_argument("--gpus-per-replica", type=non_negative_float, default=None, metavar="G",
                   help="GPUs Ray reserves for each model replica (default 1 with --device cuda, else 0; a "
                        "fraction such as 0.5 shares one GPU between replicas). Ray hides the GPUs from a "
                        "replica that reserves none")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                   help="join an existing Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in environment variable VAR (only its SHA-256 is kept)")
    p.add_argument("--max-body-mb", type=positive_float, default=32.0, metavar="MB", help="largest request body")
    p.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096, metavar="N",
                   help="largest image (width x height)")
    p.add_argument("--max-text-chars", type=positive_int, default=2000, metavar="N", help="longest prompt")
    p.add_argument("--max-queued", type=positive_int, default=64, metavar="N",
                   help="requests waiting per model beyond those running; more are answered 503 with Retry-After")
    p.add_argument("--request-timeout-s", type=positive_float, default=60.0, metavar="S",
                   help="requests unanswered after S seconds are cancelled and answered 504")
    p.add_argument("--print-config", action="store_true",
                   help="print a Serve config (YAML) for `serve deploy` on a cluster, and exit")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the replicas' logs")
    p.set_defaults(handler=_serve)
