import os
import tempfile

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches (feature nets, latents) go to a folder of this test session, not the user's home.
os.environ.setdefault("ANTDIFF_CACHE", tempfile.mkdtemp(prefix="antdiff-test-cache-"))
# One thread per process: the suite runs on 2 cores, and subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
