import signal
import sys
from collections.abc import Iterator
from pathlib import Path

# `python -m pytest` from the checkout puts it first on sys.path, where its `kernels/` and `export/` directories
# (installed as unipose_sdk.kernels / unipose_sdk.export) would shadow PyPI packages of those names: transformers
# >= 5.25 depends on `kernels` and imports it. The tests use the installed package, never the checkout's root.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

import pytest  # noqa: E402  (after the sys.path fix above)
import torch  # noqa: E402

from unipose_sdk.tasks import Describer, Editor, Estimator, Generator  # noqa: E402

# The test models are tiny: one thread is faster than two on a 2-core machine (no oversubscription with
# the OpenMP kernel threads or a second process).
torch.set_num_threads(1)

# Task options for the embedded model that keep the text tasks fast; pose tasks always get room for their pose block.
SHORT = {"max_new_tokens": 6}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# The four task classes on the embedded model, loaded once per test module.
@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator.from_pretrained(**SHORT)


@pytest.fixture(scope="module")
def editor() -> Editor:
    return Editor.from_pretrained(**SHORT)


@pytest.fixture(scope="module")
def describer() -> Describer:
    return Describer.from_pretrained(**SHORT)


@pytest.fixture(scope="module")
def estimator() -> Estimator:
    return Estimator.from_pretrained(**SHORT)


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (instead of blocking the suite) if the test body takes more than 20 s, e.g. reading a FIFO."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("the call blocked: a special file was opened for reading")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
