"""Input checks shared by both engines: what a Schedule must satisfy before it can be simulated."""

from __future__ import annotations

import math
from typing import Sequence

from simhete.errors import SimheteError
from simhete.schedule import Schedule


def check_inputs(schedule: Schedule, durations: Sequence[float]) -> tuple[float, ...]:
    """Return the durations as floats; raise a one-line SimheteError for anything unsimulatable."""
    tasks = schedule.tasks
    if len(durations) != len(tasks):
        raise SimheteError(f"durations has {len(durations)} entries for {len(tasks)} tasks")
    out = tuple(float(d) for d in durations)
    for t, d in zip(tasks, out):
        if not (math.isfinite(d) and d >= 0.0):
            raise SimheteError(f"task {t.name}: duration {d!r} must be a finite number >= 0")
    names = schedule.index()
    if len(names) != len(tasks):
        dup = next(t.name for k, t in enumerate(tasks) if names[t.name] != k)
        raise SimheteError(f"duplicate task name {dup}")
    pools = schedule.pools
    for t in tasks:
        for d in t.deps:
            if d not in names:
                raise SimheteError(f"task {t.name}: dependency {d} does not exist")
        for a in t.allocs:
            if a.pool not in pools:
                raise SimheteError(f"task {t.name}: buffer {a.buf} in unknown pool {a.pool!r}")
            if a.bytes < 0:
                raise SimheteError(f"task {t.name}: buffer {a.buf} has negative size {a.bytes}")
    for a in schedule.initial:
        if a.pool not in pools:
            raise SimheteError(f"initial buffer {a.buf}: unknown pool {a.pool!r}")
    return out
