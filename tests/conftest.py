import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches (feature nets, latents) go to a folder of this test session, not the user's home.
os.environ.setdefault("ANTDIFF_CACHE", tempfile.mkdtemp(prefix="antdiff-test-cache-"))
# One thread per process, whatever the caller's environment: the suite runs on 2 cores, and
# subprocesses inherit this (a resumed run compared bit for bit with one trained in this
# process must use the same number of threads, or float sums differ in the last bit).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def tiny_vae(tmp_path: Path) -> str:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
        scaling_factor=0.5,
    )
    vae.save_pretrained(tmp_path / "vae")
    return str(tmp_path / "vae")


@pytest.fixture(scope="module")
def cond_mlp() -> torch.nn.Module:
    """A small class-conditional MLP (4 classes, 2-d points) with non-trivial weights: the
    samplers' tests (guidance, determinism) run on it."""
    from antdiff.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", channels=2, size=0, num_classes=4, hidden=32, depth=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model
