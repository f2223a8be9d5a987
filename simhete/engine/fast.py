"""Fast engine: the semantics of docs/engine.md, timeline-identical to the SimPy reference.

Three steps:

1. :func:`~simhete.engine.indexed.indexed`: the schedule as flat arrays, cached per Schedule object
   (re-pricing one schedule with new durations skips this step);
2. the event loop: compiled with numba (:mod:`simhete.engine.jit`, ``pip install simhete[fast]``)
   or the same loop in pure Python (:mod:`simhete.engine.pyloop`); both give identical results;
3. a :class:`Timeline` over the loop's arrays (:class:`~simhete.engine.timeline.Columns`): Record
   objects and memory-event tuples are built only if someone reads them.

Which loop runs (:func:`choose_loop`): loading numba and its cached machine code costs a process
about a second of CPU (compiling it the first time on a machine, several seconds), while the
Python loop is a few microseconds per task slower. So by default (``SIMHETE_JIT=auto``) a process
runs its first ``JIT_AFTER_TASKS`` simulated tasks on the Python loop (a single ``simulate`` never
pays for numba) and switches to the compiled loop after that (sweeps, plans). A caller that knows
it will run many schedules (a sweep worker) says so with :func:`plan_runs`, and the compiled loop
is used from the first of them when they add up to more than ``JIT_AFTER_TASKS`` tasks.
``SIMHETE_JIT=1`` uses the compiled loop from the first call, ``SIMHETE_JIT=0`` never.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import numpy as np

from simhete.engine import memory, pyloop
from simhete.engine.indexed import Indexed, indexed
from simhete.engine.inputs import check_durations
from simhete.engine.status import DOUBLE_ALLOC, FREE_UNKNOWN, OOM, STUCK
from simhete.engine.timeline import Columns, Timeline
from simhete.schedule import Schedule

LOOPS = ("jit", "python")
JIT_AFTER_TASKS = 200_000    # about break-even: ~1 s of numba start-up / 3-5 us saved per task
_jit = None
_tasks_run = 0               # tasks this process has simulated
_planned = 0                 # schedules this process expects to run (plan_runs)


def jit_available() -> bool:
    """Whether the compiled loop can be used: numba is installed (imported on first ask)."""
    global _jit
    if _jit is None:
        try:
            from simhete.engine import jit
            _jit = jit.run_loop
        except ImportError:
            _jit = False
    return _jit is not False


@contextmanager
def plan_runs(k: int) -> Iterator[None]:
    """Within the block, this process expects to simulate about ``k`` schedules (a sweep worker's
    share of its points). Under ``SIMHETE_JIT=auto``, when ``k`` runs of the size being simulated
    exceed ``JIT_AFTER_TASKS`` tasks, numba's start-up pays off and the compiled loop is used at
    once. The expectation ends with the block."""
    global _planned
    before, _planned = _planned, max(0, int(k))
    try:
        yield
    finally:
        _planned = before


def choose_loop(n_tasks: int) -> str:
    """The loop for the next run of ``n_tasks`` tasks under ``SIMHETE_JIT`` (module docstring)."""
    global _tasks_run
    _tasks_run += n_tasks
    mode = os.environ.get("SIMHETE_JIT", "auto")
    if mode == "0" or (mode != "1" and _tasks_run <= JIT_AFTER_TASKS
                       and n_tasks * _planned <= JIT_AFTER_TASKS):
        return "python"
    return "jit" if jit_available() else "python"


def simulate_fast(schedule: Schedule, durations: Sequence[float],
                  interference: Iterable[tuple[str, str, float]] = (), *, loop: str | None = None
                  ) -> Timeline:
    """Run ``schedule`` with ``durations[i]`` full-speed seconds for ``schedule.tasks[i]``.

    ``loop``: ``"jit"``, ``"python"`` or ``None`` (:func:`choose_loop` decides)."""
    durs = check_durations(schedule.table.name, durations)
    rules = tuple(interference)
    ix = indexed(schedule, rules)
    if ix.oom is not None:
        return memory.empty_timeline(schedule, ix.oom, "fast")
    matrix, fluid = ix.interference(rules)
    if loop is None:
        loop = choose_loop(len(durs))
    if loop == "jit":
        if not jit_available():
            raise RuntimeError("the compiled loop needs numba (pip install 'simhete[fast]')")
        out = _jit(ix, durs, matrix)
    elif loop == "python":
        out = pyloop.run_loop(ix, durs.tolist(), matrix.tolist(), fluid)
    else:
        raise ValueError(f"loop must be one of {LOOPS} or None, got {loop!r}")
    return _timeline(ix, *out)


def _timeline(ix: Indexed, status, t, info, start, end, finished, ev_pool, ev_t, ev_b, n_ev, peak,
              peak_cls, in_use, live_pool, live_bytes) -> Timeline:
    table, pools = ix.schedule.table, ix.pools
    names = table.name
    t = float(t)
    if status == DOUBLE_ALLOC:
        raise memory.double_alloc(names[info[0]], ix.buffers[info[1]])
    if status == FREE_UNKNOWN:
        raise memory.free_unknown(names[info[0]], ix.buffers[info[1]])
    finished = np.asarray(finished, dtype=np.bool_)
    if status == STUCK:
        raise memory.stuck((x for x, f in zip(names, finished.tolist()) if not f), t)
    oom = None
    if status == OOM:
        i, p, b = (int(x) for x in info[:3])
        in_use, cap = np.asarray(in_use).tolist(), ix.cap.tolist()
        # the report lists the holders in the blocked pool: select that pool's live buffers first
        ks = np.flatnonzero(np.asarray(live_pool) == p).tolist()
        nbs = np.asarray(live_bytes)[ks].tolist()
        held = ((ix.buffers[k], pools[p], nb) for k, nb in zip(ks, nbs))
        oom = memory.oom_report(names[i], pools[p], b, in_use[p], cap[p], held, t)
        rows = np.flatnonzero(finished)
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        cols = Columns(table, rows, ix.streams, ix.stream_of[rows], ix.it[rows], start[rows], end[rows])
    else:   # every task ran: the rows, streams and iterations are the structure's (its memo too)
        memo = ix.memo if ix.memo is not None else {}
        rows = memo.get("rows")
        if rows is None:
            rows = memo["rows"] = np.arange(len(names))
        cols = Columns(table, rows, ix.streams, ix.stream_of, ix.it, np.asarray(start, dtype=np.float64),
                       np.asarray(end, dtype=np.float64), memo)
    in_use0 = ix.in_use0.tolist()
    ev = (np.asarray(ev_pool)[:n_ev], np.asarray(ev_t)[:n_ev], np.asarray(ev_b)[:n_ev])

    def mem_events() -> dict[str, tuple[tuple[float, int], ...]]:
        per_pool: list[list[tuple[float, int]]] = [[(0.0, u)] for u in in_use0]
        for p, te, b in zip(*(x.tolist() for x in ev)):
            per_pool[p].append((te, b))
        return {p: tuple(e) for p, e in zip(pools, per_pool)}

    peak_cls = np.asarray(peak_cls).tolist()
    return Timeline(mem_events=mem_events, peak=dict(zip(pools, np.asarray(peak).tolist())),
                    peak_by_class={p: memory.by_class(c) for p, c in zip(pools, peak_cls)},
                    oom=oom, engine="fast", columns=cols)
