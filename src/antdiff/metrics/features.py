"""A small CNN feature network that the project trains itself, for Frechet distance and friends.

Why: every claim of ANT (Go et al., NeurIPS 2023, Tables 1-2) is an FID claim, but Inception-v3
weights cannot be downloaded here. Like the "classifier FID" of the MNIST literature, we train a
small classifier on the real data and use its 128-d penultimate (post-ReLU) activations as the
feature space. The net is trained deterministically (fixed seed, fixed data order) and cached on
disk under a hash of its recipe (data bytes, architecture, seed, epochs, optimiser), so every run
that asks for the same recipe gets bit-identical features.

Images live in [-1, 1]. Inputs of another size are resized to the net's input size with
antialiased bilinear interpolation; RGB inputs are turned to grey by averaging the channels.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from antdiff.data import cache_dir, load_digits
from antdiff.errors import AntError

FEATURE_DIM = 128
RECIPE_VERSION = 1  # bump when the training code changes in a way the recipe does not capture
DIGITS_HELDOUT = 360  # 20% of sklearn's 1,797 digits, held out to measure the net's accuracy


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights; its hash names the cache file."""

    dataset: str
    data_sha256: str
    image_size: int
    num_classes: int
    seed: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    version: int = RECIPE_VERSION

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class FeatureNet(nn.Module):
    """Two conv blocks + a 128-d hidden layer + a linear classifier head.

    For 8x8 inputs: conv3x3(32) -> conv3x3(64) -> maxpool -> fc(128) (about 150k parameters).
    For larger inputs (e.g. MNIST 28x28) each block ends with a 2x2 max-pool and a final adaptive
    pool brings the map to 4x4, so the head has the same shape for any input size.
    """

    def __init__(self, image_size: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.image_size = image_size
        self.num_classes = num_classes
        pool = image_size >= 16
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            nn.AdaptiveMaxPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.recipe: Recipe | None = None
        self.source = "new"  # "trained" or "cache" once obtained through get_feature_net
        self.cache_path: Path | None = None
        self.heldout_accuracy: float | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.body(x)))

    def prepare(self, x: Tensor) -> Tensor:
        """[N,H,W] or [N,C,H,W] in [-1,1] -> [N,1,S,S] float32 at the net's input size S."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise AntError(
                f"images must be [N,H,W] or [N,C,H,W] with C in (1,3); got {tuple(x.shape)}"
            )
        x = x.detach().to("cpu", torch.float32)
        if not torch.isfinite(x).all():
            raise AntError("images contain NaN or infinite values")
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        return x

    @torch.no_grad()
    def _batched(self, x: Tensor, fn, batch_size: int) -> Tensor:
        """Run fn in eval mode on the net's device (move the net with .to) and return on CPU."""
        was_training = self.training
        self.eval()
        x = self.prepare(x)
        device = next(self.parameters()).device
        out = [fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def features(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Penultimate activations [N, 128] (float32, on CPU) of images in [-1, 1]."""
        return self._batched(x, self.body, batch_size)

    def logits(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Class logits [N, num_classes] of images in [-1, 1]."""
        return self._batched(x, lambda b: self.head(self.body(b)), batch_size)


def digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as [N,1,8,8] in [-1,1]: (train_x, train_y, heldout_x, heldout_y).

    The held-out split (360 images, a seeded permutation) measures the feature net's accuracy.
    """
    d = load_digits()
    x, y = d.x, d.labels
    assert y is not None
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:DIGITS_HELDOUT], perm[DIGITS_HELDOUT:]
    return x[train], y[train], x[test], y[test]


@torch.no_grad()
def accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of the net on images in [-1, 1]."""
    pred = net.logits(images).argmax(dim=1)
    return float((pred == labels.to(torch.int64).cpu()).to(torch.float64).mean())


def _sha256(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _train(x: Tensor, y: Tensor, recipe: Recipe) -> FeatureNet:
    """AdamW + one-cycle schedule; seeded init, order and dropout (fork_rng keeps callers' RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = FeatureNet(recipe.image_size, recipe.num_classes)
        gen = torch.Generator().manual_seed(recipe.seed)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps = recipe.epochs * -(-len(x) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
        net.train()
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                xb = x[idx]
                # random 1-pixel shifts (padding with background) make the features less brittle
                shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(F.pad(xb, (1, 1, 1, 1), value=-1.0), shifts=shift, dims=(2, 3))
                xb = xb[..., 1:-1, 1:-1]
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def get_feature_net(
    dataset: str = "digits",
    *,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    seed: int = 0,
    epochs: int | None = None,
    heldout_images: Tensor | None = None,
    heldout_labels: Tensor | None = None,
) -> FeatureNet:
    """Return the feature net for a data set, training it once and loading it afterwards.

    `dataset="digits"` trains on scikit-learn's digits (training split of `digits_split`). For any
    other name (e.g. "mnist") pass the training `images` ([N,H,W] or [N,1,H,W] in [-1, 1],
    square, as a Dataset holds them) and integer `labels`; the data bytes are part of the cache key.
    `heldout_*` (optional) measure the accuracy, stored beside the weights.
    """
    if dataset == "digits" and images is None:
        x, y, hx, hy = digits_split()
        heldout_images, heldout_labels = hx, hy
        epochs = 15 if epochs is None else epochs
        batch_size = 64
    else:
        if images is None or labels is None:
            raise AntError(f"feature net for {dataset!r} needs training images and labels")
        x = images.to(torch.float32)
        x = x.unsqueeze(1) if x.ndim == 3 else x
        y = labels.to(torch.int64).cpu()
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or len(x) != len(y):
            raise AntError(
                f"feature-net images must be grey, square [N,1,S,S] matching {len(y)} labels; "
                f"got {tuple(images.shape)}"
            )
        epochs = 4 if epochs is None else epochs
        batch_size = 128
    if len(x) == 0:
        raise AntError("feature net needs at least one training image")
    recipe = Recipe(
        dataset=dataset,
        data_sha256=_sha256(x, y),
        image_size=int(x.shape[-1]),
        num_classes=int(y.max()) + 1,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=3e-3,
        weight_decay=1e-4,
    )
    path = cache_dir() / "feature_nets" / f"{dataset}-{recipe.key()}.safetensors"
    if path.exists():
        net = FeatureNet(recipe.image_size, recipe.num_classes)
        net.load_state_dict(load_file(path))
        net.eval()
        net.source = "cache"
    else:
        start = time.perf_counter()
        with torch.enable_grad():  # callers may be inside torch.no_grad() (evaluation)
            net = _train(x, y, recipe)
        net.source = "trained"
        meta = {
            "recipe": json.dumps(asdict(recipe)),
            "train_s": f"{time.perf_counter() - start:.2f}",
        }
        if heldout_images is not None and heldout_labels is not None:
            meta["heldout_accuracy"] = repr(accuracy(net, heldout_images, heldout_labels))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    net.recipe = recipe
    net.cache_path = path
    net.heldout_accuracy = _stored_accuracy(path)
    return net


def _stored_accuracy(path: Path) -> float | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return float(meta["heldout_accuracy"]) if "heldout_accuracy" in meta else None
