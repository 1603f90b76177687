"""Timesteps as tasks: interval partitions, exact interval clustering, timestep samplers."""

from antdiff.tasks.clustering import (
    COSTS,
    Clustering,
    affinity_cost,
    callable_cost,
    cluster,
    cluster_dp,
    interpolate_affinity,
    median_cost,
    timestep_cost,
)
from antdiff.tasks.objective import (
    cluster_schedule,
    cost_matrix,
    load_affinity,
    parse_clusters,
    partition_from_spec,
)
from antdiff.tasks.partition import IntervalPartition
from antdiff.tasks.sampling import (
    SAMPLERS,
    RangeSampler,
    StratifiedSampler,
    UniformSampler,
    build_sampler,
)

__all__ = [
    "COSTS",
    "SAMPLERS",
    "Clustering",
    "IntervalPartition",
    "RangeSampler",
    "StratifiedSampler",
    "UniformSampler",
    "affinity_cost",
    "build_sampler",
    "callable_cost",
    "cluster",
    "cluster_dp",
    "cluster_schedule",
    "cost_matrix",
    "interpolate_affinity",
    "load_affinity",
    "median_cost",
    "parse_clusters",
    "partition_from_spec",
    "timestep_cost",
]
