"""SIGTERM / SIGINT / SIGHUP at random points of `unipose generate ... -o DIR`: afterwards the directory holds
complete result sets or none, never a temporary file, and a replaced set is entirely old or entirely new.

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
        replace = i % 2 == 1  # every other run replaces an existing (old) result set with --overwrite
        if replace:
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
        trials.append({"dir": out.name, "replace": replace, "signal": int(signum), "delay_s": delay,
                       "outcome": outcome})
        i += 1
    print(json.dumps({"run_s": run_s, "trials": trials}))
''')


def _expected_codes() -> dict[str, list[int]]:
    from unipose_sdk.tasks import Generator

    with Generator.from_pretrained(max_new_tokens=6) as generator:
        return {text: generator.generate(text).pose_codes for text in [*TEXTS, OLD_TEXT]}


def _check_directory(out: Path, expected: dict[str, list[int]], replaced: bool) -> str:
    """Complete sets or none, no temporaries, every set self-consistent; returns 'none' / 'old' / 'new'."""
    if not out.exists():
        assert not replaced
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
    states = [(_check_directory(tmp_path / t["dir"], expected, t["replace"]), t["outcome"]) for t in report["trials"]]
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
    state = _check_directory(out, expected, replaced=False)
    assert proc.returncode in (0, 128 + signum, -signum), (proc.returncode, err[-2000:])
    assert state == ("new" if proc.returncode == 0 else state) and state in ("none", "new")
    if proc.returncode == 143:
        assert "no partial output was left" in err
