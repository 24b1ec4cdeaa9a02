import pytest
import torch

# The test models are tiny: one thread is faster than two on a 2-core machine (no oversubscription with
# the OpenMP kernel threads or a second process).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
