"""Classifier-free guidance limited to an interval of noise levels (`--guidance-interval`).

Kynkaanniemi et al. (NeurIPS 2024, "Applying guidance in a limited interval improves sample and
distribution quality") apply guidance only at middle noise levels: at high noise it pushes
samples toward a few class templates (less variety), at low noise it is not needed. Outside the
interval the sampler uses the conditional prediction alone (scale 1, one forward pass).

The interval [lo, hi] holds fractions of the noise range, both ends included: t / T for DDPM
timesteps t in 0..T-1, and sigma (the network's time sigma * T over T: the flow time after the
shift) for flow matching. The default [0, 1] guides every step, as plain guidance does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from antdiff.errors import AntError

FULL: tuple[float, float] = (0.0, 1.0)


def check_guidance_interval(interval: Sequence[float]) -> tuple[float, float]:
    """`interval` as (lo, hi) if 0 <= lo < hi <= 1 (finite numbers); else AntError."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise AntError(
            f"the guidance interval must be two numbers LO,HI, got {interval!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
        raise AntError(f"the guidance interval must have 0 <= LO < HI <= 1, got {lo:g},{hi:g}")
    return lo, hi


def parse_guidance_interval(text: str) -> tuple[float, float]:
    """The interval of the flag text "LO,HI" (fractions of the noise range); else AntError."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise AntError(
            f"--guidance-interval must be LO,HI (two numbers in [0, 1]), got {text!r}"
        ) from None
    return check_guidance_interval(values)


def in_interval(frac: float, interval: tuple[float, float]) -> bool:
    """Whether noise level `frac` (t / T, or sigma) gets guidance; the full range always does."""
    if interval == FULL:
        return True  # every step, whatever the rounding of the scheduler's times
    return interval[0] <= frac <= interval[1]
