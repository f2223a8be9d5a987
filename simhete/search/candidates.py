"""Simulate-and-pick: the schedule of a policy that offers several (``Policy.candidates``).

A policy never runs the engine (tests/test_layering.py). One that cannot tell from its own model
which of a few schedules is best (AutoHete: its MILP's busiest-stream model can be optimistic)
offers them all as :class:`~simhete.policy.base.Candidates`; :func:`choose_schedule`, which
simhete.sim calls for every policy, prices each with the context's cost model, runs it on the fast
engine (timelines identical to the SimPy reference's, so the choice does not depend on the engine
the run reports with) and keeps the one with the least steady iteration time among those that do
not run out of memory, the first of equals; when none fits, the policy's ``otherwise``. A policy
with one answer (``candidates`` returns ``None``, the default) is built as usual, through its
kept structure if it has a structure key (simhete/policy/structures.py).
"""

from __future__ import annotations

from typing import Any

from simhete.engine import simulate
from simhete.policy.base import Context, Policy
from simhete.policy.structures import build_schedule
from simhete.schedule import Schedule


def choose_schedule(policy: Policy, ctx: Context) -> Schedule:
    """The schedule ``policy`` runs in ``ctx``: its only one, or the best of its candidates."""
    offered = policy.candidates(ctx)
    if offered is None:
        return build_schedule(policy, ctx)
    best: tuple[float, Any] | None = None
    for sched in offered.schedules:
        tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
        if tl.oom is None and (best is None or tl.steady_iteration_time() < best[0]):
            best = (tl.steady_iteration_time(), sched)
    return best[1] if best is not None else offered.otherwise()
