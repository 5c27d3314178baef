import os
import sys
from pathlib import Path

import pytest
import torch

# Tests never talk to wandb's servers.
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo() -> Path:
    return REPO


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="device for the tests marked `device` (cpu or cuda; make gpu-check "
                          "runs them with --device cuda -m device)")


@pytest.fixture
def device(request) -> torch.device:
    """The device the `device`-marked tests run on (``--device``, default cpu)."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda but no CUDA device is available", pytrace=False)
    return device
