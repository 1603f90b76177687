"""The one training loop. Components are built from the config (build.py) and injected; the loop
has no per-method branch: every MTL method goes through `ant_backward` (antdiff.mtl.engine).

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
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from antdiff import build, distributed
from antdiff.affinity.auto import AutoClusters
from antdiff.batch import Batch, draw_batch
from antdiff.batchloss import BatchLoss, LossFn
from antdiff.build import Components
from antdiff.config import TrainConfig
from antdiff.errors import AntError, Interrupted, NonFiniteError
from antdiff.metricrows import EvalRow, StepRow, TasksRow
from antdiff.mtl import StepInfo, ant_after_step, ant_backward
from antdiff.progress import Progress
from antdiff.resume import check_checkpoint, check_resumable, checkpoint_info
from antdiff.rundir import Checkpoint, RunDir
from antdiff.signals import StopSignals
from antdiff.tasks import Clustering
from antdiff.trainstate import TrainState

#: Evaluates a model (the EMA weights, in eval mode) and returns JSON-friendly metrics.
EvalFn = Callable[[nn.Module], dict[str, Any]]


class Trainer:
    """One run: its state (trainstate.py), run directory and processes; `fit()` runs the loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Components,
        run: RunDir,
        dist: distributed.Dist,
        evaluate: EvalFn | None = None,
    ) -> None:
        self.cfg, self.run, self.dist, self.evaluator = cfg, run, dist, evaluate
        dev = dist.device
        self.state = TrainState(cfg, parts, dev)
        self.loss = BatchLoss(
            cfg, parts.data, parts.info.num_classes, parts.schedule.loss_path(dev), dev
        )
        self.seconds = 0.0  # training time of the steps done before this process started
        self.t_counts = torch.zeros(20, dtype=torch.long)  # timesteps drawn since the last log
        self.net: nn.Module = self.model
        if dist.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[dev] if dev.type == "cuda" else None
            )

    @property
    def parts(self) -> Components:
        """The run's components (the tasks' ones change once in an affinity:K:auto run)."""
        return self.state.parts

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def auto(self) -> AutoClusters | None:
        """The affinity:K:auto measurement while it warms up, else None."""
        return self.parts.auto

    @classmethod
    def start(
        cls, cfg: TrainConfig, resume: bool = False, evaluate: EvalFn | None = None
    ) -> Trainer:
        """A trainer for a fresh run in `cfg.out`, or for the run there (`resume`; a run that
        stopped before its first checkpoint starts again from step 0). Rank 0 holds the run's
        lock until `close()` (or the end of a `with` block)."""
        dist = distributed.setup(cfg.device)
        dist.check_same(cfg.to_dict())  # before any rank touches the run directory
        run, parts, ckpt = _open_run(cfg, dist, resume)
        try:
            trainer = cls(cfg, parts, run, dist, evaluate)
            if ckpt is not None:
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

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from the checkpoint `ckpt` of the run, exactly."""
        if self.cfg.steps < ckpt.step:
            raise AntError(f"{self.run.path} is at step {ckpt.step}: --steps must be >= that")
        self.state.load(ckpt)
        if self.dist.main:
            self.run.set_aside_after(self.step)
            self.run.truncate_metrics(self.step)
            if self.cfg != self.run.cfg:
                self.run.write_config(self.cfg)
        self.dist.barrier()
        logged = [r.time for r in self.run.metrics() if r.time is not None]
        self.seconds = logged[-1] if logged else 0.0

    def save(self) -> None:
        """A checkpoint of the current state (rank 0 writes it), only of a state whose weights
        are finite and give a finite loss on the next batch: a run that diverges never replaces
        its last good checkpoint (with fp16, only the weights are checked: GradScaler skips
        overflowing steps by design)."""
        if not self._finite_state():
            raise NonFiniteError(
                f"stopped at step {self.step}: the weights give a non-finite loss; "
                f"{_last_good(self.run)}"
            )
        if not self.dist.main:
            self.dist.barrier()
            return
        weights, ema = self.state.weights()
        try:
            self.run.save_checkpoint(
                self.step, weights, ema, self.state.state_dict(), keep=self.cfg.keep_checkpoints
            )
        finally:
            self.dist.barrier()

    def set_tasks(self, chosen: Clustering, seconds: float) -> None:
        """From the warm-up of affinity:K:auto on, train with the run's method over the intervals
        `chosen` (the DP over the measured affinity); the run records them."""
        auto = self.auto
        assert auto is not None
        info = replace(
            self.parts.info,
            partition=chosen.partition,
            clustering_cost=chosen.cost,
            warming_up=False,
        )
        self.state.use_tasks(info, *build.tasks(self.cfg, info, self.parts.schedule))
        if self.dist.main:
            record = auto.record(chosen, self.step, seconds)
            self.run.write_tasks(record, auto.affinity, auto.matrices, auto.edges)
            self.run.write_info(info)
            self.run.append_metrics(TasksRow(self.step, seconds, record))

    @contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The model with its EMA weights, in eval mode; the training weights come back after."""
        with self.state.ema_weights() as model:
            yield model

    def evaluate(self, seconds: float) -> None:
        """Metrics of the current EMA weights, appended to metrics.jsonl with the training time
        `seconds` so far (rank 0 only)."""
        if self.dist.main and self.evaluator is not None:
            with self.ema_weights() as model:
                result = self.evaluator(model)
            self.run.append_metrics(EvalRow(self.step, seconds, result))
        self.dist.barrier()

    def loss_fn(
        self, batch: Batch, net: nn.Module | None = None, record: list | None = None
    ) -> LossFn:
        """The per-sample losses of this rank's slice of `batch` (batchloss.py), by `net`
        (default: the DDP wrapper under torchrun, whose backward syncs gradients)."""
        local = self.dist.local_slice(self.cfg.batch_size)
        return self.loss.closure(batch, local, net or self.net, self.parts.weighting, record)

    def draw(self) -> Batch:
        """The global batch of the current step."""
        parts = self.parts
        return draw_batch(
            self.cfg, len(parts.data), parts.info.shape, parts.timestep_sampler, self.step
        )

    def train_step(self) -> StepRow:
        cfg, parts, state = self.cfg, self.parts, self.state
        batch = self.draw()
        local = self.dist.local_slice(cfg.batch_size)
        counts = torch.bincount(batch.task, minlength=parts.partition.k)
        self.t_counts += torch.bincount(
            batch.t * len(self.t_counts) // cfg.timesteps, minlength=len(self.t_counts)
        )
        record = [] if parts.timestep_sampler.needs_losses else None
        if parts.method.takes_shares:  # `sampled:`: the model's update by the drawn batch
            parts.method.set_shares(parts.timestep_sampler.shares(batch.task))
        parts.weighting.zero_grad(set_to_none=True)
        try:
            step_info = ant_backward(
                parts.method,
                self.loss_fn(batch, record=record),
                batch.task[local],
                counts,
                self.net,
                state.scaler,
                gramian=parts.timestep_sampler.gramian_due(self.step),
            )
        except NonFiniteError as e:
            raise NonFiniteError(
                f"stopped at step {self.step}: the loss or its gradient is not finite; "
                f"{_last_good(self.run)}"
            ) from e
        if step_info.finite:
            self.dist.average_grads(list(parts.weighting.parameters()))  # outside DDP's module
            clip = cfg.grad_clip or parts.method.default_max_grad_norm
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            state.optimizer.step()
            state.ema.step(self.model.parameters())
            ant_after_step(parts.method, self.loss_fn(batch), batch.task[local], counts, self.net)
            losses = _gathered(record, self.dist, cfg.batch_size)
            weights = parts.method.sampling_weights(step_info.task_weights)
            parts.timestep_sampler.step_done(batch.t, losses, weights, step_info.gramian)
        state.step += 1
        return _row(self.step, step_info, counts, state.optimizer.param_groups[0]["lr"])

    def _finite_state(self) -> bool:
        """Weights finite and, without fp16 scaling, the next batch's losses too (all ranks)."""
        params = [p.detach() for p in self.model.parameters()]
        ok = bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())
        if ok and self.state.scaler is None:
            n = len(self.dist.local_slice(self.cfg.batch_size))
            with torch.no_grad():  # the bare model: a forward of DDP's expects its backward
                losses = self.loss_fn(self.draw(), self.model)(torch.arange(n))
            ok = bool(torch.isfinite(losses).all())
        return self.dist.all_true(ok)

    def fit(self) -> RunDir:
        """Train to `cfg.steps`: log, checkpoint and evaluate on schedule; returns the run.
        SIGINT or SIGTERM stop it after the current step with a checkpoint (`Interrupted`)."""
        cfg = self.cfg
        progress = Progress(cfg.steps, self.step, self.seconds, enabled=self.dist.main)
        if cfg.eval_every and self.step == 0:
            progress.exclude(_timed(self.evaluate, 0.0))  # the curve starts at initialisation
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
                chosen := self.auto.measure_if_due(self.step, self.model, self.dist)
            ):
                self.set_tasks(chosen, progress.elapsed)
            skipped += not row.finite
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                hist = self.t_counts.tolist()
                row = replace(row, skipped=skipped, time=progress.elapsed, t_hist=hist)
                self.t_counts.zero_()
                if self.dist.main:
                    self.run.append_metrics(row)
                progress.update(self.step, row.loss)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                progress.exclude(_timed(self.evaluate, progress.elapsed))
            signum = self.dist.max_int(stop.signum)
            if signum:
                if self.step % cfg.checkpoint_every and self.step != cfg.steps:
                    self.save()
                progress.close()
                raise _interrupted(signum, self.step)


def _open_run(
    cfg: TrainConfig, dist: distributed.Dist, resume: bool
) -> tuple[RunDir, Components, Checkpoint | None]:
    """(run, components, checkpoint to continue from): a fresh run directory, or the one in
    `cfg.out` with the tasks its checkpoint trained with (an auto run may have chosen since).
    Rank 0 holds the run's lock."""
    if cfg.precision != "fp32" and dist.device.type != "cuda":
        raise AntError(f"--precision {cfg.precision} needs a GPU; use fp32 on the CPU")
    if not resume:
        parts = build.components(cfg)
        if dist.main:
            run = RunDir.create(cfg.out, cfg, parts.info)  # locked
        dist.barrier()
        if not dist.main:
            run = RunDir(cfg.out, cfg, parts.info)
        return run, parts, None
    run = RunDir.open(cfg.out)
    check_resumable(run.cfg, cfg)
    if dist.main:
        run.lock()
    try:
        ckpt = run.load_checkpoint() if run.has_checkpoint() else None
        if ckpt is None:
            _check_nothing_logged(run)
        else:
            check_checkpoint(run, ckpt)
        parts = build.components(cfg, ckpt and checkpoint_info(run.info, ckpt))
        if ckpt is None and dist.main:  # it starts again from step 0
            run.truncate_metrics(0)
            run.write_config(cfg)
            run.write_info(parts.info)
    except BaseException:
        run.unlock()
        raise
    if ckpt is None:
        dist.barrier()
    return run, parts, ckpt


def _gathered(record: list | None, dist: distributed.Dist, batch_size: int) -> torch.Tensor | None:
    """The global batch's per-sample losses that `record` collected on this rank, the same on
    every rank (None when nothing was recorded)."""
    if record is None:
        return None
    rows, mine = (torch.cat(r) for r in zip(*record, strict=True))
    return dist.gather_rows(rows, mine, batch_size)


def _check_nothing_logged(run: RunDir) -> None:
    """A resume without a checkpoint starts again from step 0, which is right only for a run
    that stopped before it logged a step: refuse to erase the history of one whose checkpoints
    are gone (deleted, or `checkpoints` not a folder)."""
    logged = [r.step for r in run.metrics() if r.step]
    if logged:
        raise AntError(
            f"{run.path} logged steps up to {max(logged)} but has no checkpoint in "
            f"{run.path / 'checkpoints'}; to start over, delete it or train into another --out"
        )


def _row(step: int, step_info: StepInfo, counts: torch.Tensor, lr: float) -> StepRow:
    """A step's metrics row: the mean loss over the batch's samples, each task's loss and
    weight (None for a task absent from the batch)."""
    valid = ~torch.isnan(step_info.task_losses)
    counted = counts[valid]
    return StepRow(
        step=step,
        loss=float((step_info.task_losses[valid] * counted).sum() / counted.sum()),
        task_losses=_floats(step_info.task_losses),
        task_weights=_floats(step_info.task_weights),
        finite=step_info.finite,
        lr=lr,
    )


def _last_good(run: RunDir) -> str:
    last = run.latest_checkpoint()
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
    return f"{where}; continue with --resume and a lower --lr"


def _interrupted(signum: int, step: int) -> Interrupted:
    name = signal.Signals(signum).name
    message = f"stopped by {name} at step {step}; checkpoint saved, continue with --resume"
    return Interrupted(message, 128 + signum)


def _timed(fn: Callable[[float], None], seconds: float) -> float:
    start = time.perf_counter()
    fn(seconds)
    return time.perf_counter() - start


def _floats(x: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 6) for v in x.tolist()]
