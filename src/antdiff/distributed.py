"""Single process or torchrun (DDP) with the same code path: rank 0 writes, every rank trains."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from antdiff.errors import AntError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local_slice(self, n: int) -> torch.Tensor:
        """This rank's indices into a global batch of n samples (any n: slices differ by <= 1)."""
        return torch.tensor_split(torch.arange(n), self.world)[self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def max_int(self, value: int) -> int:
        """The largest `value` over the ranks (every rank gets it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (on the CPU)."""
        if self.world == 1:
            return tensor
        t = tensor.to(self.device)
        dist.broadcast(t, src=0)
        return t.cpu()

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of parameters that DDP does not hold over the ranks."""
        grads = [p.grad for p in params if p.grad is not None]
        if self.world > 1 and grads:
            for g in grads:
                dist.all_reduce(g)
                g.div_(self.world)

    def gather_rows(self, rows: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        """The [n] vector whose entries `rows` each rank holds (`values`), on every rank."""
        out = torch.zeros(n, dtype=torch.float64, device=self.device)
        out[rows.to(self.device)] = values.to(self.device, torch.float64)
        if self.world > 1:
            dist.all_reduce(out)
        return out.cpu()

    def check_same(self, config: dict) -> None:
        """Refuse, on every rank, a run whose ranks were started with different settings (each
        would train on silently with its own, or abort inside a collective of another shape)."""
        if self.world == 1:
            return
        mine = json.dumps(config, sort_keys=True, default=str)
        config = json.loads(mine)
        every: list[str | None] = [None] * self.world
        dist.all_gather_object(every, mine)
        for rank, theirs in enumerate(every):
            other = json.loads(theirs or "{}")
            differ = sorted(k for k in {**config, **other} if config.get(k) != other.get(k))
            if differ:
                name = differ[0]
                raise AntError(
                    f"rank {rank} was started with another --{name.replace('_', '-')} "
                    f"({other.get(name)!r}, rank {self.rank}: {config.get(name)!r}); every rank "
                    "must get the same flags"
                )

    def all_true(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank."""
        return self.max_int(0 if ok else 1) == 0


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process of the torchrun job
    is gone (killed, or stopped by its own error): the survivor's side of someone else's fault."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(error, RuntimeError):
        return False
    marks = ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe")
    return isinstance(error, getattr(dist, "DistError", ())) or any(m in str(error) for m in marks)


def check_device_name(device: str) -> None:
    """auto, cpu, cuda or cuda:N; anything else (tpu, mps, ...) is refused by name."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise AntError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    check_device_name(device)
    cuda = device != "cpu" and (device != "auto" or torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise AntError(f"--device {device} but no CUDA device is available")
    if not cuda:
        return torch.device("cpu")
    try:
        return torch.device(device if ":" in device else f"cuda:{local_rank}")
    except RuntimeError:
        raise AntError(f"bad --device {device!r}; use auto, cpu, cuda or cuda:N") from None


def setup(device: str = "auto") -> Dist:
    """Join the torchrun process group when launched by torchrun, else run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
