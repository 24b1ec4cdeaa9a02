"""Load test of `unipose serve` on loopback: does batching across clients pay, and is overload refused cleanly?

    python benchmarks/serve_load.py                                   # 1, 4, 16, 64 clients x 24 requests
    python benchmarks/serve_load.py --clients 1 16 --requests 10 -o serve-load.json

Starts `unipose serve` (the embedded unipose-tiny, one replica, batches up to --max-batch) as a subprocess and, for
each client count, runs that many closed-loop clients (threads, one keep-alive connection each), every client
sending --requests generate requests one after another (one prompt each, round-robin over 16 fixed prompts). The
first --warmup requests of every client are sent and checked but not timed. Per level: throughput (timed requests
per second of the timed wall time), latency p50 / p90 / p99 (client side, ms), the batch sizes the service formed
(each result's `batch_size`), errors by HTTP status, and whether every pose equals a direct `Generator` call in
this process (pose codes). Then one burst level above the overload limit (--overload-clients, all at once, each
with a full batch in one request) counts the 503s and checks each carries Retry-After and the typed error.

The service and the clients share the machine: on 2 cores the clients' own HTTP work competes with the service.
The last line of stdout is one JSON document (also written to -o): command, machine, versions, settings, levels.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPTS = [
    "a person squatting with both arms raised", "a person standing with arms at the sides", "a person sitting",
    "a person kneeling on the left knee", "a person waving the right hand", "a person walking forward",
    "a person bending forward to touch the toes", "a person with arms crossed", "a person lunging forward",
    "a person standing on one leg", "a person jumping with arms up", "a person lying down",
    "a person stretching both arms to the sides", "a person leaning to the left", "a person bowing",
    "a person with the hands on the hips",
]


def portable_argv(argv: list[str]) -> list[str]:
    """The command line as recorded in the results: a --model directory and an absolute -o path by their names (no
    machine paths)."""
    def portable(i: int, a: str) -> str:
        named = i and (argv[i - 1] == "--model" or (argv[i - 1] in ("-o", "--output") and Path(a).is_absolute()))
        return Path(a).name if named else a

    return [portable(i, a) for i, a in enumerate(argv)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode()
    connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    return response.status, payload, {k.lower(): v for k, v in response.getheaders()}


def answer_of(result: dict) -> object:
    """What must equal the direct call: the pose codes of a pose result, the text of a description."""
    return result.get("pose_codes") if result.get("kind") != "DescribeResult" else result.get("text")


def run_level(port: int, path: str, clients: int, requests: int, warmup: int, bodies: list[dict],
              expected: list[object]) -> dict:
    """`clients` closed-loop clients, `warmup` + `requests` one-input requests each."""
    records: list[list[dict]] = [[] for _ in range(clients)]
    start_barrier = threading.Barrier(clients + 1)
    timed_barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start_barrier.wait()
        for i in range(warmup + requests):
            if i == warmup:
                timed_barrier.wait()
            k = (c + i) % len(bodies)
            t0 = time.perf_counter()
            try:
                status, payload, _ = post(connection, path, bodies[k])
            except (OSError, http.client.HTTPException) as exc:
                status, payload = -1, {"error": {"type": type(exc).__name__}}
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            latency_ms = (time.perf_counter() - t0) * 1000.0
            result = payload.get("results", [{}])[0] if status == 200 else {}
            records[c].append({"timed": i >= warmup, "status": status, "latency_ms": latency_ms,
                               "batch_size": result.get("batch_size"),
                               "identical": status == 200 and answer_of(result) == expected[k],
                               "end": time.perf_counter()})
        connection.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start_barrier.wait()
    timed_barrier.wait()
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    timed = [r for rs in records for r in rs if r["timed"]]
    warm = [r for rs in records for r in rs if not r["timed"]]
    wall_s = max(r["end"] for r in timed) - t_start
    ok = [r for r in timed if r["status"] == 200]
    latencies = [r["latency_ms"] for r in ok]
    batches: dict[str, int] = {}
    for r in ok:
        batches[str(r["batch_size"])] = batches.get(str(r["batch_size"]), 0) + 1
    errors: dict[str, int] = {}
    for r in timed + warm:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    return {
        "clients": clients, "requests_per_client": requests, "warmup_per_client": warmup,
        "timed_requests": len(timed), "ok": len(ok), "errors_by_status": errors,
        "wall_s": round(wall_s, 3), "throughput_rps": round(len(ok) / wall_s, 2),
        "latency_ms": {"p50": round(percentile(latencies, 50), 2), "p90": round(percentile(latencies, 90), 2),
                       "p99": round(percentile(latencies, 99), 2), "mean": round(statistics.fmean(latencies), 2),
                       "max": round(max(latencies), 2)} if latencies else {},
        "batch_size_counts": dict(sorted(batches.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1)),
        "mean_batch_size": round(statistics.fmean(r["batch_size"] for r in ok), 2) if ok else None,
        "identical_to_direct": sum(r["identical"] for r in timed + warm),
        "checked": len(timed) + len(warm),
    }


def run_overload(port: int, path: str, clients: int, body: dict) -> dict:
    """All `clients` at once, each one request holding a full batch: more than the queue admits."""
    answers: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait()
        try:
            answer = post(connection, path, body)
        except (OSError, http.client.HTTPException) as exc:
            answer = (-1, {"error": {"type": type(exc).__name__}}, {})
        with lock:
            answers.append(answer)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    refused = [a for a in answers if a[0] == 503]
    return {"clients": clients, "items_per_request": len(next(iter(body.values()))), "statuses": statuses,
            "all_200_or_503": set(statuses) <= {"200", "503"},
            "503_with_retry_after": sum("retry-after" in h for _, _, h in refused),
            "503_typed": sum(b.get("error", {}).get("type") == "ServiceOverloadedError" for _, b, _ in refused)}


def run_handle_levels(args: argparse.Namespace, works: list, expected: list[object]) -> list[dict]:
    """The same closed-loop levels one layer down: a bare `ModelServer` deployment (what the service runs in its
    replicas) called through its Serve handle from this process, with no HTTP proxy and no FastAPI, to tell the
    batching of the model from the cost of the HTTP path."""
    import asyncio

    import ray
    from ray import serve

    from unipose_sdk.serve.deployment import ModelServer
    from unipose_sdk.serve.limits import APP_NAME, ServeLimits, ServeSettings

    settings = ServeSettings(models=(args.model,), backend=args.backend, device=args.device,
                             gpus_per_replica=args.gpus_per_replica, compile=args.compile, replicas=args.replicas,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             threads_per_replica=args.threads_per_replica, max_new_tokens=args.max_new_tokens,
                             limits=ServeLimits(max_queued_requests=args.max_queued))
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        model_server = serve.deployment(ModelServer).options(
            name="model", num_replicas=settings.replicas, max_ongoing_requests=settings.max_ongoing_requests,
            max_queued_requests=settings.handle_queue_limit,
            ray_actor_options=settings.replica_resources)
        handle = serve.run(model_server.bind(args.model, settings.to_args()), name=APP_NAME, route_prefix=None)

        async def level(clients: int) -> dict:
            records: list[dict] = []

            async def client(c: int) -> None:
                for i in range(args.warmup + args.requests):
                    k = (c + i) % len(works)
                    t0 = time.perf_counter()
                    out = await handle.run.remote(args.task, works[k])
                    result = out.get("results", [{}])[0]
                    records.append({"timed": i >= args.warmup, "latency_ms": (time.perf_counter() - t0) * 1000.0,
                                    "ok": "results" in out, "batch_size": result.get("batch_size"),
                                    "identical": answer_of(result) == expected[k], "end": time.perf_counter(),
                                    "start": t0})

            await asyncio.gather(*[client(c) for c in range(clients)])
            timed = [r for r in records if r["timed"]]
            wall_s = max(r["end"] for r in timed) - min(r["start"] for r in timed)
            latencies = [r["latency_ms"] for r in timed if r["ok"]]
            return {"clients": clients, "requests_per_client": args.requests, "timed_requests": len(timed),
                    "errors": sum(not r["ok"] for r in records), "wall_s": round(wall_s, 3),
                    "throughput_rps": round(len(latencies) / wall_s, 2),
                    "latency_ms": {"p50": round(percentile(latencies, 50), 2),
                                   "p90": round(percentile(latencies, 90), 2),
                                   "p99": round(percentile(latencies, 99), 2)},
                    "mean_batch_size": round(statistics.fmean(r["batch_size"] for r in timed if r["ok"]), 2),
                    "identical_to_direct": sum(r["identical"] for r in records), "checked": len(records)}

        return [asyncio.run(level(c)) for c in args.clients]
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["generate", "describe"], default="generate",
                        help="generate: one prompt per request; describe: one pose per request (text answers)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=24, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client before the timed ones")
    parser.add_argument("--model", default="unipose-tiny", help="model name or directory (an export directory "
                        "for --backend onnxruntime)")
    parser.add_argument("--backend", default="auto", help="the service's --backend (the direct calls use the same)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="the service's --device (the direct calls use the same)")
    parser.add_argument("--compile", action="store_true",
                        help="the service's --compile (the direct calls use the same)")
    parser.add_argument("--gpus-per-replica", type=float, default=None,
                        help="the service's --gpus-per-replica (default: 1 with --device cuda)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="text tokens per answer (service and direct)")
    parser.add_argument("--max-queued", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--threads-per-replica", type=int, default=1)
    parser.add_argument("--overload-clients", type=int, default=256, help="0: no overload burst")
    parser.add_argument("--handle-levels", action="store_true",
                        help="also run the levels against the model deployment's handle in this process (no HTTP)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine: the noise of these numbers

    import torch

    import unipose_sdk
    from unipose_sdk import Describer, Generator

    torch.set_num_threads(args.threads_per_replica)
    # The direct calls every answer must equal, one input at a time.
    with Generator.from_pretrained(model=args.model, backend=args.backend, device=args.device, compile=args.compile,
                                   max_new_tokens=args.max_new_tokens) as generator:
        run_info = generator.session.run_info()
        generated = [generator.generate(p) for p in PROMPTS]
    if args.task == "generate":
        bodies = [{"text": p} for p in PROMPTS]
        expected: list[object] = [r.pose_codes for r in generated]
    else:
        bodies = [{"pose": {"array": r.pose.rotmat[0].tolist(), "dtype": "float32"}} for r in generated]
        with Describer.from_pretrained(model=args.model, backend=args.backend, device=args.device,
                                       compile=args.compile, max_new_tokens=args.max_new_tokens) as describer:
            expected = [describer.describe(pose=r.pose).text for r in generated]
    path = f"/v1/{args.task}"
    name = "text" if args.task == "generate" else "pose"
    burst = {name: [b[name] for b in bodies][:args.max_batch]}  # one full batch per request

    port = free_port()
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    environment.pop("RAY_ADDRESS", None)
    service = subprocess.Popen(
        [sys.executable, "-m", "unipose_sdk", "serve", "--port", str(port), "--model", args.model,
         "--backend", args.backend, "--replicas", str(args.replicas), "--max-batch", str(args.max_batch),
         "--max-queued", str(args.max_queued), "--batch-wait-ms", str(args.batch_wait_ms),
         "--threads-per-replica", str(args.threads_per_replica), "--max-new-tokens", str(args.max_new_tokens),
         "--device", args.device]
        + (["--gpus-per-replica", str(args.gpus_per_replica)] if args.gpus_per_replica is not None else [])
        + (["--compile"] if args.compile else []),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment, start_new_session=True)
    try:
        for line in service.stdout:
            if line.startswith("unipose serve:"):
                break
        else:
            raise SystemExit("the service did not start")
        levels = [run_level(port, path, c, args.requests, args.warmup, bodies, expected) for c in args.clients]
        overload = run_overload(port, path, args.overload_clients, burst) if args.overload_clients else None
    finally:
        # SIGTERM, not SIGINT: a shell starting this in the background hands it (and the service) an ignored
        # SIGINT; the service shuts Serve and Ray down on either.
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()

    handle_levels = None
    if args.handle_levels:
        from unipose_sdk.serve.deployment import Work

        works = ([Work([p]) for p in PROMPTS] if args.task == "generate"
                 else [Work([r.pose], "pose") for r in generated])
        handle_levels = run_handle_levels(args, works, expected)

    import fastapi
    import ray

    # The ratio is taken against the fastest one-client level (levels 1 ... 1 give a cold and a warm one): on a GPU
    # the first level still pays for CUDA's lazy start.
    base = max((lv for lv in levels if lv["clients"] == 1), key=lambda lv: lv["throughput_rps"], default=None)
    for level in levels:
        level["speedup_vs_1_client"] = round(level["throughput_rps"] / base["throughput_rps"], 2) if base else None
        lat = level["latency_ms"]
        level["p99_over_p50"] = round(lat["p99"] / lat["p50"], 2) if lat else None
    report = {
        "command": "python benchmarks/serve_load.py " + " ".join(portable_argv(argv if argv is not None
                                                                           else sys.argv[1:])),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "system": platform.platform(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_1m_at_start": load_at_start, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
                     "fastapi": fastapi.__version__, "unipose_sdk": unipose_sdk.__version__},
        "service": {"model": Path(args.model).name, "backend": run_info.backend, "device": run_info.device,
                    "replicas": args.replicas,
                    "max_batch": args.max_batch, "max_ongoing_requests": args.max_batch + args.max_queued,
                    "max_queued_requests": args.max_queued, "batch_wait_ms": args.batch_wait_ms,
                    "threads_per_replica": args.threads_per_replica, "max_new_tokens": args.max_new_tokens,
                    "gpus_per_replica": args.gpus_per_replica, "compile": args.compile,
                    "task": args.task, "inputs_per_request": 1},
        "levels": levels, "overload": overload, "handle_levels": handle_levels,
    }
    print("| clients | throughput (req/s) | vs 1 client | p50 / p90 / p99 ms | mean batch | errors | identical |")
    print("|---|---|---|---|---|---|---|")
    for lv in levels:
        lat = lv["latency_ms"]
        print(f"| {lv['clients']} | {lv['throughput_rps']} | {lv['speedup_vs_1_client']}x | {lat.get('p50')} / "
              f"{lat.get('p90')} / {lat.get('p99')} | {lv['mean_batch_size']} | {sum(lv['errors_by_status'].values())}"
              f" | {lv['identical_to_direct']}/{lv['checked']} |")
    if overload:
        print(f"overload: {overload}")
    for lv in handle_levels or []:
        print(f"handle, {lv['clients']} clients: {lv['throughput_rps']} req/s, p50 {lv['latency_ms']['p50']} ms, "
              f"mean batch {lv['mean_batch_size']}, identical {lv['identical_to_direct']}/{lv['checked']}")
    document = json.dumps(report)
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
