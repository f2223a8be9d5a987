"""Predicted vs measured: two Timelines of the same Schedule joined on task names. No torch.

Steady state excludes the first iteration (warm-up: first-touch allocation, lazy initialisation):
the steady iteration time is ``(end of iteration N − end of iteration 1) / (N − 1)``, the mean
over iterations 2..N, for both timelines. Per-category totals are the busy seconds of that
category's tasks in iterations 2..N divided by N − 1 (with one iteration, all of it counts).
Errors are signed, ``(predicted − measured) / measured``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simhete.engine.timeline import Timeline
from simhete.opkinds import TaskCat

CATEGORIES = (TaskCat.FWD, TaskCat.BWD, TaskCat.RECOMPUTE, TaskCat.H2D, TaskCat.D2H,
              TaskCat.OPTIM_CPU, TaskCat.OPTIM_GPU, TaskCat.COMM)


@dataclass(frozen=True)
class Pair:
    predicted: float
    measured: float

    @property
    def error(self) -> float | None:
        return None if self.measured == 0 else (self.predicted - self.measured) / self.measured

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "measured": self.measured, "error": self.error}


@dataclass(frozen=True)
class TaskError:
    name: str
    cat: str
    predicted: float
    measured: float

    @property
    def error(self) -> float | None:
        return None if self.measured == 0 else (self.predicted - self.measured) / self.measured


@dataclass(frozen=True)
class Comparison:
    scenario: str
    device: str
    iterations: int
    steady_iterations: tuple[int, ...]
    iteration: Pair
    categories: dict[str, Pair]
    peak: dict[str, Pair]
    worst: tuple[TaskError, ...]
    losses: tuple[float, ...] = ()
    reference_losses: tuple[float, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_loss_diff(self) -> float | None:
        if not self.losses or len(self.losses) != len(self.reference_losses):
            return None
        return max(abs(a - b) for a, b in zip(self.losses, self.reference_losses))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "device": self.device, "iterations": self.iterations,
            "steady_iterations": list(self.steady_iterations),
            "iteration_s": self.iteration.to_dict(),
            "categories_s": {k: v.to_dict() for k, v in self.categories.items()},
            "peak_bytes": {k: v.to_dict() for k, v in self.peak.items()},
            "worst_tasks": [dict(asdict(t), error=t.error) for t in self.worst],
            "losses": list(self.losses), "reference_losses": list(self.reference_losses),
            "max_loss_diff": self.max_loss_diff, "notes": list(self.notes),
        }


def steady(tl: Timeline) -> tuple[float, tuple[int, ...]]:
    """(steady iteration seconds, the iterations it averages)."""
    ends = tl.iteration_ends()
    its = sorted(i for i in ends if i > 0)
    if len(its) >= 2:
        return (ends[its[-1]] - ends[its[0]]) / (len(its) - 1), tuple(its[1:])
    return tl.makespan, tuple(its)


def compare(predicted: Timeline, measured: Timeline, *, scenario: str = "", device: str = "",
            losses: tuple[float, ...] = (), reference_losses: tuple[float, ...] = (),
            worst: int = 8, notes: tuple[str, ...] = ()) -> Comparison:
    p_it, its = steady(predicted)
    m_it, _ = steady(measured)
    keep = set(its)
    n = max(1, len(its))

    def totals(tl: Timeline) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in tl.records:
            if r.it in keep:
                out[r.cat.value] = out.get(r.cat.value, 0.0) + r.dur
        return out

    pt, mt = totals(predicted), totals(measured)
    cats = {c.value: Pair(pt.get(c.value, 0.0) / n, mt.get(c.value, 0.0) / n)
            for c in CATEGORIES if c.value in pt or c.value in mt}
    pools = sorted(set(predicted.peak) | set(measured.peak))
    peak = {p: Pair(float(predicted.peak.get(p, 0)), float(measured.peak.get(p, 0))) for p in pools}
    meas = {r.name: r for r in measured.records}
    errs = [TaskError(r.name, r.cat.value, r.dur, meas[r.name].dur)
            for r in predicted.records if r.it in keep and r.name in meas]
    errs.sort(key=lambda e: (-abs(e.predicted - e.measured), e.name))
    its_total = len({r.it for r in predicted.records})
    return Comparison(scenario, device, its_total, its, Pair(p_it, m_it), cats, peak,
                      tuple(errs[:worst]), tuple(losses), tuple(reference_losses), notes)
