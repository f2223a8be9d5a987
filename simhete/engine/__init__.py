"""Engines: run a Schedule with per-task durations and return a Timeline.

``simulate(..., engine="fast")`` is the default; ``engine="simpy"`` is the readable reference model
of the same semantics (docs/engine.md). Both return identical timelines.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from simhete.engine.fast import simulate_fast
from simhete.engine.timeline import OOMReport, Record, Timeline
from simhete.errors import ConfigError
from simhete.schedule import Schedule


def simulate_simpy(schedule: Schedule, durations: Sequence[float],
                   interference: Iterable[tuple[str, str, float]] = ()) -> Timeline:
    """The SimPy reference engine, imported on first use so that importing the Timeline type
    (as replay/ does, which must not depend on simpy) does not import simpy."""
    from simhete.engine.simpy_engine import simulate_simpy as run
    return run(schedule, durations, interference)


ENGINES: dict[str, Callable[..., Timeline]] = {"fast": simulate_fast, "simpy": simulate_simpy}


def simulate(schedule: Schedule, durations: Sequence[float],
             interference: Iterable[tuple[str, str, float]] = (), engine: str = "fast") -> Timeline:
    """Run ``schedule`` on the named engine; ``interference`` is (victim_glob, aggressor_glob, factor)."""
    if engine not in ENGINES:
        raise ConfigError(None, "engine", engine, " | ".join(ENGINES))
    return ENGINES[engine](schedule, durations, tuple(interference))


__all__ = ["ENGINES", "OOMReport", "Record", "Timeline", "simulate", "simulate_fast", "simulate_simpy"]
