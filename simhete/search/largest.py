"""The largest model that fits: the deepest model at a scenario model's widths that trains under
its policy, knobs and hardware (a published ``largest_model`` figure's prediction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LARGEST_MAX_DEPTH = 4096
LARGEST_MAX_TRIALS = 26      # simulations one largest_model search may run: a full search to depth
                             # 4096 needs at most 2·12 + 1; a count, not a clock, so results are
                             # the same on every machine
SEARCH_ITERATIONS = 2        # whether a model fits is decided by the warm-up and one steady iteration


@dataclass(frozen=True)
class Largest:
    params: int | None       # parameters of the deepest model that fits; None: not even one layer
    depth: int               # its depth (0: none)
    trials: int
    complete: bool           # False: the trial cap stopped the search (params is a lower bound)
    capped: bool = False     # the depth cap itself fits (params is a lower bound)


def largest_model(s: Any, engine: str = "fast", *, max_depth: int = LARGEST_MAX_DEPTH,
                  max_trials: int = LARGEST_MAX_TRIALS) -> Largest:
    """The deepest model at the scenario model's widths (hidden, heads, FFN, vocab) that fits under
    the scenario's policy, knobs and hardware, found by doubling from the scenario's depth and then
    bisection (fitting is monotone in depth for a fixed policy and knobs: every per-block buffer
    and model state grows with it). At most ~2·log2(max_depth) simulations, fewer than
    at most ``max_trials`` of them (past it the search stops: ``complete`` is False). A trial
    count, not a time budget: the same inputs give the same answer on any machine."""
    from simhete.sim import resolve_model, run

    short = s.with_changes(iterations=SEARCH_ITERATIONS)
    trials = [0]

    def at(depth: int) -> Any:
        return short.with_changes(**{"model.n_layers": depth})

    def fits(depth: int) -> bool:
        trials[0] += 1
        return bool(run(at(depth), engine=engine, check=False).summary.fits)

    def out_of_time() -> bool:
        return trials[0] >= max_trials

    d0 = min(max(1, resolve_model(s).n_layers), max_depth)
    if fits(d0):
        lo, hi = d0, d0 * 2
        while hi <= max_depth and not out_of_time() and fits(hi):
            lo, hi = hi, hi * 2
        if hi > max_depth:
            hi = max_depth + 1
    else:
        lo, hi = 0, d0
    while hi - lo > 1 and not out_of_time():   # invariant: fits(lo) (or lo == 0), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    complete = hi - lo <= 1
    if lo == 0:
        return Largest(None, 0, trials[0], complete)
    return Largest(resolve_model(at(lo)).n_params(), lo, trials[0], complete, capped=lo >= max_depth)
