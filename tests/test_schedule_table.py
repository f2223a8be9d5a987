"""The column-wise task table: a Builder's schedule (tasks kept as columns, Task objects made on
first read) and a schedule made from Task objects must give identical results everywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simhete.engine import simulate_fast, simulate_simpy
from simhete.opkinds import Action, At, MemClass, OpKind
from simhete.policy.base import Builder
from simhete.report.pcie import copy_bytes, pcie_task_bytes
from simhete.scenario import load_scenario
from simhete.schedule import Alloc, Op, Schedule, format_schedule
from simhete.schedule.model import TaskTable
from simhete.sim import resolve
from test_engine_strategies import runs

ROOT = Path(__file__).resolve().parents[1]


def rebuilt(s: Schedule) -> Schedule:
    """``s`` through a Builder: the same tasks (named by hand: no action), kept column-wise."""
    b = Builder()
    for t in s.tasks:
        b.add_row((t.name, t.stream, t.cat, t.ops, t.deps, t.prio, t.allocs, t.frees, t.it, t.block, None, None))
    return b.build(dict(s.pools), s.initial, s.iterations, dict(s.meta))


def eager(s: Schedule) -> Schedule:
    """``s`` made from its Task objects (the table is derived from them)."""
    return Schedule(tuple(s.tasks), s.pools, s.initial, s.iterations, s.meta)


def same_timeline(a, b) -> None:
    assert (a.records, a.mem_events, a.peak, a.peak_by_class, a.oom) == \
           (b.records, b.mem_events, b.peak, b.peak_by_class, b.oom)


def table_rows(tb: TaskTable) -> list[tuple]:
    return list(zip(*(getattr(tb, f) for f in TaskTable.FIELDS)))


@settings(max_examples=150, deadline=None)
@given(runs())
def test_builder_schedule_simulates_like_the_eager_one(run):
    s, durs, rules = run
    lazy = rebuilt(s)
    assert lazy == s and table_rows(lazy.table) == table_rows(s.table)
    ref = simulate_simpy(s, durs, rules)
    same_timeline(simulate_fast(lazy, durs, rules), ref)
    same_timeline(simulate_fast(eager(lazy), durs, rules), ref)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.stem)
def test_scenarios_same_through_table_and_tasks(path):
    ctx, policy = resolve(load_scenario(path))
    lazy = policy.build(ctx)
    assert lazy._table is not None                      # the policy's Builder filled the table
    full = eager(lazy)
    assert full._table is None and full == lazy
    assert table_rows(full.table) == table_rows(lazy.table)
    assert format_schedule(full) == format_schedule(lazy)
    durs = ctx.cost.durations(lazy)
    assert durs == ctx.cost.durations(full)
    assert pcie_task_bytes(lazy) == pcie_task_bytes(full) and copy_bytes(lazy) == copy_bytes(full)
    rules = ctx.cost.interference()
    same_timeline(simulate_fast(lazy, durs, rules), simulate_fast(full, durs, rules))


def test_forward_referenced_dependency():
    """A task may name a dependency that is added after it (the table resolves names once all
    tasks are in); the result equals the reference engine's."""
    b = Builder()
    b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute", deps=["it1.H2D.w.b0"], prio=0,
          allocs=[Alloc("x", "gpu0", 10, MemClass.ACTIVATIONS)], frees=["x"])
    b.add(Action.WEIGHTS_H2D, At(1, "b0"), "gpu0.h2d", (Op(OpKind.H2D, n=100),), prio=1)
    s = b.build({"gpu0": 100}, (), 1, {})
    durs = [1.0, 2.0]
    ref = simulate_simpy(s, durs)
    tl = simulate_fast(s, durs)
    same_timeline(tl, ref)
    assert [(r.name, r.start, r.end) for r in tl.records] == [("it1.F.b0", 2.0, 3.0), ("it1.H2D.w.b0", 0.0, 2.0)]


def test_table_schedule_is_a_plain_schedule():
    b = Builder()
    b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute", deps=[None, ""], it=1, block=0)
    b.add(Action.BACKWARD, At(1, "b0"), "gpu0.compute", deps=("it1.F.b0",), it=1, block=0)
    s = b.build({"gpu0": 1}, [], 1, {"k": "v"})
    assert b.tasks == () and s.n_tasks == 2 and s.streams == ("gpu0.compute",)
    assert s.index() == {"it1.F.b0": 0, "it1.B.b0": 1}
    assert s.tasks[0].deps == () and s.tasks[1].deps == ("it1.F.b0",)      # falsy dependencies dropped
    assert s.tasks[1].action is Action.BACKWARD and s.tasks[1].at == At(1, "b0") and s.tasks[1].cat.value == "bwd"
    assert s.tasks is s.tasks                                         # made once
    moved = dataclasses.replace(s, iterations=2)                      # a new schedule derives its own table
    assert moved._table is None and moved.tasks == s.tasks and table_rows(moved.table) == table_rows(s.table)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tasks = ()                                                  # type: ignore[misc]
    assert "Task(name='it1.F.b0'" in repr(s)


def test_errors_are_the_same_through_the_table():
    """Static checks give the reference engine's message for a table schedule too."""
    b = Builder()
    b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute", deps=["missing"])
    s = b.build({"gpu0": 1}, [], 1, {})
    msgs = []
    for run in (lambda: simulate_simpy(s, [1.0]), lambda: simulate_fast(s, [1.0])):
        with pytest.raises(Exception) as e:
            run()
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] == "task it1.F.b0: dependency missing does not exist"
    b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute")
    b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute")
    s = b.build({"gpu0": 1}, [], 1, {})
    with pytest.raises(Exception, match="duplicate task name it1.F.b0"):
        simulate_fast(s, [1.0, 1.0])


class ByteTable:
    """A size table for these tests: code ``a{j}`` gives the j-th allocation of each task (a
    "block" per task) its bytes."""

    def __init__(self, s: Schedule, scale=lambda n: n) -> None:
        self.key, self.n_blocks = None, len(s.tasks)
        width = max((len(t.allocs) for t in s.tasks), default=0)
        self.cols = {f"a{j}": np.array([scale(t.allocs[j].bytes) if j < len(t.allocs) else 0 for t in s.tasks],
                                       dtype=np.int64) for j in range(width)}

    def ops(self, code: str):
        raise KeyError(code)

    def bytes(self, code: str) -> np.ndarray:
        return self.cols[code]


def referencing(s: Schedule) -> Schedule:
    """``s`` built with every allocation's bytes a reference into :class:`ByteTable` of ``s``."""
    b = Builder(ByteTable(s))
    for i, t in enumerate(s.tasks):
        b.add_row((t.name, t.stream, t.cat, t.ops, t.deps, t.prio, t.allocs, t.frees, t.it, t.block, t.action, t.at),
                  (i, None, tuple(f"a{j}" for j in range(len(t.allocs)))))
    return b.build(dict(s.pools), s.initial, s.iterations, dict(s.meta))


def rebound(s: Schedule, k: int) -> Schedule:
    """The structure of ``s`` (made by :func:`referencing`) bound to other sizes: allocation bytes
    scaled by ``k`` / 2 and offset, initial buffers by ``k`` / 3."""
    table = s.table.structure.bind(ByteTable(s, lambda n: n * k // 2 + k % 3))
    initial = tuple(dataclasses.replace(a, bytes=a.bytes * k // 3) for a in s.initial)
    return Schedule.from_table(table, s.pools, initial, s.iterations, s.meta)


@settings(max_examples=150, deadline=None)
@given(runs(), st.integers(0, 7))
def test_same_structure_other_sizes_reuses_the_index_exactly(run, k):
    """A schedule bound from a structure indexed before (a sweep point with other sizes) reuses
    the structure's index; its timeline equals the reference engine's and a fresh indexing's."""
    s, durs, rules = run
    s = referencing(s)
    first = simulate_fast(s, durs, rules)  # index s: its structure's index is kept on the structure
    other = rebound(s, k)
    ref = simulate_simpy(other, durs, rules)
    kept = s.table.structure.derived.get("engine.index")
    assert (kept is None) == (first.oom is not None and first.oom.task == "(initial)")   # (nothing to index)
    same_timeline(simulate_fast(other, durs, rules), ref)
    if kept is not None:                   # reused, not indexed again
        assert s.table.structure.derived.get("engine.index") is kept
    same_timeline(simulate_fast(eager(other), durs, rules), ref)     # indexed on its own


def test_same_structure_size_errors_are_still_reported():
    """Reusing a structure's index skips only checks of the structure; size checks keep the
    reference's order: initial overflow (an OOM report), then a negative allocation."""
    b = Builder()
    f = b.add(Action.FORWARD, At(1, "b0"), "gpu0.compute", allocs=[Alloc("x", "gpu0", 10, MemClass.ACTIVATIONS)],
              frees=["x"])
    b.add(Action.BACKWARD, At(1, "b0"), "gpu0.compute", deps=[f])
    ok = referencing(b.build({"gpu0": 100}, [Alloc("w", "gpu0", 10, MemClass.WEIGHTS)], 1, {}))

    def sched(init_bytes: int, alloc_bytes: int) -> Schedule:
        table = ok.table.structure.bind(ByteTable(ok, lambda n: alloc_bytes))
        return Schedule.from_table(table, ok.pools, (Alloc("w", "gpu0", init_bytes, MemClass.WEIGHTS),), 1, {})

    assert simulate_fast(ok, [1.0, 1.0]).oom is None
    assert ok.table.structure.derived.get("engine.index") is not None
    over = sched(200, -1)
    tl, ref = simulate_fast(over, [1.0, 1.0]), simulate_simpy(over, [1.0, 1.0])
    assert tl.oom is not None and tl.oom == ref.oom and tl.records == ref.records == ()
    neg = sched(10, -1)
    for run in (lambda: simulate_simpy(neg, [1.0, 1.0]), lambda: simulate_fast(neg, [1.0, 1.0])):
        with pytest.raises(Exception, match="task it1.F.b0: buffer x has negative size -1"):
            run()
    big = sched(10, 95)
    same_timeline(simulate_fast(big, [1.0, 1.0]), simulate_simpy(big, [1.0, 1.0]))
