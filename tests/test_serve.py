"""`unipose serve` on loopback and `unipose_sdk.client.Client` against it: every endpoint, results equal to direct
calls, the SDK's error text in 4xx bodies, the limits (413 / 422), 503 with Retry-After on overload, the API key,
the Serve config, and a shutdown that leaves no process behind.

One service (the real CLI in a subprocess: Ray start-up is ~10 s) serves the whole module; the last test stops it.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the serving stack is the `serve` extra (part of `dev`)")
pytest.importorskip("fastapi", reason="the serving stack is the `serve` extra (part of `dev`)")

from conftest import SHORT  # noqa: E402

from unipose_sdk import Pose, example_image_path, load_example_pose  # noqa: E402
from unipose_sdk.client import Client  # noqa: E402
from unipose_sdk.errors import InvalidImageError, InvalidInputError, InvalidPoseError, InvalidTextError  # noqa: E402
from unipose_sdk.results import DescribeResult, EditResult, EstimateResult, GenerateResult  # noqa: E402
from unipose_sdk.serve.wire import (  # noqa: E402
    AuthenticationError,
    LimitExceededError,
    ServiceError,
    ServiceOverloadedError,
    ServiceTimeoutError,
)

API_KEY = "test-key-123"
MAX_BATCH = 4
MAX_QUEUED = 4
MAX_BODY_BYTES = 1024 * 1024
MAX_PIXELS = 300 * 300
MAX_TEXT = 300
IMAGE = example_image_path("person")  # 256 x 192


# ---------------------------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`unipose serve` in its own session, marked by a token in its environment (inherited by Ray's processes)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = uuid.uuid4().hex
        environment = {**os.environ, "UNIPOSE_SERVE_TEST_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                       **(env or {})}
        environment.pop("RAY_ADDRESS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "unipose_sdk", "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        ready = threading.Event()
        self.banner = ""

        def read_stdout() -> None:
            for line in self.process.stdout:
                if line.startswith("unipose serve:"):
                    self.banner = line
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(180):
            self.stop()
            raise RuntimeError(f"the service did not start: {''.join(self.stderr)[-3000:]}")

    def processes(self) -> list[int]:
        """Every process that carries this service's token: the CLI and whatever Ray started for it."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if self.token.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                        found.append(int(entry))
                except OSError:  # gone, or not ours to read
                    pass
        return found

    def stop(self, signum: int = signal.SIGINT, timeout_s: float = 60.0) -> int | None:
        """Ctrl-C (as a user stops it) or another signal; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill_leftovers(self) -> None:
        for pid in self.processes():  # only processes this test started (they carry its token)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def service():
    started = Service("--max-batch", str(MAX_BATCH), "--max-queued", str(MAX_QUEUED),
                      "--max-new-tokens", str(SHORT["max_new_tokens"]), "--max-body-mb", str(MAX_BODY_BYTES / 2**20),
                      "--max-image-pixels", str(MAX_PIXELS), "--max-text-chars", str(MAX_TEXT),
                      "--batch-wait-ms", "20", "--max-poses", "1",
                      "--api-key-env", "UNIPOSE_TEST_KEY", env={"UNIPOSE_TEST_KEY": API_KEY})
    yield started
    started.stop()
    started.kill_leftovers()


@pytest.fixture(scope="module")
def client(service) -> Client:
    return Client(service.url, api_key=API_KEY)


def post(url: str, path: str, body: bytes | dict, content_type: str = "application/json",
         key: str | None = API_KEY) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a POST, errors included."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": content_type}
    if key:
        headers["X-API-Key"] = key
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), {k.lower(): v for k, v in exc.headers.items()}


def get(url: str, path: str, key: str | None = API_KEY) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url + path, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def assert_same_pose_result(remote, local) -> None:
    assert type(remote) is type(local)
    assert remote.pose_codes == local.pose_codes
    np.testing.assert_allclose(remote.joints_m, local.joints_m, atol=1e-5)
    np.testing.assert_allclose(remote.pose.rotmat.numpy(), local.pose.rotmat.numpy(), atol=1e-5)
    assert remote.text == local.text
    assert remote.run.model == local.run.model and remote.run.backend == local.run.backend


# ---------------------------------------------------------------------------------------------- endpoints


def test_health_model_info_and_api_pages(service, client) -> None:
    health = client.health()
    assert health["status"] == "ok" and health["models"] == {"unipose-tiny": "ok"} and health["api_key_required"]
    info = client.model_info()
    assert info["default_model"] == "unipose-tiny" and info["max_batch"] == MAX_BATCH
    assert info["models"][0]["run"]["backend"] == "torch" and info["models"][0]["max_new_tokens"] == 6
    assert len(info["skeleton"]["joint_names"]) == 22 and info["skeleton"]["parents"][0] == -1
    assert info["limits"]["max_image_pixels"] == MAX_PIXELS
    assert "127.0.0.1" in service.banner and "API key required" in service.banner
    status, body, _ = get(service.url, "/v1/openapi.json", key=None)
    paths = json.loads(body)["paths"]
    assert {"/v1/estimate", "/v1/generate", "/v1/edit", "/v1/describe", "/v1/health", "/v1/model"} <= set(paths)
    status, page, _ = get(service.url, "/docs", key=None)
    assert status == 200 and b"/v1/generate" in page
    # Offline: the API page and the demo load nothing from another host.
    for path in ("/docs", "/", "/static/demo.js", "/static/demo.css"):
        status, content, _ = get(service.url, path, key=None)
        assert status == 200
        assert b"https://" not in content and b"http://" not in content, path
    assert get(service.url, "/static/..%2Fapp.py", key=None)[0] == 404


def test_generate_equals_direct_calls(client, generator) -> None:
    remote = client.generate("a person squatting with both arms raised")
    assert isinstance(remote, GenerateResult) and remote.prompt == "a person squatting with both arms raised"
    assert_same_pose_result(remote, generator.generate("a person squatting with both arms raised"))
    texts = ["a person standing", "a person kneeling on the left knee", "arms crossed"]
    remote_batch = client.generate(texts)
    assert isinstance(remote_batch, list) and len(remote_batch) == 3
    for r, local in zip(remote_batch, generator.generate(texts)):
        assert_same_pose_result(r, local)
    assert remote_batch[0].batch_size == 3 and set(remote.timing_ms) >= {"total", "llm"}


def test_edit_equals_direct_calls_from_pose_array_and_file(client, editor, tmp_path) -> None:
    pose = load_example_pose("squatting")
    local = editor.edit(pose, "raise your left arm above your head")
    remote = client.edit(pose, "raise your left arm above your head")
    assert isinstance(remote, EditResult) and remote.instruction == "raise your left arm above your head"
    assert_same_pose_result(remote, local)
    assert remote.source_pose.allclose(local.source_pose)
    path = tmp_path / "pose.npz"
    pose.save(path)
    assert_same_pose_result(client.edit(str(path), "raise your left arm above your head"),
                            editor.edit(str(path), "raise your left arm above your head"))
    # A bare JSON array in any pose layout is one pose: 66 axis-angle values.
    aa = pose.axis_angle()[0].reshape(-1).double().tolist()
    status, body, _ = post(client.url, "/v1/edit", {"pose": aa, "instruction": "sit down"})
    assert status == 200 and body["single"] and body["results"][0]["pose_codes"] == editor.edit(
        np.asarray(aa), "sit down").pose_codes


def test_describe_every_kind_equals_direct_calls(client, describer, generator) -> None:
    a, b = generator.generate(["a person standing", "a person squatting"])
    for kwargs in ({"pose": a.pose}, {"image": IMAGE}, {"poses": (a.pose, b.pose)}, {"images": (IMAGE, IMAGE)},
                   {"pose": [a.pose, b.pose]}):
        remote, local = client.describe(**kwargs), describer.describe(**kwargs)
        if isinstance(local, list):
            assert [r.text for r in remote] == [r.text for r in local]
        else:
            assert isinstance(remote, DescribeResult) and remote.text == local.text and remote.text


def test_estimate_json_and_multipart_equal_direct_calls(service, client, estimator) -> None:
    local = estimator.estimate(IMAGE)
    remote = client.estimate(IMAGE)
    assert isinstance(remote, EstimateResult)
    assert_same_pose_result(remote, local)
    box = (20.0, 10.0, 180.0, 250.0)
    assert_same_pose_result(client.estimate(IMAGE, bbox=box), estimator.estimate(IMAGE, bbox=box))
    array = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(IMAGE).convert("RGB"))
    assert_same_pose_result(client.estimate([array, IMAGE])[0], estimator.estimate([array, IMAGE])[0])
    body, kind = multipart({"bbox": json.dumps(list(box)), "formats": "npz"},
                           [("image", "person.png", Path(IMAGE).read_bytes())])
    status, answer, _ = post(service.url, "/v1/estimate", body, kind)
    assert status == 200, answer
    item = answer["results"][0]
    assert item["pose_codes"] == estimator.estimate(IMAGE, bbox=box).pose_codes
    assert base64.b64decode(item["files"]["npz"])[:2] == b"PK"


def test_every_pose_format_on_request(service, generator, tmp_path) -> None:
    status, answer, _ = post(service.url, "/v1/generate", {"text": "a person standing",
                                                           "formats": ["npz", "npy", "json", "bvh", "glb", "png"]})
    assert status == 200
    files = answer["results"][0]["files"]
    assert set(files) == {"npz", "npy", "json", "bvh", "glb", "png"}
    local = generator.generate("a person standing").pose
    for fmt in ("npz", "npy", "json", "bvh"):
        path = tmp_path / f"pose.{fmt}"
        path.write_bytes(base64.b64decode(files[fmt]))
        assert Pose.load(path).allclose(local, atol=1e-4), fmt
    assert base64.b64decode(files["png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert base64.b64decode(files["glb"])[:4] == b"glTF"


# ---------------------------------------------------------------------------------------------- errors and limits


def test_typed_errors_keep_the_sdk_text(service, client, generator, editor) -> None:
    with pytest.raises(InvalidTextError) as remote:
        client.generate("   ")
    with pytest.raises(InvalidTextError) as local:
        generator.generate("   ")
    assert str(remote.value) == str(local.value)
    status, body, _ = post(service.url, "/v1/generate", {"text": "   "})
    error = body["error"]
    assert status == 422 and error["type"] == "InvalidTextError" and error["message"] == str(local.value)
    assert error["received"] == "text='   '" and error["expected"] == "non-empty text"
    assert error["fix"].startswith("Write")
    bad = np.full((22, 3), np.nan)
    with pytest.raises(InvalidPoseError) as remote_pose:
        client.edit(bad, "sit")
    with pytest.raises(InvalidPoseError) as local_pose:
        editor.edit(bad, "sit")
    assert str(remote_pose.value) == str(local_pose.value)
    with pytest.raises(InvalidInputError, match="2 poses and 3 instructions"):
        client.edit([Pose.identity(), Pose.identity()], ["a", "b", "c"])
    for path, payload, kind in [
        ("/v1/estimate", {"image": b64(b"not an image")}, "InvalidImageError"),
        ("/v1/estimate", {"image": "%%% not base64"}, "InvalidImageError"),
        ("/v1/generate", {"text": "x", "temperature": 2}, "InvalidInputError"),
        ("/v1/generate", {"text": "x", "formats": ["obj"]}, "InvalidInputError"),
        ("/v1/generate", {"text": "x", "model": "other"}, "InvalidInputError"),
        ("/v1/describe", {"pose": [0.0] * 66, "image": b64(b"x")}, "InvalidInputError"),
        ("/v1/edit", {"pose": {"file": b64(b"garbage")}, "instruction": "sit"}, "PoseFormatError"),
    ]:
        status, body, _ = post(service.url, path, payload)
        assert status == 422 and body["error"]["type"] == kind, (payload, body)
        assert "received" in body["error"]["message"]
    status, body, _ = post(service.url, "/v1/generate", b"[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]")
    assert status == 422 and "nested" in body["error"]["message"]
    with pytest.raises(InvalidImageError):
        client.estimate(b"raw bytes are not an image input")


def test_nothing_on_the_wire_is_unpickled(service) -> None:
    marker = Path(f"/tmp/unipose-serve-pickle-{uuid.uuid4().hex}")
    payload = io.BytesIO()
    np.save(payload, np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    for path, body in [("/v1/estimate", {"image": {"npy": b64(payload.getvalue())}}),
                       ("/v1/edit", {"pose": {"file": b64(payload.getvalue()), "name": "p.npy"}, "instruction": "x"})]:
        status, answer, _ = post(service.url, path, body)
        assert status == 422, answer
    assert not marker.exists()


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_limits_answer_413_and_422(service) -> None:
    # The body size is refused from Content-Length before any of it is read: only the headers are sent (sending
    # the body too races the server's early answer and close, and the client may see a broken pipe instead).
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    connection.putrequest("POST", "/v1/generate")
    for name, value in (("Content-Type", "application/json"), ("X-API-Key", API_KEY),
                        ("Content-Length", str(MAX_BODY_BYTES + 10))):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    connection.close()
    assert status == 413 and body["error"]["type"] == "LimitExceededError" and "bytes" in body["error"]["message"]
    big = io.BytesIO()
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (400, 400)).save(big, format="PNG")
    status, body, _ = post(service.url, "/v1/estimate", {"image": b64(big.getvalue())})
    assert status == 413 and "400x400" in body["error"]["message"]
    status, body, _ = post(service.url, "/v1/generate", {"text": "a" * (MAX_TEXT + 1)})
    assert status == 422 and body["error"]["type"] == "InvalidTextError" and str(MAX_TEXT) in body["error"]["message"]
    status, body, _ = post(service.url, "/v1/generate", {"text": ["a person"] * (MAX_BATCH + 1)})
    assert status == 413 and f"at most {MAX_BATCH}" in body["error"]["message"]


def test_api_key_is_required(service) -> None:
    for key in (None, "wrong"):
        status, body, _ = post(service.url, "/v1/generate", {"text": "a person"}, key=key)
        assert status == 401 and body["error"]["type"] == "AuthenticationError"
        assert get(service.url, "/v1/model", key=key)[0] == 401
    with pytest.raises(AuthenticationError):
        Client(service.url).generate("a person")
    assert get(service.url, "/v1/health", key=None)[0] == 200  # liveness stays open for load balancers


def test_concurrent_requests_share_batches_and_equal_direct_calls(client, generator) -> None:
    texts = [f"a person {verb}" for verb in ("standing", "sitting", "squatting", "kneeling", "jumping", "waving",
                                              "bowing", "lying down")]
    local = {t: generator.generate(t).pose_codes for t in texts}
    with ThreadPoolExecutor(8) as pool:
        remote = list(pool.map(client.generate, texts))
    assert [r.pose_codes for r in remote] == [local[t] for t in texts]
    assert max(r.batch_size for r in remote) > 1  # requests from different clients ran as one model batch
    assert all(r.batch_size <= MAX_BATCH for r in remote)


def test_overload_answers_503_with_retry_after(service) -> None:
    body = {"text": ["a person squatting with both arms raised"] * MAX_BATCH}  # each request is a full batch

    def one(_: int) -> tuple[int, dict, dict]:
        return post(service.url, "/v1/generate", body)

    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(one, range(48)))
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) >= MAX_BATCH
    refused = next(a for a in answers if a[0] == 503)
    assert refused[1]["error"]["type"] == "ServiceOverloadedError" and refused[2]["retry-after"] == "1"
    # The service is still healthy afterwards, and the client raises the typed error with the delay.
    assert post(service.url, "/v1/generate", {"text": "a person"})[0] == 200


def test_timeout_cancels_the_request() -> None:
    import asyncio

    from unipose_sdk.serve.app import await_within

    class Slow:
        cancelled = False

        def __await__(self):
            return asyncio.sleep(10).__await__()

        def cancel(self) -> None:
            Slow.cancelled = True

    with pytest.raises(ServiceTimeoutError, match="still running after 0.05 s"):
        asyncio.run(await_within(Slow(), 0.05))
    assert Slow.cancelled


def test_client_errors_without_a_service() -> None:
    with pytest.raises(ServiceError, match="received no answer"):
        Client(f"http://127.0.0.1:{free_port()}", timeout_s=5).generate("a person")
    with pytest.raises(InvalidInputError):
        Client("127.0.0.1:8000")
    with pytest.raises(InvalidInputError, match="empty list"):
        Client("http://127.0.0.1:1").generate([])
    assert issubclass(ServiceOverloadedError, RuntimeError) and issubclass(LimitExceededError, InvalidInputError)


def test_print_config_is_a_serve_config_without_the_key(tmp_path) -> None:
    import yaml

    from unipose_sdk.serve.limits import ServeSettings, api_key_digest

    out = subprocess.run([sys.executable, "-m", "unipose_sdk", "serve", "--print-config", "--replicas", "3",
                          "--max-batch", "8", "--host", "0.0.0.0", "--api-key-env", "K"],
                         capture_output=True, text=True, env={**os.environ, "K": "secret-value"}, timeout=60)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks before it deploys
    assert config["http_options"]["host"] == "0.0.0.0"
    app = config["applications"][0]
    assert app["import_path"] == "unipose_sdk.serve.app:build_app"
    settings = ServeSettings.from_args(app["args"])
    assert settings.replicas == 3 and settings.max_batch == 8 and settings.max_ongoing_requests >= 8
    assert settings.api_key_sha256 == api_key_digest("secret-value") and "secret-value" not in out.stdout
    missing = subprocess.run([sys.executable, "-m", "unipose_sdk", "serve", "--print-config", "--api-key-env",
                              "UNSET_VARIABLE_FOR_TEST"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "UNSET_VARIABLE_FOR_TEST"})
    assert missing.returncode == 2 and "UNSET_VARIABLE_FOR_TEST" in missing.stderr


def test_settings_refuse_what_cannot_run() -> None:
    from unipose_sdk.errors import InvalidOptionError
    from unipose_sdk.serve.limits import ServeLimits, ServeSettings

    for bad in ({"models": ("unipose-tiny", "unipose-tiny")}, {"replicas": 0}, {"max_batch": True},
                {"batch_wait_ms": -1}, {"models": ()}):
        with pytest.raises(InvalidOptionError):
            ServeSettings(**bad)
    with pytest.raises(InvalidOptionError, match="max_queued_requests"):
        ServeLimits(max_queued_requests=0)
    with pytest.raises(InvalidOptionError, match="names among"):
        ServeSettings.from_args({"replica": 2})
    settings = ServeSettings(max_batch=8, limits=ServeLimits(max_batch_items=64, max_queued_requests=10))
    assert settings.limits.max_batch_items == 8  # one request never holds more than a batch
    assert settings.max_ongoing_requests == 18  # a full batch running and the admitted waiting requests
    # A burst the replica admits at once is first counted at the handle: its limit covers it (the CI failure
    # this guards against: 8 simultaneous requests to a replica admitting 8 refused by a handle limit of 4).
    assert settings.handle_queue_limit == 18 + 10
    assert dataclasses.replace(settings, replicas=3).handle_queue_limit == 3 * 18 + 10
    assert ServeSettings.from_args(settings.to_args()) == settings


def test_replicas_reserve_the_gpus_they_run_on() -> None:
    """Ray hides every GPU from an actor that reserves none, so a replica asked to run on CUDA must reserve a share
    of one; contradictions and more GPUs than Ray sees are refused before anything is deployed."""
    from unipose_sdk.cli.serve import _check_gpus
    from unipose_sdk.errors import InvalidOptionError
    from unipose_sdk.serve.limits import ServeSettings

    assert ServeSettings().replica_resources == {"num_cpus": 1}  # auto without a GPU share: the replica's CPU
    assert ServeSettings(device="cpu", threads_per_replica=2).replica_resources == {"num_cpus": 2}
    assert ServeSettings(device="cuda").replica_resources == {"num_cpus": 1, "num_gpus": 1.0}
    shared = ServeSettings(device="cuda", replicas=2, gpus_per_replica=0.5)
    assert shared.replica_resources == {"num_cpus": 1, "num_gpus": 0.5}
    assert ServeSettings(gpus_per_replica=0.25).replica_gpus == 0.25  # auto with a share: the replica sees a GPU
    assert ServeSettings.from_args(shared.to_args()) == shared  # the Serve config carries it to `serve deploy`
    for bad, named in (({"device": "cpu", "gpus_per_replica": 0.5}, "device='cpu'"),
                       ({"device": "cuda", "gpus_per_replica": 0}, "gpus_per_replica=0"),
                       ({"gpus_per_replica": 1.5}, "gpus_per_replica=1.5"),
                       ({"gpus_per_replica": -1}, "gpus_per_replica=-1"),
                       ({"gpus_per_replica": True}, "gpus_per_replica=True")):
        with pytest.raises(InvalidOptionError, match=named):
            ServeSettings(**bad)
    # Batches of every size form under load, so a service compiles nothing unless asked (each new shape would
    # stall its requests while it compiles).
    assert ServeSettings(device="cuda").compile is False
    with pytest.raises(InvalidOptionError, match="compile='yes'"):
        ServeSettings(compile="yes")
    _check_gpus(shared, 1.0)  # two halves of one GPU fit
    _check_gpus(ServeSettings(), 0.0)
    with pytest.raises(InvalidOptionError, match="= 2 GPUs, where Ray sees 1") as refused:
        _check_gpus(ServeSettings(device="cuda", replicas=2), 1.0)
    assert "--gpus-per-replica" in str(refused.value)
    contradiction = subprocess.run([sys.executable, "-m", "unipose_sdk", "serve", "--print-config", "--device", "cpu",
                                    "--gpus-per-replica", "0.5"], capture_output=True, text=True, timeout=60)
    assert contradiction.returncode == 2 and "device='cpu'" in contradiction.stderr, contradiction.stderr
    import torch

    if not torch.cuda.is_available():  # refused before Ray starts, not left waiting for a GPU that never comes
        started = time.perf_counter()
        no_gpu = subprocess.run([sys.executable, "-m", "unipose_sdk", "serve", "--device", "cuda", "--port",
                                 str(free_port())], capture_output=True, text=True, timeout=120)
        assert no_gpu.returncode == 2 and "= 1 GPUs, where Ray sees 0" in no_gpu.stderr, no_gpu.stderr
        assert time.perf_counter() - started < 60
    config = subprocess.run([sys.executable, "-m", "unipose_sdk", "serve", "--print-config", "--device", "cuda",
                             "--replicas", "4", "--gpus-per-replica", "0.25"], capture_output=True, text=True,
                            timeout=60)
    assert config.returncode == 0 and "gpus_per_replica: 0.25" in config.stdout, config.stderr


def test_work_admission_refuses_what_the_timeout_leaves_no_time_for() -> None:
    from unipose_sdk.serve.limits import WorkAdmission

    admission = WorkAdmission(replicas=2, timeout_s=10.0)  # budget 8 s of queued work per replica
    first, _ = admission.admit("describe:pose", 16)  # nothing measured yet: the request counts alone bound it
    assert first is not None and admission.wait_s == 0.0
    admission.release(first, "describe:pose", 0.25)  # the replica's report: 0.25 s per input
    assert admission.seconds_per_input == {"describe:pose": 0.25}
    tickets = [admission.admit("describe:pose", 16)[0] for _ in range(4)]  # 4 s each, 2 replicas: 8 s of wait
    assert None not in tickets and admission.wait_s == pytest.approx(8.0)
    refused, retry_after_s = admission.admit("describe:pose", 16)
    assert refused is None and retry_after_s == 2.0  # 8 s ahead + 2 s of its own, 2 s past the budget
    assert admission.admit("generate", 16)[0] is not None  # another kind, not measured: admitted
    admission.release(tickets[0], "describe:pose", 0.35)
    assert admission.seconds_per_input["describe:pose"] == pytest.approx(0.25 + 0.3 * 0.10)
    assert admission.admit("describe:pose", 16)[0] is None  # 6 s ahead + 2.24 s of its own
    admission.release(tickets[1], "describe:pose")  # a failed or timed-out request: no report, charge dropped
    assert admission.wait_s == pytest.approx(4.0) and admission.admit("describe:pose", 16)[0] is not None
    lone = WorkAdmission(replicas=1, timeout_s=1.0)
    lone.release(None, "describe:image", 5.0)
    assert lone.admit("describe:image", 16)[0] is not None  # an idle model takes any one request


def test_a_batch_waits_for_more_requests_only_under_load() -> None:
    from unipose_sdk.serve.deployment import batch_wait_s

    assert batch_wait_s(waiting=0, last_batch_inputs=0, batch_wait_ms=20.0) == 0.0  # the replica's first request
    assert batch_wait_s(waiting=0, last_batch_inputs=1, batch_wait_ms=20.0) == 0.0  # a lone client: at once
    assert batch_wait_s(waiting=1, last_batch_inputs=1, batch_wait_ms=20.0) == pytest.approx(0.020)  # one waits
    assert batch_wait_s(waiting=0, last_batch_inputs=6, batch_wait_ms=20.0) == pytest.approx(0.020)  # more coming
    assert batch_wait_s(waiting=3, last_batch_inputs=6, batch_wait_ms=0.0) == 0.0  # waiting switched off


# ---------------------------------------------------------------------------------------------- conversations

GENERATE_TURN = "Generate pose of the description: a person squatting."
EDIT_TURN = "Edit pose <pose> by description: raise the left arm."
DESCRIBE_TURN = "Generate description of the pose <pose>."


def test_a_remote_conversation_equals_a_local_assistant(service, client, generator) -> None:
    from unipose_sdk import Assistant, AssistantOptions
    from unipose_sdk.results import AssistantReply

    local = Assistant.from_session(generator.session, AssistantOptions(**SHORT, max_poses=1))  # the service's
    remote = client.assistant()
    replies = []
    for chat in (local, remote):
        made = chat.ask(GENERATE_TURN)
        edited = chat.ask(EDIT_TURN, poses=[made.poses[0]])
        replies.append([made, edited, chat.ask(DESCRIBE_TURN, poses=[edited.poses[0]])])
    for here, there in zip(*replies):
        assert isinstance(there, AssistantReply) and there.turn == here.turn
        assert there.text == here.text and there.finish_reason == here.finish_reason
        assert [p.codes for p in there.poses] == [p.codes for p in here.poses]
        assert there.generated_ids == here.generated_ids
        for a, b in zip(there.poses, here.poses):
            np.testing.assert_allclose(a.joints_m, b.joints_m, atol=1e-5)
    made, edited, described = replies[1]
    assert len(made.poses) == len(edited.poses) == 1 and not described.poses and described.text
    assert made.poses[0].codes != edited.poses[0].codes  # the edit changed the pose it was given
    assert described.reused_tokens == 0 and described.prompt_tokens > edited.prompt_tokens  # the history was sent
    assert [t.reply for t in remote.history] == replies[1] and remote.history[1].poses == ("<a pose of an earlier "
                                                                                           "reply>",)
    remote.reset()
    assert remote.history == () and remote.ask(GENERATE_TURN).poses[0].codes == replies[0][0].poses[0].codes
    # The raw endpoint: the same reply, every pose with its matrices and the pose files asked for.
    status, body, _ = post(service.url, "/v1/chat", {"history": [
        {"text": GENERATE_TURN, "reply": {"text": made.text, "pose_codes": [made.poses[0].codes]}}],
        "text": EDIT_TURN, "poses": [{"codes": made.poses[0].codes}], "formats": ["npz"]})
    assert status == 200 and body["single"] and set(body["service_ms"]) >= {"parse", "total"}
    item = body["results"][0]
    assert item["kind"] == "AssistantReply" and item["text"] == edited.text and item["turn"] == 1
    assert item["poses"][0]["codes"] == edited.poses[0].codes and len(item["poses"][0]["rotmat"]) == 22
    assert base64.b64decode(item["poses"][0]["files"]["npz"])[:2] == b"PK"
    assert item["run"]["model"] == "unipose-tiny" and item["timing_ms"]["total"] > 0
    paths = json.loads(get(service.url, "/v1/openapi.json", key=None)[1])["paths"]
    assert "history" in paths["/v1/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]


def test_chat_errors_are_the_assistant_s_typed_errors(service, client, generator) -> None:
    from unipose_sdk import Assistant, AssistantOptions
    from unipose_sdk.errors import ConversationTooLongError

    local = Assistant.from_session(generator.session, AssistantOptions(**SHORT, max_poses=1))
    with pytest.raises(InvalidInputError) as expected:
        local.ask(DESCRIBE_TURN)
    status, body, _ = post(service.url, "/v1/chat", {"text": DESCRIBE_TURN})  # a <pose> without a pose
    assert status == 422 and body["error"]["type"] == "InvalidInputError"
    assert body["error"]["message"] == str(expected.value) and body["error"]["expected"].startswith("1 pose")
    with pytest.raises(InvalidInputError, match="0 poses for a turn"):
        client.assistant().ask(DESCRIBE_TURN)
    a_pose = {"text": GENERATE_TURN, "reply": {"text": "<pose>", "pose_codes": [[1] * 80]}}
    for history, kind, words in [
        ([{"text": DESCRIBE_TURN, "reply": {"text": "a squat."}}], "InvalidInputError",
         ["turn 0 of the restored history", "0 poses"]),
        ([{"text": GENERATE_TURN, "reply": {"text": "<pose>"}}], "InvalidInputError", ["1 <pose> and the codes of 0"]),
        ([{**a_pose, "reply": {"text": "<pose>", "pose_codes": [[9999] * 80]}}], "InvalidInputError",
         ["reply pose 0", "codes in [0,"]),
        ([a_pose] * 6, "ConversationTooLongError", ["at most 512 tokens", "Restore only the latest turns"]),
        ([{**a_pose, "mood": "x"}], "InvalidInputError", ["'mood'"]),
        ([a_pose, {**a_pose, "text": " "}], "InvalidTextError", ["turn 1 of the history: received turn=' '"]),
    ]:
        status, body, _ = post(service.url, "/v1/chat", {"history": history, "text": GENERATE_TURN})
        assert status == 422 and body["error"]["type"] == kind, body
        assert all(w in body["error"]["message"] for w in words), body["error"]["message"]
    status, body, _ = post(service.url, "/v1/chat", {"text": DESCRIBE_TURN, "poses": [{"codes": [-1] * 80}]})
    assert status == 422 and "codes in [0," in body["error"]["message"]
    form, kind = multipart({"text": GENERATE_TURN}, [])
    status, body, _ = post(service.url, "/v1/chat", form, kind)
    assert status == 422 and "JSON body" in body["error"]["message"]
    status, body, _ = post(service.url, "/v1/chat", {"text": GENERATE_TURN}, key=None)
    assert status == 401
    chat = client.assistant()  # a history that grew too long on the client: the local Assistant's error and fix
    with pytest.raises(ConversationTooLongError, match="reset()"):
        for _ in range(8):
            chat.ask(GENERATE_TURN)
    assert 0 < len(chat.history) < 8


def test_chat_turns_share_the_admission_limits(service) -> None:
    def one(_: int) -> tuple[int, dict, dict]:
        return post(service.url, "/v1/chat", {"text": GENERATE_TURN})

    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(one, range(48)))
    statuses = [a[0] for a in answers]
    # Whether this burst overflows depends on how fast the replica drains it (the handle admits every replica's
    # share plus the waiting requests; test_overload_answers_503_with_retry_after overflows it for sure): any
    # refusal must be the typed 503, and nothing else may come back.
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0, statuses
    for refused in (a for a in answers if a[0] == 503):
        assert refused[1]["error"]["type"] == "ServiceOverloadedError" and refused[2]["retry-after"] == "1"
    codes = {tuple(a[1]["results"][0]["poses"][0]["codes"]) for a in answers if a[0] == 200}
    assert len(codes) == 1  # every replica answer is the same conversation's, whatever ran beside it


def test_a_chatpose_model_answers_chat_turns(tmp_path) -> None:
    """The ingress's parsing and a replica's chat path in this process (no Ray) over a ChatPose model, whose reply
    poses have no codes: a turn after a history holding such a pose equals the local Assistant's restored turn."""
    import asyncio

    import torch
    from test_chatpose import PRESET, write_release

    from unipose_sdk import Assistant, AssistantOptions
    from unipose_sdk.cli import main as cli_main
    from unipose_sdk.serve.app import parse_chat
    from unipose_sdk.serve.deployment import ModelServer
    from unipose_sdk.serve.limits import ServeSettings
    from unipose_sdk.serve.wire import decode_result
    from unipose_sdk.tasks.assistant import PastTurn

    merged, clip = write_release(tmp_path / "release")
    model = str(tmp_path / "chatpose-tiny")
    assert cli_main(["convert", "--family", "chatpose", "--preset", PRESET, "--merged", str(merged), "--clip",
                     str(clip), "-o", model]) == 0
    settings = ServeSettings(models=(model,), max_new_tokens=4)
    threads = torch.get_num_threads()
    try:
        server = ModelServer(model, settings.to_args())
    finally:
        torch.set_num_threads(threads)  # the replica sets its own process's threads: this one is pytest's
    user = "There is a person: a person squatting. Please output this person's SMPL pose."
    work = parse_chat({"history": [{"text": user, "reply": {"text": "Sure, <pose>.", "pose_codes": [[]]}}],
                       "text": "Now describe it in one word."}, settings.limits)
    answer = asyncio.run(server.run("chat", work))
    assert "error" not in answer, answer
    remote = decode_result(answer["results"][0])
    local = Assistant.from_session(server.assistant.session, AssistantOptions(max_new_tokens=4))
    local.restore([PastTurn(user, "Sure, <pose>.", [[]])])
    expected = local.ask("Now describe it in one word.")
    assert remote.run.family == "chatpose" and remote.turn == 1
    assert remote.text == expected.text and remote.generated_ids == expected.generated_ids
    assert expected.prompt_ids.count(server.assistant.session.config.vocab.pose_token_id) == 1  # the history's pose
    work = parse_chat({"text": "Describe <pose>.", "poses": [[0.0] * 66]}, settings.limits)
    status, body = asyncio.run(server.run("chat", work))["error"]  # ChatPose reads no poses: its typed error
    assert status == 422 and body["error"]["type"] == "UnsupportedTaskError" and "UniPose" in body["error"]["message"]


def test_shutdown_leaves_no_process_behind(service) -> None:
    """Last in the module: SIGTERM (as a service manager stops it) shuts down Serve and the private Ray instance
    with every worker, then the CLI exits 143 (Ray's own SIGTERM handler would end the process at once)."""
    assert len(service.processes()) > 2  # the CLI, Ray's GCS and raylet, the replicas ...
    code = service.stop(signal.SIGTERM)
    assert code == 143, "".join(service.stderr)[-2000:]
    assert any("unipose serve: stopped" in line for line in service.stderr)
    deadline = time.monotonic() + 30
    while service.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert service.processes() == []


def test_a_describe_burst_past_the_timeout_gets_503s_not_504s() -> None:
    """Its own service with a 6 s request timeout (after the module's service has stopped): once a describe request
    has been measured, a burst of describe requests that each hold a full batch is answered 200 or, when the work
    queued ahead would not finish within the timeout, 503 with the typed error and a Retry-After; none runs into a
    504 (counting requests alone admitted such a burst and timed a third of it out)."""
    service = Service("--max-batch", "4", "--max-queued", "64", "--max-new-tokens", "48", "--request-timeout-s", "6")
    try:
        names = ("squatting", "standing_relaxed", "walking_stride", "sitting")
        body = {"pose": [{"array": load_example_pose(n).axis_angle().numpy().reshape(22, 3).tolist(),
                          "dtype": "float32"} for n in names]}
        for _ in range(2):  # the measurement the admission learns from
            assert post(service.url, "/v1/describe", body, key=None)[0] == 200
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda _: post(service.url, "/v1/describe", body, key=None), range(64)))
        statuses = [a[0] for a in answers]
        assert set(statuses) <= {200, 503} and statuses.count(200) > 0, statuses
        refused = [a for a in answers if a[0] == 503]
        assert refused, statuses
        for _, answer, headers in refused:
            error = answer["error"]
            assert error["type"] == "ServiceOverloadedError" and "of work queued" in error["message"]
            assert int(headers["retry-after"]) >= 1
        assert post(service.url, "/v1/describe", body, key=None)[0] == 200  # and it recovers
    finally:
        service.stop()
        service.kill_leftovers()


def test_a_second_model_runs_in_a_deployment_of_its_own(tmp_path) -> None:
    """`--model` twice: the first model runs inside the service's own replicas, the second in a deployment of its
    own behind a handle. Health and model info list both; a request naming the second is answered by it (its run
    names its directory) with the poses of a direct call; a model not loaded is a typed 422."""
    import shutil

    from unipose_sdk import Generator
    from unipose_sdk.checkpoint.embedded import EMBEDDED_DIR

    second = tmp_path / "tiny-copy"
    shutil.copytree(EMBEDDED_DIR, second)
    service = Service("--model", "unipose-tiny", "--model", str(second), "--max-new-tokens", "6")
    try:
        client = Client(service.url)
        assert client.health()["models"] == {"unipose-tiny": "ok", str(second): "ok"}
        info = client.model_info()
        assert [m["name"] for m in info["models"]] == ["unipose-tiny", str(second)]
        status, body, _ = post(service.url, "/v1/generate", {"text": "a person sitting", "model": str(second)},
                               key=None)
        assert status == 200, body
        remote = body["results"][0]
        with Generator.from_pretrained(model=str(second), **SHORT) as generator:
            local = generator.generate("a person sitting")
        assert remote["pose_codes"] == local.pose_codes and remote["run"]["model"] == local.run.model
        assert remote["run"]["model"] != client.generate("a person sitting").run.model  # the default answered that
        status, body, _ = post(service.url, "/v1/generate", {"text": "a person", "model": "other"}, key=None)
        assert status == 422 and "model='other'" in body["error"]["message"]
    finally:
        service.stop()
        service.kill_leftovers()
