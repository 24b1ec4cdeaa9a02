"""SIGTERM / SIGINT / SIGHUP at random points of `unipose generate ... -o DIR`: afterwards the directory holds
complete result sets or none, never a temporary file, a replaced set is entirely old or entirely new, and a run
added to a directory of results adds its whole numbered set or nothing. Every other command is stopped the same
way (exit 128 + N, one line on stderr, no traceback, no temporary directory): see test_signals_every_command.

Two kinds of runs, about 30 s together: a few real `python -m unipose_sdk generate` processes killed at a random
moment of their whole life, and many runs forked from a warmed-up driver (the model already loaded, so a run
takes a fraction of a second and the signals land in the generation and the writing, where it matters).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unipose_sdk.body.pose import Pose
from unipose_sdk.results import RESULT_SUFFIXES

TEXTS = ["a person squatting with both arms raised", "a person kneeling on the left knee"]
OLD_TEXT = "a person standing still"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}



@pytest.fixture(autouse=True)
def default_signal_dispositions():
    """Each test starts from the default dispositions, as a command typed in a terminal does: a runner started
    under nohup (SIGHUP ignored, inherited by every child) or a handler an earlier test left behind would
    otherwise decide the outcome. An ignored signal staying ignored is the product's rule; it is tested below."""
    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    saved_int = signal.getsignal(signal.SIGINT)
    for name in names:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler if handler is not None else signal.SIG_DFL)
        signal.signal(signal.SIGINT, saved_int if saved_int is not None else signal.default_int_handler)


DRIVER = textwrap.dedent('''
    import json, os, random, signal, sys, time
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from unipose_sdk.cli import main

    root, budget_s, seed = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    texts, old_text = json.loads(sys.argv[4]), sys.argv[5]
    common = ["--quiet", "--max-new-tokens", "6"]
    # Warm up in the driver: the model, matplotlib and one complete save, so forked runs only generate and write.
    assert main(["generate", old_text, "-o", str(root / "template"), *common]) == 0
    start = time.perf_counter()
    assert main(["generate", *texts, "-o", str(root / "measure"), *common]) == 0
    run_s = time.perf_counter() - start
    rng = random.Random(seed)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    trials, deadline, i = [], time.monotonic() + budget_s, 0
    while time.monotonic() < deadline:
        out = root / f"run{i:03d}"
        # Runs into a new directory, replacing an old result set (--overwrite), and adding to it (without).
        mode = ("fresh", "replace", "append")[i % 3]
        replace = mode == "replace"
        if mode != "fresh":
            out.mkdir()
            for name in os.listdir(root / "template"):
                os.link(root / "template" / name, out / name)
        signum, delay = rng.choice(signals), rng.uniform(0.0, 1.2 * run_s)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = main(["generate", *texts, "-o", str(out), *common, *(["--overwrite"] if replace else [])])
            except KeyboardInterrupt:  # Ctrl-C before the command's handlers: what the interpreter would do
                code = 130
            finally:
                os._exit(code)
        time.sleep(delay)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        outcome = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
        trials.append({"dir": out.name, "mode": mode, "signal": int(signum), "delay_s": delay,
                       "outcome": outcome})
        i += 1
    print(json.dumps({"run_s": run_s, "trials": trials}))
''')


def _expected_codes() -> dict[str, list[int]]:
    from unipose_sdk.tasks import Generator

    with Generator.from_pretrained(max_new_tokens=6) as generator:
        return {text: generator.generate(text).pose_codes for text in [*TEXTS, OLD_TEXT]}


def _check_directory(out: Path, expected: dict[str, list[int]], mode: str) -> str:
    """Complete sets or none, no temporaries, every set self-consistent; returns 'none' / 'old' / 'new'."""
    if not out.exists():
        assert mode == "fresh"
        return "none"
    names = sorted(os.listdir(out))
    assert all(not n.startswith(".") and not n.endswith(".tmp") for n in names), f"{out.name}: {names}"
    stems = sorted({n.rsplit(".", 1)[0] for n in names})
    for stem in stems:
        assert sorted(n for n in names if n.startswith(stem + ".")) == sorted(stem + s for s in RESULT_SUFFIXES), \
            f"{out.name}: partial set {names}"
        saved = json.loads((out / f"{stem}.json").read_text())
        prompt = saved["input"]["prompt"]
        assert saved["pose_codes"] == expected[prompt], f"{out.name}/{stem}: codes of another prompt"
        assert Pose.load(out / f"{stem}.npz").allclose(Pose.load(out / f"{stem}.npy"), atol=1e-5)
    if not names:
        return "none"
    prompts = {json.loads((out / f"{s}.json").read_text())["input"]["prompt"] for s in stems}
    if prompts == {OLD_TEXT}:
        assert stems == ["generate_000"]
        return "old"
    if mode == "append":  # the old set stays at 000; the run's two results follow it, in input order
        numbered = {s: json.loads((out / f"{s}.json").read_text())["input"]["prompt"] for s in stems}
        assert numbered == {"generate_000": OLD_TEXT, "generate_001": TEXTS[0], "generate_002": TEXTS[1]}, \
            f"{out.name}: {names}"
        return "new"
    # A new run's sets appear together: both results, or (when it replaced) none of them.
    assert stems == ["generate_000", "generate_001"] and prompts == set(TEXTS), f"{out.name}: {names}"
    return "new"


def test_forked_runs_killed_at_random_points_leave_complete_sets_or_none(tmp_path) -> None:
    seed = random.randrange(1 << 30)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), "14", str(seed), json.dumps(TEXTS),
                           OLD_TEXT], capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = _expected_codes()
    states = [(_check_directory(tmp_path / t["dir"], expected, t["mode"]), t["outcome"]) for t in report["trials"]]
    assert len(states) >= 12, f"only {len(states)} runs in the time budget (seed {seed})"
    interrupted = [s for s in states if s[1] != "exit 0"]
    assert interrupted, f"no run was interrupted (seed {seed}, run {report['run_s']:.2f} s)"
    # An interrupted run exits with 128 + its signal (130 for Ctrl-C), or dies of it before the handlers exist.
    assert {o for _, o in interrupted} <= {"exit 130", "exit 143", "exit 129", "signal 15", "signal 2", "signal 1"}
    # Completed runs wrote their sets; runs that wrote nothing new kept the old set untouched.
    assert all(state == "new" for state, outcome in states if outcome == "exit 0")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_real_cli_processes_killed_at_random_points(signum, tmp_path) -> None:
    expected = _expected_codes()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "unipose_sdk", "generate", *TEXTS, "-o", str(out),
                             "--quiet", "--max-new-tokens", "6"], env=ENV, stderr=subprocess.PIPE, text=True)
    time.sleep(random.uniform(0.3, 3.5))  # import, model load, generation or writing
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    state = _check_directory(out, expected, "fresh")
    assert proc.returncode in (0, 128 + signum, -signum), (proc.returncode, err[-2000:])
    assert state == ("new" if proc.returncode == 0 else state) and state in ("none", "new")
    if proc.returncode == 143:
        assert "no partial output was left" in err


# ---------------------------------------------------------------------------------------------- every command


def _no_hidden_leftovers(root: Path) -> None:
    leftovers = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.name.startswith(".") or p.name.endswith(".tmp") or ".partial" in p.name]
    assert leftovers == [], leftovers


def test_sigterm_to_unipose_export_exits_143_without_traceback_or_temporary_directory(tmp_path) -> None:
    """A real `unipose export` process, signalled once its temporary directory exists (mid-export)."""
    out = tmp_path / "tiny-onnx"
    proc = subprocess.Popen([sys.executable, "-m", "unipose_sdk", "export", "--quiet", "--no-validate", "-o",
                             str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < 120:
        if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the export ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated by SIGTERM" in err, err[-2000:]
    assert not out.exists()
    _no_hidden_leftovers(tmp_path)


def _signal_self(signum: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.5)  # the handler raises here at the latest, as it would in the middle of the work


@pytest.fixture
def tiny_state():
    import unipose_sdk
    from unipose_sdk.checkpoint.sdk_format import load_model

    loaded = load_model(Path(unipose_sdk.__file__).parent / "assets" / "unipose-tiny")
    return loaded.model.state_dict(), loaded.tokenizer


def test_sigterm_during_unipose_convert_leaves_no_model_directory(tmp_path, monkeypatch, capsys, tiny_state) -> None:
    """The SDK-format writer is signalled after the weights file is written: exit 143, nothing left."""
    import safetensors.torch

    from unipose_sdk.checkpoint import official, sdk_format
    from unipose_sdk.cli import main

    tensors, tokenizer = tiny_state
    monkeypatch.setattr(official, "paths_from_strings", lambda **kw: official.OfficialPaths(**{
        name: None for name in official.OfficialPaths.__dataclass_fields__}))
    monkeypatch.setattr(official, "load_official_state", lambda paths, config: (tensors, tokenizer))

    def save_then_signal(state, path, metadata=None):  # type: ignore[no-untyped-def]
        safetensors.torch.save_file(state, path, metadata=metadata)
        _signal_self()

    monkeypatch.setattr(sdk_format, "save_file", save_then_signal)
    out = tmp_path / "converted"
    assert main(["convert", "--merged", str(tmp_path), "--preset", "unipose-tiny", "-o", str(out)]) == 143
    err = capsys.readouterr().err
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the model directory nor its temporary directory


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signals_during_data_make_leave_no_partial_directory(signum, tmp_path, monkeypatch, capsys) -> None:
    from unipose_sdk.cli import main
    from unipose_sdk.data import dataset

    real_save = dataset.save_npz_deterministic
    calls = []

    def save_then_signal(path, arrays):  # type: ignore[no-untyped-def]
        real_save(path, arrays)
        calls.append(path)
        if len(calls) == 2:
            _signal_self(signum)

    monkeypatch.setattr(dataset, "save_npz_deterministic", save_then_signal)
    out = tmp_path / "data"
    assert main(["data", "make", "--size", "tiny", "--quiet", "-o", str(out)]) == 128 + signum
    assert len(calls) == 2 and f"terminated by {signal.Signals(signum).name}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_ignored_sighup_stays_ignored(tmp_path, monkeypatch) -> None:
    """Under nohup SIGHUP is ignored: the command must not start honouring it, and finishes its output."""
    from unipose_sdk.cli import main
    from unipose_sdk.data import dataset

    real_save = dataset.save_npz_deterministic
    calls = []

    def save_then_hangup(path, arrays):  # type: ignore[no-untyped-def]
        real_save(path, arrays)
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(dataset, "save_npz_deterministic", save_then_hangup)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    out = tmp_path / "data"
    assert main(["data", "make", "--size", "tiny", "--quiet", "-o", str(out)]) == 0
    assert len(calls) > 1 and out.is_dir() and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


@pytest.mark.parametrize("argv, module, function", [
    (["train", "-o", "run", "--stages", "1"], "unipose_sdk.training.pipeline", "train"),
    (["evaluate", "-o", "report", "--quick"], "unipose_sdk.evaluation", "evaluate"),
    (["bench", "--quick", "-o", "bench"], "unipose_sdk.bench", "bench"),
    (["pose", "roundtrip", "-o", "rt"], "unipose_sdk.cli.pose", "_load_tokenizer"),
    (["info"], "unipose_sdk.cli.info", "collect_info"),
])
def test_every_command_turns_sigterm_into_exit_143(argv, module, function, tmp_path, monkeypatch, capsys) -> None:
    """The guard is applied to every command by `main`: a SIGTERM arriving inside the command's work ends it with
    exit 143 and one line on stderr, and the handler that was there before is put back."""
    import importlib

    from unipose_sdk.cli import main

    target = importlib.import_module(module)
    if not hasattr(target, function):
        pytest.skip(f"{module}.{function} moved")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, function, lambda *args, **kwargs: _signal_self())
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_while_bench_writes_its_results_keeps_the_earlier_set(tmp_path, monkeypatch) -> None:
    from unipose_sdk.bench import report
    from unipose_sdk.fileio import TerminatedBySignal, signals_raise

    result = {"device": "cpu", "model": "unipose-tiny"}
    monkeypatch.setattr(report, "markdown", lambda result: "the table\n")
    monkeypatch.setattr(report, "chart", lambda result, path: path.write_bytes(b"png"))
    paths = report.write_outputs(dict(result), tmp_path, "latency")
    before = {p.name: p.read_bytes() for p in paths.values()}
    assert sorted(before) == ["latency.json", "latency.md", "latency.png"]
    monkeypatch.setattr(report, "markdown", lambda result: "a newer table\n")
    monkeypatch.setattr(report, "chart", lambda result, path: _signal_self())
    with signals_raise(), pytest.raises(TerminatedBySignal):
        report.write_outputs(dict(result), tmp_path, "latency")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_signal_handled_earlier_does_not_refuse_later_writes(tmp_path) -> None:
    from unipose_sdk.fileio import OutputSet, TerminatedBySignal, signals_raise

    with signals_raise(), pytest.raises(TerminatedBySignal):
        _signal_self()
    with OutputSet(tmp_path, ["a.json"]) as out:  # outside any block: the old record must not stop the commit
        out.path("a.json").write_text("{}")
    with signals_raise(), OutputSet(tmp_path, ["b.json"]) as out:  # nor inside a new one
        out.path("b.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_process_forked_inside_the_guard_dies_of_sigterm_quietly() -> None:
    """Worker pools fork inside a command and stop their workers with SIGTERM: a worker gets the default
    handler back instead of raising into code that is not its own (and printing a traceback)."""
    from unipose_sdk.fileio import signals_raise

    with signals_raise():
        pid = os.fork()
        if pid == 0:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(3)  # reached only if the signal raised instead of killing
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_sigterm_while_evaluate_writes_its_report_keeps_the_earlier_pair(tmp_path, monkeypatch) -> None:
    from unipose_sdk.evaluation import runner
    from unipose_sdk.fileio import TerminatedBySignal, signals_raise

    monkeypatch.setattr(runner, "to_markdown", lambda report: "# old\n")
    runner.write_report({"run": 1}, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["report.json", "report.md"]
    monkeypatch.setattr(runner, "to_markdown", lambda report: _signal_self())
    with signals_raise(), pytest.raises(TerminatedBySignal):
        runner.write_report({"run": 2}, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_signal_during_the_cleanup_after_a_commit_leaves_no_staging_directory(tmp_path, monkeypatch) -> None:
    """The window the random kills found: the set is in place and the staging directory is being removed when
    SIGTERM arrives. The removal finishes first; the signal is raised after it."""
    from unipose_sdk import fileio
    from unipose_sdk.fileio import OutputSet, TerminatedBySignal, signals_raise

    real_rmtree = fileio.shutil.rmtree

    def signalled_rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(fileio.shutil, "rmtree", signalled_rmtree)
    with signals_raise(), pytest.raises(TerminatedBySignal):
        with OutputSet(tmp_path, ["r_000.json"], numbered=True) as out:
            out.path("r_000.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_000.json"]
