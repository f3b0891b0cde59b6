import os

import pytest
import torch

import gaheads  # noqa: F401  (registers the models with timm)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
