import signal
from collections.abc import Iterator

import pytest
import torch

from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

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
