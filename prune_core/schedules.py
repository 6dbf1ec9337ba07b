"""Sparsity schedules: the cumulative sparsity to reach after each prune step."""

from __future__ import annotations

from .registry import Registry

SCHEDULES: Registry = Registry("schedule")


def sparsity_schedule(name: str, target: float, steps: int = 1) -> list[float]:
    """Cumulative sparsity after each of ``steps`` prune steps; the last value is ``target``."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity={target!r} is invalid; allowed: a fraction 0 <= s < 1")
    if steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; allowed: an integer >= 1")
    return SCHEDULES.get(name)(target, steps)


@SCHEDULES.register("oneshot")
def oneshot(target: float, steps: int = 1) -> list[float]:
    """Everything in one step."""
    if steps != 1:
        raise ValueError(f"iterations={steps!r} is invalid for oneshot; allowed: 1")
    return [target]


@SCHEDULES.register("iterative")
def iterative(target: float, steps: int) -> list[float]:
    """Each step removes the same fraction p of the remaining weights: s_i = 1 - (1-target)^(i/k).

    p = 1 - (1-target)^(1/k); the last step is set to ``target`` exactly (no rounding drift).
    """
    schedule = [1.0 - (1.0 - target) ** (i / steps) for i in range(1, steps + 1)]
    schedule[-1] = target
    return schedule


@SCHEDULES.register("gradual")
def gradual(target: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f) * (1 - t/n)^3 for t = 1..n."""
    return [target + (initial - target) * (1.0 - t / steps) ** 3 for t in range(1, steps + 1)]
