"""Input checks shared by both engines: what a Schedule must satisfy before it can be simulated.

:func:`check_inputs` checks what is cheap to check up front; the engines find unknown dependencies
and bad allocations while they index the schedule and report them with :func:`bad_dep` and
:func:`bad_alloc`, so both say the same thing.
"""

from __future__ import annotations

import math
from typing import Sequence

from simhete.errors import SimheteError
from simhete.schedule import Alloc, Schedule, Task


def check_inputs(schedule: Schedule, durations: Sequence[float]) -> tuple[list[float], dict[str, int]]:
    """Return the durations as floats and the name -> index map; raise a one-line SimheteError."""
    tasks = schedule.tasks
    if len(durations) != len(tasks):
        raise SimheteError(f"durations has {len(durations)} entries for {len(tasks)} tasks")
    out = list(map(float, durations))
    if out and not (math.isfinite(sum(out)) and min(out) >= 0.0):   # NaN makes the sum NaN
        for t, d in zip(tasks, out):
            if not (math.isfinite(d) and d >= 0.0):
                raise SimheteError(f"task {t.name}: duration {d!r} must be a finite number >= 0")
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
