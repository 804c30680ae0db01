import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    from imagen_app.tiny import tiny_pipeline

    return tiny_pipeline()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)
