"""Which data-parallel wrapper holds the model, and what the engine must do under it.

DDP (also under torch.compile's and accelerate's wrappers) and FSDP2 (`fully_shard`) both
average each gradient over the processes, so the engine's weighted step is the same under both
(engine module docstring). FSDP2 leaves each process a shard of every gradient: Gramian methods,
which need whole task gradients, are refused under it (step.check_inputs).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from antdiff.errors import AntError


def ddp_module(model: nn.Module) -> DistributedDataParallel | None:
    """The DDP module in `model`'s wrappers (torch.compile's, accelerate's), if any."""
    while not isinstance(model, DistributedDataParallel):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model


def is_fsdp(model: nn.Module) -> bool:
    """Whether FSDP2 (`fully_shard`) shards any of `model`'s parameters. Its gradients are
    averaged over the processes like DDP's (reduce-scatter), so the weighted step is the same;
    supported: one 1-D mesh over all processes and FSDP's default averaging."""
    found = False
    for m in model.modules():
        if not isinstance(m, FSDPModule):
            continue
        found = True
        group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
        if group is not None and (
            group.mesh_info.mesh.ndim != 1
            or group.mesh_info.mesh.size() != dist.get_world_size()
            or group.gradient_divide_factor is not None
            or group.force_sum_reduction_for_comms
        ):
            raise AntError(
                "under FSDP2 only one 1-D mesh over all processes with FSDP's "
                "default gradient averaging is supported (no HSDP, no divide factor)"
            )
    return found


def world_of(model: nn.Module) -> tuple[int, dist.ProcessGroup | None]:
    """World size and group: > 1 only for a model under DistributedDataParallel or FSDP2."""
    ddp = ddp_module(model)
    if ddp is not None:
        return dist.get_world_size(ddp.process_group), ddp.process_group
    if dist.is_initialized() and is_fsdp(model):
        return dist.get_world_size(), None
    return 1, None


def no_sync(model: nn.Module) -> AbstractContextManager[object]:
    """DDP's no_sync (FSDP2 reduce-scatters every backward into its sharded `.grad`: exact)."""
    ddp = ddp_module(model)
    return ddp.no_sync() if ddp is not None else nullcontext()


def all_finite(grads: list[Tensor], model: nn.Module) -> bool:
    """One fused pass (per-tensor norms are non-finite iff the tensor has an inf or NaN); under
    FSDP2 over this process's shards, then agreed by all processes."""
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    finite = torch.ones(())
    if local:
        finite = torch.isfinite(torch.stack(torch._foreach_norm(local))).all().float().cpu()
    if ddp_module(model) is None and world_of(model)[0] > 1:  # FSDP2
        finite = finite.to(comm_device())
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def comm_device() -> torch.device:
    """Where the default process group's backend takes tensors (gloo: CPU, nccl: the GPU)."""
    backend = dist.get_backend()
    return (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
