"""Timesteps as tasks (Go et al. 2023, Sec. 4): interval partitions, their exact clustering by
dynamic programming under a named cost, and timestep samplers that return task ids.

Knows nothing of models or diffusers: a clustering cost sees SNR(t) through `SNRCurve`."""

from antdiff.tasks.clustering import (
    COSTS,
    Clustering,
    affinity_cost,
    callable_cost,
    check_size,
    cluster,
    cluster_dp,
    interpolate_affinity,
    median_cost,
    timestep_cost,
)
from antdiff.tasks.decrease import DecreaseSampler
from antdiff.tasks.follow import FollowSampler
from antdiff.tasks.partition import IntervalPartition
from antdiff.tasks.spec import (
    ClusterSpec,
    SNRCurve,
    cluster_timesteps,
    clustering_from_spec,
    cost_matrix,
    load_affinity,
)
from antdiff.tasks.timesteps import (
    TIMESTEP_SAMPLINGS,
    LogitNormalSampler,
    LossAwareSampler,
    ModeSampler,
    RangeSampler,
    StratifiedSampler,
    TimestepSampler,
    UniformSampler,
    build_timestep_sampler,
    timestep_sampling,
)
from antdiff.tasks.within import StratifiedLossAwareSampler

# registered here, not in timesteps.py: these build on that module (no import cycle)
TIMESTEP_SAMPLINGS["follow"] = FollowSampler
TIMESTEP_SAMPLINGS["decrease"] = DecreaseSampler
TIMESTEP_SAMPLINGS["stratified-loss-aware"] = StratifiedLossAwareSampler

__all__ = [
    "COSTS",
    "TIMESTEP_SAMPLINGS",
    "ClusterSpec",
    "Clustering",
    "DecreaseSampler",
    "FollowSampler",
    "IntervalPartition",
    "LogitNormalSampler",
    "LossAwareSampler",
    "ModeSampler",
    "RangeSampler",
    "SNRCurve",
    "StratifiedLossAwareSampler",
    "StratifiedSampler",
    "TimestepSampler",
    "UniformSampler",
    "affinity_cost",
    "build_timestep_sampler",
    "callable_cost",
    "check_size",
    "cluster",
    "cluster_dp",
    "cluster_timesteps",
    "clustering_from_spec",
    "cost_matrix",
    "interpolate_affinity",
    "load_affinity",
    "median_cost",
    "timestep_cost",
    "timestep_sampling",
]
