"""Run a sweep: strategy proposes grid indices → points → skip finished → backend → store.

This is the one code path for every backend and strategy. A point whose id (its resolved
configuration's digest) has a result in the store is not run again (``--resume``), whatever grid
index or axis values it had in the sweep that computed it; an invalid combination is recorded
without being shipped; each chunk of rows is committed as soon as the backend returns it. Points
of one sweep sharing an id run once.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Sequence

from simhete.search.backends import Backend
from simhete.search.evaluate import Row, failed_row, params_json
from simhete.search.points import Point, Resolver
from simhete.search.space import Limits, Sweep
from simhete.search.store import ResultStore
from simhete.search.storefile import RESULT_COLUMNS
from simhete.search.strategies import coordinate_search, decode, grid, random_sample

MAX_CHUNK = 32
_result = attrgetter(*RESULT_COLUMNS[1:])   # a row's result values (what the store keeps under its id)
SWEEP_GC_THRESHOLD = 50_000    # net new objects between two collections during a sweep (Runner.run)


@dataclass
class Progress:
    """What the runner reports as it goes (the CLI draws it as a rich progress bar)."""

    total: int
    on_advance: Callable[[int, int], None] | None = None   # (points run, points skipped)

    def advance(self, run: int = 0, skipped: int = 0) -> None:
        if self.on_advance is not None:
            self.on_advance(run, skipped)


@dataclass
class SweepOutcome:
    rows: list[Row]          # this sweep's points, in grid order, one per distinct id (its lowest index)
    ran: int                 # points simulated in this invocation
    skipped: int             # points found in the store (resumed)
    best_idx: int | None     # optimize only: the best point found


class Runner:
    def __init__(self, sweep: Sweep, store: ResultStore, backend: Backend, engine: str = "fast",
                 progress: Progress | None = None) -> None:
        self.sweep, self.store, self.backend, self.engine = sweep, store, backend, engine
        self.sizes = [len(v) for _, v in sweep.axes]
        self.values = [v for _, v in sweep.axes]
        self.resolver = Resolver(sweep.base, sweep.keys)
        self.progress = progress or Progress(planned_points(sweep))
        self.ran = self.skipped = 0
        self._points: dict[int, Point] = {}

    def point(self, idx: int) -> Point:
        p = self._points.get(idx)
        if p is None:
            v = decode(idx, self.sizes)
            p = self._points[idx] = self.resolver.point(idx, [vals[j] for vals, j in zip(self.values, v)])
        return p

    def evaluate(self, idxs: Sequence[int]) -> list[Row]:
        """Rows for the grid indices ``idxs`` (in order), running only those whose result is not
        stored yet. A row carries this sweep's grid index and axis values whatever sweep computed
        its result: results are keyed by the point's content (its id) alone."""
        points = [self.point(i) for i in idxs]
        stored = self.store.results(p.id for p in points)
        # an internal error (a bug, an interrupted worker) is not a result: run those points again;
        # nor is an invalid combination's reason when it names another scenario file than this
        # sweep's base (the file is not part of the configuration's id; the message would be stale)
        named = f"{self.sweep.base.file}: " if self.sweep.base.file else ""
        retry = [i for i, r in stored.items()
                 if r[0] == "error" or (r[0] == "invalid" and not r[1].startswith(named))]
        if retry:
            self.store.drop(retry)
            for i in retry:
                del stored[i]
        rows: dict[int, Row] = {}           # by grid index
        found: list[Row] = []               # stored results, as this sweep's points
        invalid: list[Row] = []
        todo: dict[str, Point] = {}         # by id: each distinct configuration runs once
        twins: dict[str, list[Point]] = {}  # points sharing the id of a point in todo
        for p in points:
            if p.idx in rows:
                continue
            if p.id in stored:
                row = rows[p.idx] = Row(p.id, p.idx, params_json(p.params), *stored[p.id])
                found.append(row)
            elif p.id in todo:
                twins.setdefault(p.id, []).append(p)
            elif p.scenario is None:
                row = failed_row(p.id, p.idx, p.params, "invalid", p.error or "",
                                 str(p.params.get("policy", self.sweep.base.data.policy)))
                stored[p.id] = _result(row)
                rows[p.idx] = row
                invalid.append(row)
            else:
                todo[p.id] = p
        if found or invalid:
            self.store.put(found + invalid)
        self.ran += len(invalid)
        self.skipped += len(found)
        self.progress.advance(len(invalid), len(found))
        if todo:
            work = list(todo.values())
            size = max(1, min(MAX_CHUNK, math.ceil(len(work) / (4 * self.backend.workers))))
            chunks = [[(p.id, p.idx, p.params, p.scenario) for p in work[k:k + size]]
                      for k in range(0, len(work), size)]
            for done in self.backend.map(chunks, self.engine):
                done = list(done)
                ran = len(done)
                for r in done[:ran]:
                    for t in twins.get(r.id, ()):
                        done.append(Row(r.id, t.idx, params_json(t.params), *_result(r)))
                self.store.put(done)
                for r in done:
                    rows[r.idx] = r
                self.ran += ran
                self.progress.advance(len(done), 0)
        return [rows[p.idx] for p in points]

    def run(self) -> SweepOutcome:
        # What exists when the sweep starts (imports, the base scenario, the caller's objects) is
        # frozen out of the cyclic garbage collector for the sweep: every collection would otherwise
        # walk those ~200 000 objects again (5-10 % of an in-process sweep's CPU), though none of them
        # becomes garbage in it. Left alone when the caller froze objects itself.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        # What the sweep allocates and keeps is not garbage either: rows, policy structures,
        # remembered prices and timelines (no shipped policy leaves a reference cycle behind a
        # point). With the default threshold (700) the collector ran after every chunk and again
        # every ten, walking those survivors each time and finding nothing (~35 + 3 collections,
        # 4-6 % of the 1080-point grid's CPU); it now runs once per SWEEP_GC_THRESHOLD objects the
        # sweep keeps, which still bounds how long any cyclic garbage waits.
        threshold = gc.get_threshold()
        gc.set_threshold(max(threshold[0], SWEEP_GC_THRESHOLD), *threshold[1:])
        try:
            return self._run()
        finally:
            gc.set_threshold(*threshold)
            if freeze:
                gc.unfreeze()

    def _run(self) -> SweepOutcome:
        st = self.sweep.strategy
        best = None
        out: dict[str, Row] = {}     # by id: the row at the lowest grid index, as the store's view

        def keep(rows: list[Row]) -> None:
            for r in rows:
                have = out.get(r.id)
                if have is None or r.idx < have.idx:
                    out[r.id] = r

        self.store.begin_sweep()
        if st.name == "optimize":
            def score(idxs: list[int]) -> list[float]:
                rows = self.evaluate(idxs)
                keep(rows)
                return [objective(r, self.sweep.limits) for r in rows]
            budget = st.budget or self.sweep.grid_size
            best, _ = coordinate_search(self.sizes, score, self.start(), budget, st.restarts, st.seed)
        else:
            batches = grid(self.sizes) if st.name == "grid" else random_sample(self.sizes, st.samples or 0, st.seed)
            for idxs in batches:
                keep(self.evaluate(idxs))
                self._points.clear()    # streamed: a batch's points are not asked for again
        rows = sorted(out.values(), key=lambda r: r.idx)
        return SweepOutcome(rows, self.ran, self.skipped, best)

    def start(self) -> tuple[int, ...]:
        """The optimizer's first point: the base scenario's value on each axis where the axis has it."""
        raw = self.sweep.base.data.model_dump(mode="json", exclude_none=True)
        out = []
        for key, vals in self.sweep.axes:
            cur: Any = raw
            for part in key.split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            out.append(vals.index(cur) if cur in vals else 0)
        return tuple(out)


def planned_points(sweep: Sweep) -> int:
    st = sweep.strategy
    if st.name == "random":
        return min(st.samples or 0, sweep.grid_size)
    if st.name == "optimize":
        return min(st.budget or sweep.grid_size, sweep.grid_size)
    return sweep.grid_size


def feasible(r: Row, limits: Limits) -> bool:
    """Fits the hardware, and the sweep's own memory limits if it sets any."""
    if r.status != "ok" or r.tokens_per_s is None:
        return False
    if limits.gpu_memory is not None and (r.peak_gpu_bytes or 0) > limits.gpu_memory:
        return False
    if limits.host_memory is not None and (r.peak_host_bytes or 0) > limits.host_memory:
        return False
    return True


def objective(r: Row, limits: Limits) -> float:
    return float(r.tokens_per_s) if feasible(r, limits) else -math.inf
