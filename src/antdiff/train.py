"""The one training loop. Components are built from the config and injected; the loop has no
per-method branch: every MTL method goes through `mtl_backward` (antdiff.mtl.engine).

Per step (Go et al. 2023, Sec. 4-5): draw the GLOBAL batch from a generator seeded by
(seed, step) -- data indices, timesteps with task ids, noise, label dropout -- so the batch is the
same whatever the number of processes and after a resume; each rank takes its slice; per-sample
losses (times a fixed timestep weighting such as Min-SNR or P2) are reduced per task by explicit
task id inside the engine; the method turns the K task losses or gradients into one update.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from antdiff import distributed
from antdiff.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from antdiff.config import TrainConfig, timestep_range
from antdiff.data import Dataset, load_dataset
from antdiff.diffusion import per_sample_loss
from antdiff.errors import AntError
from antdiff.models import Denoiser, build_model
from antdiff.mtl import MTLMethod, build_method, mtl_after_step, mtl_backward
from antdiff.schedule import NoiseSchedule
from antdiff.tasks import IntervalPartition, RangeSampler, build_sampler, partition_from_spec
from antdiff.weighting import build_weighting

# Config keys that may change on --resume (they do not change what is being trained).
RESUMABLE = {"steps", "out", "log_every", "checkpoint_every", "keep_checkpoints", "num_samples",
             "sampler", "sample_steps", "guidance", "device", "eval_every", "eval_num"}  # fmt: skip


@dataclass
class Batch:
    """One global batch; every tensor is indexed by sample, task ids are explicit."""

    index: torch.Tensor  # [B] rows of the data set
    t: torch.Tensor  # [B] timesteps
    task: torch.Tensor  # [B] task (interval) ids
    noise: torch.Tensor  # [B, ...]
    drop: torch.Tensor  # [B] bool: use the null label (classifier-free guidance training)


def auto_model(data: Dataset) -> str:
    if data.kind == "points":
        return "mlp"
    return "unet-tiny" if data.size <= 16 else "unet-small"


def load_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """(training set, held-out set or None); the held-out split never depends on the run seed."""
    data = load_dataset(cfg.dataset, cfg.resolution, cfg.vae)
    if cfg.conditional and data.labels is None:
        raise AntError(f"--conditional needs labels, and {data.name} has none")
    if cfg.heldout_size:
        return data.split(cfg.heldout_size, seed=0)
    return data, None


def make_model(cfg: TrainConfig, meta: dict[str, Any]) -> Denoiser:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    size = 0 if meta["kind"] == "points" else meta["shape"][-1]
    name = meta["model"]
    return build_model(name, channels=meta["shape"][0], size=size,
                       num_classes=meta["num_classes"], **cfg.model_options)  # fmt: skip


def data_meta(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    """What sampling and export need to rebuild the model without loading the data."""
    return {
        "kind": data.kind,
        "shape": list(data.sample_shape),
        "num_classes": data.num_classes if cfg.conditional else 0,
        "model": auto_model(data) if cfg.model == "auto" else cfg.model,
        "vae": data.vae,
        "num_train": len(data),
    }


def draw_batch(cfg: TrainConfig, n_data: int, shape: list[int], sampler: Any, step: int) -> Batch:
    """The global batch of `step`, a pure function of (seed, step)."""
    seed = int(np.random.SeedSequence([cfg.seed, step]).generate_state(1)[0])
    g = torch.Generator().manual_seed(seed)
    t, task = sampler.sample(cfg.batch_size, g)
    index = torch.randint(0, n_data, (cfg.batch_size,), generator=g)
    noise = torch.randn((cfg.batch_size, *shape), generator=g)
    drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
    perm = torch.randperm(cfg.batch_size, generator=g)  # mix tasks across ranks' slices
    return Batch(index[perm], t[perm], task[perm], noise[perm], drop[perm])


class Trainer:
    """Holds the components of one run; `fit()` runs the loop."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        self.run_dir = Path(cfg.out)
        self.data, self.heldout = load_data(cfg)
        self.meta = data_meta(cfg, self.data)
        self.schedule = NoiseSchedule.from_name(cfg.schedule, cfg.timesteps)
        self.clustering = partition_from_spec(cfg.clusters, self.schedule)
        self.partition: IntervalPartition = self.clustering.partition
        if cfg.batch_size < self.partition.k and cfg.sampling == "stratified":
            raise AntError(
                f"batch size {cfg.batch_size} is smaller than the number of tasks K="
                f"{self.partition.k}: stratified sampling needs at least one sample per task"
            )
        self.sampler = build_sampler(cfg.sampling, self.partition)
        if cfg.timestep_range is not None:
            self.sampler = RangeSampler(timestep_range(cfg), self.partition)
        dev = self.dist.device
        self.model = make_model(cfg, self.meta).to(dev)
        self.method: MTLMethod = build_method(cfg.method, self.partition.k, **cfg.method_options)
        self.method.to(dev)
        weighting = build_weighting(cfg.weighting, cfg.prediction)
        self.loss_weights = weighting.precompute(self.schedule).float().to(dev)
        self.alphas = self.schedule.alphas_cumprod.float().to(dev)
        self.optimizer = torch.optim.AdamW(
            [{"params": list(self.model.parameters())}, *self.method.param_groups()],
            lr=cfg.lr, weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.ema = EMAModel(self.model.parameters(), decay=cfg.ema_decay)
        if cfg.precision != "fp32" and dev.type != "cuda":
            raise AntError(f"--precision {cfg.precision} needs a GPU; use fp32 on the CPU")
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.clip = cfg.grad_clip or self.method.default_max_grad_norm
        self.x = self.data.x.to(dev)
        self.labels = None if self.data.labels is None else self.data.labels.to(dev)
        self.step = self._restore() if resume else self._fresh()
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[dev] if dev.type == "cuda" else None
            )

    # ------------------------------------------------------------------ run directory
    def _fresh(self) -> int:
        if latest_checkpoint(self.run_dir, missing_ok=True) is not None:
            raise AntError(f"{self.run_dir} already holds a run; pass --resume or another --out")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
            run_info = {**self.meta, "partition": self.partition.to_dict(),
                        "clustering_cost": self.clustering.cost}  # fmt: skip
            (self.run_dir / "run.json").write_text(json.dumps(run_info, indent=1))
            (self.run_dir / "metrics.jsonl").write_text("")
        self.dist.barrier()
        return 0

    def _restore(self) -> int:
        path = latest_checkpoint(self.run_dir)
        weights, ema, state = load_checkpoint(path)
        saved = state["config"]
        diff = sorted(k for k in saved if k not in RESUMABLE and saved[k] != self.cfg.to_dict()[k])
        if diff:
            detail = ", ".join(f"{k}: {saved[k]!r} -> {self.cfg.to_dict()[k]!r}" for k in diff)
            raise AntError(f"checkpoint {path} was trained with another config ({detail})")
        if IntervalPartition.from_dict(state["partition"]) != self.partition:
            raise AntError(f"checkpoint {path} used another partition: {state['partition']}")
        try:
            self.model.load_state_dict(weights)
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise AntError(
                f"checkpoint {path} does not fit this model: {e}".splitlines()[0]
            ) from None
        names = [n for n, _ in self.model.named_parameters()]
        self.ema.load_state_dict({**state["ema"], "shadow_params": [ema[n] for n in names]})
        self.ema.to(self.dist.device)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step = int(state["step"])
        if self.dist.main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", step)
            if self.cfg.steps != saved["steps"]:
                (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        self.dist.barrier()
        return step

    def save(self) -> Path | None:
        if not self.dist.main:
            self.dist.barrier()
            return None
        names = [n for n, _ in self.model.named_parameters()]
        ema_state = dict(self.ema.state_dict())
        shadow = ema_state.pop("shadow_params")
        state = {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "partition": self.partition.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "ema": ema_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state()},
        }
        try:
            path = save_checkpoint(
                self.run_dir, self.step, self.model.state_dict(),
                dict(zip(names, shadow, strict=True)), state, keep=self.cfg.keep_checkpoints,
            )  # fmt: skip
        finally:
            self.dist.barrier()
        return path

    @contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The model with its EMA weights, in eval mode; the training weights come back after."""
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        self.model.eval()
        try:
            yield self.model
        finally:
            self.ema.restore(params)
            self.model.train()

    def evaluate(self) -> None:
        """Metrics of the current EMA weights, appended to metrics.jsonl (rank 0 only)."""
        if self.dist.main:
            from antdiff.evaluate import evaluate_model

            with self.ema_weights() as model:
                result = evaluate_model(model, self.cfg, self.meta, self.schedule,
                                        self.partition, num=self.cfg.eval_num,
                                        sampler=self.cfg.sampler, steps=self.cfg.sample_steps,
                                        guidance=self.cfg.guidance, seed=self.cfg.seed)  # fmt: skip
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "eval": result}) + "\n")
        self.dist.barrier()

    # ------------------------------------------------------------------ the loop
    def loss_fn(self, batch: Batch, local: torch.Tensor):
        """Per-sample (weighted) losses of the local samples `index` of this rank's slice."""
        dev, cfg = self.dist.device, self.cfg
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

        def fn(index: torch.Tensor) -> torch.Tensor:
            rows = local[index.cpu()]
            t = batch.t[rows].to(dev)
            x0 = self.x[batch.index[rows].to(dev)]
            y = None
            if self.meta["num_classes"]:
                y = self.labels[batch.index[rows].to(dev)].clone()
                y[batch.drop[rows].to(dev)] = self.meta["num_classes"]
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = per_sample_loss(self.net, x0, t, batch.noise[rows].to(dev), self.alphas,
                                       prediction=cfg.prediction, y=y)  # fmt: skip
            return loss.float() * self.loss_weights[t]

        return fn

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        batch = draw_batch(cfg, len(self.data), self.meta["shape"], self.sampler, self.step)
        local = self.dist.local_slice(cfg.batch_size)
        counts = torch.bincount(batch.task, minlength=self.partition.k)
        loss_fn = self.loss_fn(batch, local)
        try:
            info = mtl_backward(self.method, loss_fn, batch.task[local], counts, self.net,
                                self.scaler)  # fmt: skip
        except AntError as e:
            if "non-finite" not in str(e):
                raise
            kept = self.save()
            raise AntError(f"stopped at step {self.step}: {e}; last good checkpoint: {kept}") from e
        if info.finite:
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.ema.step(self.model.parameters())
            mtl_after_step(self.method, loss_fn, batch.task[local], counts, self.net)
        self.step += 1
        valid = ~torch.isnan(info.task_losses)
        loss = float((info.task_losses[valid] * counts[valid]).sum() / counts[valid].sum())
        return {"loss": loss, "task_losses": _floats(info.task_losses),
                "weights": _floats(info.weights), "finite": info.finite,
                "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip

    def fit(self) -> Path:
        cfg = self.cfg
        progress = Progress(cfg.steps, self.step, enabled=self.dist.main)
        skipped = 0
        while self.step < cfg.steps:
            row = self.train_step()
            skipped += not row["finite"]
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = {"step": self.step, **row, "skipped": skipped, "time": progress.elapsed}
                if self.dist.main:
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                progress.update(self.step, row["loss"])
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                start = time.perf_counter()
                self.evaluate()
                progress.exclude(time.perf_counter() - start)
        progress.close()
        return self.run_dir


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume) a run; then, on rank 0, draw samples and write the report."""
    trainer = Trainer(cfg, resume=resume)
    try:
        run_dir = trainer.fit()
        if trainer.dist.main:
            from antdiff.run import finish_run

            finish_run(run_dir)
    finally:
        distributed.teardown()
    return run_dir


class Progress:
    """A one-line progress bar with rate and ETA on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stdout.isatty()

    @property
    def elapsed(self) -> float:
        """Seconds of training so far (evaluations excluded): the `time` in metrics.jsonl."""
        return round(time.perf_counter() - self.t0, 3)

    def exclude(self, seconds: float) -> None:
        self.t0 += seconds

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(self.elapsed, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        line = (f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} it/s  "
                f"ETA {_duration(eta)}")  # fmt: skip
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def _floats(x: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 6) for v in x.tolist()]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut short by the kill
            continue
    path.write_text("".join(line + "\n" for line in keep))
