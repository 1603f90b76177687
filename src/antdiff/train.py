"""The one training loop. Components are built from the config (build.py) and injected; the loop
has no per-method branch: every MTL method goes through `mtl_backward` (antdiff.mtl.engine).

Per step (Go et al. 2023, Sec. 4-5): draw the GLOBAL batch from a generator seeded by
(seed, step) -- data indices, timesteps with task ids, noise, label dropout -- so the batch is the
same whatever the number of processes and after a resume; each rank takes its slice; per-sample
losses (times a fixed timestep weighting such as Min-SNR or P2) are reduced per task by explicit
task id inside the engine; the method turns the K task losses or gradients into one update.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from antdiff import build, distributed
from antdiff.batch import Batch, draw_batch
from antdiff.build import Components
from antdiff.config import TrainConfig
from antdiff.diffusion import per_sample_loss
from antdiff.errors import AntError, Interrupted, NonFiniteError
from antdiff.mtl import mtl_after_step, mtl_backward
from antdiff.progress import Progress
from antdiff.resume import check_resumable, checkpoint_info
from antdiff.rundir import Checkpoint, RunDir
from antdiff.signals import StopSignals
from antdiff.tasks import Clustering

#: Evaluates a model (the EMA weights, in eval mode) and returns JSON-friendly metrics.
EvalFn = Callable[[nn.Module], dict[str, Any]]


class Trainer:
    """Holds the components of one run; `fit()` runs the loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Components,
        run: RunDir,
        dist: distributed.Dist,
        evaluate: EvalFn | None = None,
    ) -> None:
        self.cfg, self.parts, self.run, self.dist, self.evaluator = cfg, parts, run, dist, evaluate
        dev = dist.device
        self.model = parts.model.to(dev)
        self.method = parts.method
        self.method.to(dev)
        self.weighting = parts.weighting.to(dev)
        self.path = parts.schedule.loss_path(dev)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.model.parameters())},
                *self.method.param_groups(),
                *self.weighting.param_groups(),
            ],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        self.ema = EMAModel(self.model.parameters(), decay=cfg.ema_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.clip = cfg.grad_clip or self.method.default_max_grad_norm
        self.x = parts.data.x.to(dev)
        self.labels = None if parts.data.labels is None else parts.data.labels.to(dev)
        self.step = 0
        self.seconds = 0.0  # training time of the steps done before this process started
        self.t_counts = torch.zeros(20, dtype=torch.long)  # timesteps drawn since the last log
        self.auto = parts.auto
        self.net: nn.Module = self.model
        if dist.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[dev] if dev.type == "cuda" else None
            )

    @classmethod
    def start(
        cls, cfg: TrainConfig, resume: bool = False, evaluate: EvalFn | None = None
    ) -> Trainer:
        """A trainer for a fresh run in `cfg.out`, or for the run there (`resume`; a run that
        stopped before its first checkpoint starts again from step 0). Rank 0 holds the run's
        lock until `close()` (or the end of a `with` block)."""
        dist = distributed.setup(cfg.device)
        if cfg.precision != "fp32" and dist.device.type != "cuda":
            raise AntError(f"--precision {cfg.precision} needs a GPU; use fp32 on the CPU")
        ckpt = None
        if resume:
            run = RunDir.open(cfg.out)
            check_resumable(run.cfg, cfg)
            if dist.main:
                run.lock()
            ckpt = run.load_checkpoint() if run.has_checkpoint() else None
            try:  # the tasks the checkpoint trained with (an auto run may have chosen since)
                parts = build.components(cfg, ckpt and checkpoint_info(run.info, ckpt))
            except BaseException:
                run.unlock()
                raise
        else:
            parts = build.components(cfg)
            if dist.main:
                run = RunDir.create(cfg.out, cfg, parts.info)  # locked
            dist.barrier()
            if not dist.main:
                run = RunDir(cfg.out, cfg, parts.info)
        try:
            trainer = cls(cfg, parts, run, dist, evaluate)
            if resume:
                trainer.restore(ckpt)
        except BaseException:
            if dist.main:
                run.unlock()
            raise
        return trainer

    def close(self) -> None:
        """Release the run's lock, and the DDP wrapper while its process group still lives
        (a DDP reducer destroyed after `destroy_process_group` can hang its process)."""
        self.net = self.model
        if self.dist.main:
            self.run.unlock()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ checkpoints
    def restore(self, ckpt: Checkpoint | None) -> None:
        """Continue from the checkpoint `ckpt` of the run, exactly (from step 0 when it has
        none)."""
        if ckpt is None:
            if self.dist.main:
                self.run.truncate_metrics(0)
                self.run.write_config(self.cfg)
                self.run.write_info(self.parts.info)
            self.dist.barrier()
            return
        if self.cfg.steps < ckpt.step:
            raise AntError(f"{self.run.path} is at step {ckpt.step}: --steps must be >= that")
        try:
            self.model.load_state_dict(ckpt.weights)
            self.method.load_state_dict(ckpt.state["method"])
            self.optimizer.load_state_dict(ckpt.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise AntError(
                f"checkpoint {ckpt.path} does not fit this model: {e}".splitlines()[0]
            ) from None
        self.optimizer.param_groups[0]["lr"] = self.cfg.lr  # the model's group; a method's own
        # groups (UW's log-variances) keep their learning rate
        names = [n for n, _ in self.model.named_parameters()]
        self.ema.load_state_dict(
            {**ckpt.state["ema"], "shadow_params": [ckpt.ema[n] for n in names]}
        )
        self.ema.to(self.dist.device)
        if self.scaler is not None and ckpt.state.get("scaler"):
            self.scaler.load_state_dict(ckpt.state["scaler"])
        torch.set_rng_state(ckpt.state["rng"]["torch"])
        if self.auto is not None:
            self.auto.load_state_dict(ckpt.state["auto"])
        if "weighting" in ckpt.state:  # (checkpoints of older versions have neither)
            self.weighting.load_state_dict(ckpt.state["weighting"])
            self.parts.sampler.load_state_dict(ckpt.state["sampler"])
        self.step = ckpt.step
        if self.dist.main:
            self.run.set_aside_after(self.step)
            self.run.truncate_metrics(self.step)
            if self.cfg != self.run.cfg:
                self.run.write_config(self.cfg)
        self.dist.barrier()
        logged = [r["time"] for r in self.run.metrics() if "time" in r]
        self.seconds = logged[-1] if logged else 0.0

    def save(self) -> None:
        """A checkpoint of the current state (rank 0 writes it), only of a state whose weights
        are finite and give a finite loss on the next batch: a run that diverges never replaces
        its last good checkpoint (with fp16, only the weights are checked: GradScaler skips
        overflowing steps by design)."""
        if not self._finite_state():
            raise NonFiniteError(
                f"stopped at step {self.step}: the weights give a non-finite loss; "
                f"{self._last_good()}"
            )
        if not self.dist.main:
            self.dist.barrier()
            return
        names = [n for n, _ in self.model.named_parameters()]
        ema_state = dict(self.ema.state_dict())
        shadow = ema_state.pop("shadow_params")
        state = {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "partition": self.parts.partition.to_dict(),
            "clustering_cost": self.parts.info.clustering_cost,
            "auto": self.auto.state_dict() if self.auto is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "weighting": self.weighting.state_dict(),
            "sampler": self.parts.sampler.state_dict(),
            "ema": ema_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state()},
        }
        try:
            self.run.save_checkpoint(
                self.step,
                self.model.state_dict(),
                dict(zip(names, shadow, strict=True)),
                state,
                keep=self.cfg.keep_checkpoints,
            )
        finally:
            self.dist.barrier()

    def set_tasks(self, chosen: Clustering, seconds: float) -> None:
        """From the warm-up of affinity:K:auto on, train with the run's method over the intervals
        `chosen` (the DP over the measured affinity); the run records them."""
        assert self.auto is not None
        info = replace(self.parts.info, partition=chosen.partition, clustering_cost=chosen.cost)
        sampler, method, weighting = build.tasks(self.cfg, info, self.parts.schedule)
        self.method, self.weighting = method.to(self.dist.device), weighting.to(self.dist.device)
        self.parts = replace(
            self.parts, info=info, sampler=sampler, method=method, weighting=weighting, auto=None
        )
        for group in [*method.param_groups(), *weighting.param_groups()]:  # own groups (UW)
            self.optimizer.add_param_group(group)
        self.clip = self.cfg.grad_clip or method.default_max_grad_norm
        if self.dist.main:
            record = self.auto.record(chosen, self.step, seconds)
            self.run.write_tasks(record, self.auto.affinity, self.auto.matrices, self.auto.edges)
            self.run.write_info(info)
            self.run.append_metrics({"step": self.step, "time": seconds, "tasks": record})
        self.auto = None

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

    def evaluate(self, seconds: float) -> None:
        """Metrics of the current EMA weights, appended to metrics.jsonl with the training time
        `seconds` so far (rank 0 only)."""
        if self.dist.main and self.evaluator is not None:
            with self.ema_weights() as model:
                result = self.evaluator(model)
            self.run.append_metrics({"step": self.step, "time": seconds, "eval": result})
        self.dist.barrier()

    # ------------------------------------------------------------------ the loop
    def loss_fn(
        self,
        batch: Batch,
        local: torch.Tensor,
        net: nn.Module | None = None,
        record: list | None = None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-sample losses of the local samples `index` of this rank's slice, weighted
        (`--weighting`, then the sampler's importance weights), by `net` (default: the DDP
        wrapper under torchrun, whose backward syncs gradients); `record` collects the
        (rows, losses) before the importance weights."""
        dev, cfg, classes = self.dist.device, self.cfg, self.parts.info.num_classes
        net = net or self.net
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

        def fn(index: torch.Tensor) -> torch.Tensor:
            rows = local[index.cpu()]
            t = batch.t[rows].to(dev)
            x0 = self.x[batch.index[rows].to(dev)]
            y = None
            if classes:
                y = self.labels[batch.index[rows].to(dev)].clone()
                y[batch.drop[rows].to(dev)] = classes
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                frac = None if batch.frac is None else batch.frac[rows]
                loss = per_sample_loss(
                    net,
                    x0,
                    t,
                    batch.noise[rows].to(dev),
                    self.path,
                    prediction=cfg.prediction,
                    y=y,
                    frac=frac,
                )
            weighted = self.weighting(loss.float(), t)
            if record is not None:
                record.append((rows, weighted.detach()))
            return weighted * batch.weight[rows].to(dev)

        return fn

    def train_step(self) -> dict[str, Any]:
        cfg, parts = self.cfg, self.parts
        batch = draw_batch(cfg, len(parts.data), parts.info.shape, parts.sampler, self.step)
        local = self.dist.local_slice(cfg.batch_size)
        counts = torch.bincount(batch.task, minlength=parts.partition.k)
        self.t_counts += torch.bincount(
            batch.t * len(self.t_counts) // cfg.timesteps, minlength=len(self.t_counts)
        )
        record = [] if parts.sampler.observes else None
        loss_fn = self.loss_fn(batch, local, record=record)
        self.weighting.zero_grad(set_to_none=True)
        try:
            info = mtl_backward(
                self.method, loss_fn, batch.task[local], counts, self.net, self.scaler
            )
        except NonFiniteError as e:
            raise NonFiniteError(
                f"stopped at step {self.step}: the loss or its gradient is not finite; "
                f"{self._last_good()}"
            ) from e
        if info.finite:
            self.dist.average_grads(list(self.weighting.parameters()))  # outside DDP's module
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.ema.step(self.model.parameters())
            mtl_after_step(
                self.method, self.loss_fn(batch, local), batch.task[local], counts, self.net
            )
            if record is not None:  # the global batch's losses, the same on every rank
                rows, losses = (torch.cat(parts) for parts in zip(*record, strict=True))
                parts.sampler.observe(batch.t, self.dist.gather_rows(rows, losses, cfg.batch_size))
        self.step += 1
        valid = ~torch.isnan(info.task_losses)
        loss = float((info.task_losses[valid] * counts[valid]).sum() / counts[valid].sum())
        return {
            "loss": loss,
            "task_losses": _floats(info.task_losses),
            "task_weights": _floats(info.task_weights),
            "finite": info.finite,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _finite_state(self) -> bool:
        """Weights finite and, without fp16 scaling, the next batch's losses too (all ranks)."""
        params = [p.detach() for p in self.model.parameters()]
        ok = bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())
        if ok and self.scaler is None:
            cfg, parts = self.cfg, self.parts
            batch = draw_batch(cfg, len(parts.data), parts.info.shape, parts.sampler, self.step)
            local = self.dist.local_slice(cfg.batch_size)
            with torch.no_grad():  # the bare model: a forward of DDP's expects its backward
                losses = self.loss_fn(batch, local, self.model)(torch.arange(len(local)))
            ok = bool(torch.isfinite(losses).all())
        return self.dist.all_true(ok)

    def _last_good(self) -> str:
        last = self.run.latest_checkpoint()
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        return f"{where}; continue with --resume and a lower --lr"

    def fit(self) -> RunDir:
        """Train to `cfg.steps`: log, checkpoint and evaluate on schedule; returns the run.
        SIGINT or SIGTERM stop it after the current step with a checkpoint (`Interrupted`)."""
        cfg = self.cfg
        progress = Progress(cfg.steps, self.step, self.seconds, enabled=self.dist.main)
        if cfg.eval_every and self.step == 0:
            progress.exclude(self._timed(self.evaluate, 0.0))  # the curve starts at initialisation
        with StopSignals() as stop:
            self._loop(progress, stop)
        progress.close()
        return self.run

    def _loop(self, progress: Progress, stop: StopSignals) -> None:
        cfg = self.cfg
        skipped = 0
        while self.step < cfg.steps:
            row = self.train_step()
            if self.auto is not None and (
                chosen := self.auto.observe(self.step, self.model, self.dist)
            ):
                self.set_tasks(chosen, progress.elapsed)
            skipped += not row["finite"]
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = {
                    "step": self.step,
                    **row,
                    "skipped": skipped,
                    "time": progress.elapsed,
                    "t_hist": self.t_counts.tolist(),
                }
                self.t_counts.zero_()
                if self.dist.main:
                    self.run.append_metrics(row)
                progress.update(self.step, row["loss"])
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                progress.exclude(self._timed(self.evaluate, progress.elapsed))
            signum = self.dist.max_int(stop.signum)
            if signum:
                if self.step % cfg.checkpoint_every and self.step != cfg.steps:
                    self.save()
                progress.close()
                name = signal.Signals(signum).name
                raise Interrupted(
                    f"stopped by {name} at step {self.step}; checkpoint saved, "
                    "continue with --resume",
                    128 + signum,
                )

    @staticmethod
    def _timed(fn: Callable[[float], None], seconds: float) -> float:
        start = time.perf_counter()
        fn(seconds)
        return time.perf_counter() - start


def _floats(x: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 6) for v in x.tolist()]
