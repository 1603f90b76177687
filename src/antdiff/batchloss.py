"""The per-sample losses of a training batch, as the closure the MTL engine calls once per task
sub-batch (`loss_fn(index) -> [len(index)]`, antdiff.mtl.engine).

Each sample's denoising loss (Ho et al. 2020, Eq. 14; or flow matching's) is multiplied by the
`--weighting` of its timestep (Min-SNR, P2, EDM2's learned one, ...) and then by the timestep
sampler's importance weight, which keeps a shaped density unbiased (Nichol & Dhariwal 2021,
Sec. 3.3). The reduction to task losses happens in the engine, by explicit task id.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from antdiff.batch import Batch
from antdiff.config import TrainConfig
from antdiff.data import Dataset
from antdiff.diffusion import FlowPath, Weighting, per_sample_loss

LossFn = Callable[[torch.Tensor], torch.Tensor]


class BatchLoss:
    """The training set on the device and how its samples are scored (loss path, prediction
    target, autocast precision); `closure` binds one batch."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: Dataset,
        num_classes: int,
        path: torch.Tensor | FlowPath,
        device: torch.device,
    ) -> None:
        self.device, self.path, self.prediction = device, path, cfg.prediction
        self.num_classes = num_classes
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.x = data.x.to(device)
        self.labels = None if data.labels is None else data.labels.to(device)

    def closure(
        self,
        batch: Batch,
        local: torch.Tensor,
        net: nn.Module,
        weighting: Weighting,
        record: list | None = None,
    ) -> LossFn:
        """Per-sample losses of the local samples `index` of this rank's slice `local`, by `net`,
        weighted (`weighting`, then the importance weights); `record` collects the
        (rows, losses) before the importance weights."""
        dev, dtype = self.device, self.dtype

        def fn(index: torch.Tensor) -> torch.Tensor:
            rows = local[index.cpu()]
            t = batch.t[rows].to(dev)
            x0 = self.x[batch.index[rows].to(dev)]
            y = None
            if self.num_classes:
                y = self.labels[batch.index[rows].to(dev)].clone()
                y[batch.drop[rows].to(dev)] = self.num_classes
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                frac = None if batch.frac is None else batch.frac[rows]
                loss = per_sample_loss(
                    net,
                    x0,
                    t,
                    batch.noise[rows].to(dev),
                    self.path,
                    prediction=self.prediction,
                    y=y,
                    frac=frac,
                )
            weighted = weighting(loss.float(), t)
            if record is not None:
                record.append((rows, weighted.detach()))
            return weighted * batch.weight[rows].to(dev)

        return fn
