"""Fast engine: the semantics of docs/engine.md, timeline-identical to the SimPy reference.

Three steps:

1. :func:`~simhete.engine.indexed.indexed`: the schedule as flat arrays, cached per Schedule object
   (re-pricing one schedule with new durations skips this step);
2. the compiled event loop (:mod:`simhete.engine._compiled`, Cython, built when simhete is installed);
3. a :class:`Timeline` over the loop's arrays (:class:`~simhete.engine.timeline.Columns`): Record
   objects and memory-event tuples are built only if someone reads them.

Where the extension could not be built (no C compiler at install) the fast engine runs the SimPy
reference (:mod:`simhete.engine.simpy_engine`) instead: the same timeline, slower. It says so once
per process on stderr, and the Timeline it returns names ``simpy`` as its engine (the summary's
``engine`` shows it), so no result claims the compiled loop it did not run.
``SIMHETE_LOOP=compiled`` refuses that fallback (a one-line error when the extension is missing);
``auto``, the default, allows it.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence

import numpy as np

from simhete.engine import memory
from simhete.engine.indexed import Indexed, indexed, slowdown_matrix
from simhete.engine.inputs import check_durations
from simhete.engine.timeline import Columns, Timeline
from simhete.errors import SimheteError
from simhete.schedule import Schedule

try:
    from simhete.engine import _compiled as _ext      # built at install (setup.py); optional
except ImportError:
    _ext = None

FALLBACK_NOTE = ("simhete: the compiled event loop was not built when simhete was installed (no C "
                 "compiler?): the fast engine runs the SimPy reference engine instead (identical "
                 "timelines, slower); reinstall with a C compiler for speed")
_noted = False       # FALLBACK_NOTE printed in this process


def compiled_available() -> bool:
    """Whether the compiled loop was built at install."""
    return _ext is not None


def choose_loop() -> str:
    """What :func:`simulate_fast` runs: ``"compiled"``, or ``"simpy"`` where the extension is
    missing and ``SIMHETE_LOOP`` (``auto``, the default, or ``compiled``) allows the fallback."""
    mode = os.environ.get("SIMHETE_LOOP", "auto")
    if mode not in ("auto", "compiled"):
        raise SimheteError(f"environment variable SIMHETE_LOOP: {mode!r} is not one of auto, compiled")
    if compiled_available():
        return "compiled"
    if mode == "compiled":
        raise SimheteError("SIMHETE_LOOP=compiled: the compiled event loop was not built when simhete "
                           "was installed (no C compiler?): reinstall with one, or unset SIMHETE_LOOP")
    return "simpy"


def simulate_fast(schedule: Schedule, durations: Sequence[float],
                  interference: Iterable[tuple[str, str, float]] = ()) -> Timeline:
    """Run ``schedule`` with ``durations[i]`` full-speed seconds for ``schedule.tasks[i]``."""
    rules = tuple(interference)
    if choose_loop() == "simpy":
        global _noted
        if not _noted:
            _noted = True
            print(FALLBACK_NOTE, file=sys.stderr)
        from simhete.engine.simpy_engine import simulate_simpy
        return simulate_simpy(schedule, durations, rules)
    durs = check_durations(schedule.table.name, durations)
    ix = indexed(schedule, rules)
    if ix.oom is not None:
        return memory.empty_timeline(schedule, ix.oom, "fast")
    return _timeline(schedule, ix, **_ext.run_loop(ix, durs, slowdown_matrix(ix.st.streams, rules)))


def _timeline(schedule: Schedule, ix: Indexed, status, t, info, start, end, finished, peak, peak_cls, in_use,
              live_pool, live_bytes, ev_pool, ev_t, ev_bytes, n_ev) -> Timeline:
    """The Timeline of what :func:`~simhete.engine._compiled.run_loop` returned, or the error the
    SimPy reference raises."""
    st, table = ix.st, schedule.table
    names, pools = table.name, st.pools
    if status == "double alloc":
        raise memory.double_alloc(names[info[0]], st.buffers[info[1]])
    if status == "free unknown":
        raise memory.free_unknown(names[info[0]], st.buffers[info[1]])
    if status == "stuck":
        raise memory.stuck((x for x, f in zip(names, finished.tolist()) if not f), t)
    oom = None
    if status == "oom":
        i, p, b = info
        ks = np.flatnonzero(live_pool == p).tolist()        # the holders: the blocked pool's live buffers
        held = ((st.buffers[k], pools[p], nb) for k, nb in zip(ks, live_bytes[ks].tolist()))
        oom = memory.oom_report(names[i], pools[p], b, int(in_use[p]), int(ix.cap[p]), held, t)
        rows = np.flatnonzero(finished)
        cols = Columns(table, rows, st.streams, st.stream_of[rows], st.it[rows], start[rows], end[rows])
    else:   # every task ran: the rows, streams and iterations are the structure's (its memo too)
        rows = st.memo.get("rows")
        if rows is None:
            rows = st.memo["rows"] = np.arange(len(names))
        cols = Columns(table, rows, st.streams, st.stream_of, st.it, start, end, st.memo)

    events = (ev_pool[:n_ev], ev_t[:n_ev], ev_bytes[:n_ev])

    def mem_events() -> dict[str, tuple[tuple[float, int], ...]]:
        per_pool: list[list[tuple[float, int]]] = [[] for _ in pools]
        for p, te, b in zip(*(x.tolist() for x in events)):
            per_pool[p].append((te, b))
        return {p: tuple(e) for p, e in zip(pools, per_pool)}

    return Timeline(mem_events=mem_events, peak=dict(zip(pools, peak.tolist())),
                    peak_by_class={p: memory.by_class(c) for p, c in zip(pools, peak_cls.tolist())},
                    oom=oom, engine="fast", columns=cols)
