"""Input checks shared by both engines: what a Schedule must satisfy before it can be simulated.

The reference engine makes them in this order (docs/engine.md, Errors) and the fast engine's
indexing (:mod:`simhete.engine.indexed`) keeps it: :func:`check_durations`, :func:`check_names`,
:func:`check_initial_pools`, the initial buffers against their pools (an OOM report:
:func:`~simhete.engine.memory.initial_overflow`), the interference rules
(:func:`~simhete.engine.rates.interference_matrix`), :func:`check_task` for every task in order,
and last an initial buffer allocated twice.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from simhete.errors import SimheteError
from simhete.schedule import Schedule, Task


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


def check_names(names: Sequence[str]) -> dict[str, int]:
    """The name -> index map of the tasks; a one-line SimheteError for a duplicate name."""
    index = dict(zip(names, range(len(names))))
    if len(index) != len(names):
        dup = next(name for k, name in enumerate(names) if index[name] != k)
        raise SimheteError(f"duplicate task name {dup}")
    return index


def check_initial_pools(schedule: Schedule) -> None:
    for a in schedule.initial:
        if a.pool not in schedule.pools:
            raise SimheteError(f"initial buffer {a.buf}: unknown pool {a.pool!r}")


def check_task(task: Task, index: Mapping[str, int], pools: Mapping[str, int]) -> None:
    """A one-line SimheteError for the task's first unknown dependency, else for its first
    allocation in an unknown pool or of negative size."""
    missing = next((d for d in task.deps if d not in index), None)
    if missing is not None:
        raise SimheteError(f"task {task.name}: dependency {missing} does not exist")
    for a in task.allocs:
        if a.pool not in pools:
            raise SimheteError(f"task {task.name}: buffer {a.buf} in unknown pool {a.pool!r}")
        if a.bytes < 0:
            raise SimheteError(f"task {task.name}: buffer {a.buf} has negative size {a.bytes}")
