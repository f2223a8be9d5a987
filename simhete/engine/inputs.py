"""Input checks shared by both engines: what a Schedule must satisfy before it can be simulated.

:func:`check_durations` (every call) and :func:`check_inputs` (the SimPy engine; the fast engine
makes the same schedule checks once per schedule in :mod:`simhete.engine.indexed`) check what is
cheap to check up front; the engines find unknown dependencies and bad allocations while they index
the schedule and report them with :func:`bad_dep` and :func:`check_alloc`, so both say the same thing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from simhete.errors import SimheteError
from simhete.schedule import Alloc, Schedule, Task


def check_durations(names: Sequence[str], durations: Sequence[float]) -> np.ndarray:
    """The durations as a float64 array (``names``: the tasks' names, in order); a one-line
    SimheteError for a wrong count or a bad value."""
    if len(durations) != len(names):
        raise SimheteError(f"durations has {len(durations)} entries for {len(names)} tasks")
    out = np.array(durations, dtype=np.float64)
    if len(out) and out.min() >= 0.0 and out.max() < np.inf:    # every one finite and >= 0 (a NaN fails both)
        return out
    good = np.isfinite(out) & (out >= 0.0)
    if not good.all():
        k = int(np.argmin(good))
        raise SimheteError(f"task {names[k]}: duration {float(out[k])!r} must be a finite number >= 0")
    return out


def check_inputs(schedule: Schedule, durations: Sequence[float]) -> tuple[list[float], dict[str, int]]:
    """Return the durations as floats and the name -> index map; raise a one-line SimheteError."""
    tasks = schedule.tasks
    out = check_durations(schedule.table.name, durations).tolist()
    index = schedule.index()
    if len(index) != len(tasks):
        dup = next(t.name for k, t in enumerate(tasks) if index[t.name] != k)
        raise SimheteError(f"duplicate task name {dup}")
    for a in schedule.initial:
        if a.pool not in schedule.pools:
            raise SimheteError(f"initial buffer {a.buf}: unknown pool {a.pool!r}")
    return out, index


def bad_dep(task: Task, index: dict[str, int]) -> SimheteError:
    missing = next(d for d in task.deps if d not in index)
    return SimheteError(f"task {task.name}: dependency {missing} does not exist")


def check_alloc(task: Task, a: Alloc, pools) -> None:
    if a.pool not in pools:
        raise SimheteError(f"task {task.name}: buffer {a.buf} in unknown pool {a.pool!r}")
    if a.bytes < 0:
        raise SimheteError(f"task {task.name}: buffer {a.buf} has negative size {a.bytes}")
