"""Run by tests/test_ddp_mtl.py under `torchrun --nproc_per_node 2` (CPU, gloo).

For each method, 3 optimizer steps of a tiny MLP under DDP (uneven local batches, a task present
on one rank only) must give the parameters of one process on the same global batch; so must DDP
with each rank's share accumulated over 2 micro-batches (`Accumulation`), DDP under
torch.compile, and FSDP2 (`fully_shard`) for the loss-based methods; FSDP2 with a Gramian
method must be refused. Writes {case: max relative parameter difference, or the refusal} as
JSON to argv[1] (rank 0).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from antdiff.errors import AntError
from antdiff.mtl import Accumulation, ant_after_step, ant_backward, build_method

K = 3
STEPS = 3
METHODS = {
    "mean": {},
    "uw": {},
    "famo": {},
    "famo_same_batch": {"same_batch": True},
    "pcgrad": {"seed": 7},
    "nash": {"update_every": 2},  # steps: refresh, cached weights, refresh
}
SPLIT = 7  # rank 0 holds samples 0..6 of the global batch of 12, rank 1 holds 7..11


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(12, 4, generator=gen)
    y = torch.randn(12, 2, generator=gen)
    # task 2 only on rank 1 (positions 7..11); tasks 0 and 1 on both ranks, unevenly
    ids = torch.tensor([0, 1, 0, 0, 1, 0, 1, 2, 1, 2, 0, 2])
    return x, y, ids


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def wrap(net: nn.Module, how: str) -> nn.Module:
    if how == "fsdp":
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        return fully_shard(net)
    ddp = DistributedDataParallel(net)
    return torch.compile(ddp, backend="eager") if how == "compile" else ddp


def train(
    name: str, rank: int | None, micro: int = 1, how: str = "ddp"
) -> tuple[list[torch.Tensor], dict]:
    """rank None: one process on the global batch; else this rank's share under DDP (`how`:
    "ddp", "compile": DDP under torch.compile, "fsdp": FSDP2), in `micro` micro-batches."""
    net = make_model()
    model = net if rank is None else wrap(net, how)
    method = build_method(name.split("_")[0], num_tasks=K, **METHODS[name])
    opt = torch.optim.SGD(
        [{"params": net.parameters()}, *method.param_groups()], lr=0.1, momentum=0.9
    )
    scale = torch.tensor([1.0, 4.0, 0.25])
    for step in range(STEPS):
        x, y, ids = global_batch(step)
        counts = torch.bincount(ids, minlength=K)
        if rank is not None:
            part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
            x, y, ids = x[part], y[part], ids[part]

        def loss_fn(index: torch.Tensor, x=x, y=y, ids=ids) -> torch.Tensor:
            return ((model(x[index]) - y[index]) ** 2).mean(dim=1) * scale[ids[index]]

        opt.zero_grad()
        if micro == 1:
            info = ant_backward(method, loss_fn, ids, counts, model)
        else:
            acc = Accumulation(method, model, counts, micro_batches=micro)
            for part in torch.tensor_split(torch.arange(len(ids)), micro):
                acc.add(lambda i, part=part: loss_fn(part[i]), ids[part])
            info = acc.step()
        assert info.finite
        if method.default_max_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), method.default_max_grad_norm)
        opt.step()
        ant_after_step(method, loss_fn, ids, counts, model)
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in net.parameters()]
    return [p.detach().clone() for p in params], method.state_dict()


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    pairs = zip(a, b, strict=True)
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in pairs)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    cases = [
        *METHODS,
        *(f"{m}+accumulate" for m in METHODS if m != "famo_same_batch"),
        *(f"{m}+compile" for m in ("uw", "pcgrad")),
        *(f"{m}+fsdp" for m in METHODS),
        "uw+fsdp+accumulate",
    ]
    for name in cases:
        name_, *how = name.split("+")
        micro = 2 if "accumulate" in how else 1
        wrapper = "compile" if "compile" in how else "fsdp" if "fsdp" in how else "ddp"
        try:
            ddp_params, ddp_state = train(name_, rank, micro, wrapper)
        except AntError as e:
            results[name] = str(e)
            continue
        ref_params, ref_state = train(name_, None)
        diff = rel_diff(ddp_params, ref_params)
        states = [
            v for v in ddp_state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
        ]
        refs = [
            v for v in ref_state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
        ]
        if states:
            diff = max(diff, rel_diff(states, refs))
        results[name] = diff
    gathered = [None, None]
    dist.all_gather_object(gathered, results)
    if rank == 0:
        worst = {n: max(r[n] for r in gathered) for n in gathered[0]}
        with open(sys.argv[1], "w") as f:
            json.dump(worst, f)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
