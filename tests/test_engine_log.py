"""Exact event logs on tiny schedules, worked out by hand, for both engines."""

from __future__ import annotations

import pytest

from simhete.engine import OOMReport, simulate
from simhete.errors import ConfigError, SimheteError
from simhete.opkinds import MemClass, TaskCat
from simhete.schedule import Alloc, Schedule, Task

ENGINE = pytest.mark.parametrize("engine", ["simpy", "fast"])
POOLS = {"gpu0": 10, "cpu": 100}


def task(name, stream, deps=(), prio=0, allocs=(), frees=()):
    allocs = tuple(Alloc(b, p, n, MemClass.ACTIVATIONS) for b, p, n in allocs)
    return Task(name, stream, TaskCat.OTHER, deps=tuple(deps), prio=prio, allocs=allocs, frees=tuple(frees))


def run(tasks, durations, engine, interference=(), pools=POOLS, initial=()):
    s = Schedule(tuple(tasks), pools, tuple(initial))
    return simulate(s, durations, interference, engine=engine)


def log(tl):
    return [(r.name, r.start, r.end) for r in tl.records]


@ENGINE
def test_two_streams_overlap(engine):
    tl = run([task("F1", "gpu0.compute"), task("C1", "gpu0.d2h", deps=["F1"]),
              task("F2", "gpu0.compute", deps=["F1"])], [2.0, 1.5, 2.0], engine)
    assert log(tl) == [("F1", 0.0, 2.0), ("C1", 2.0, 3.5), ("F2", 2.0, 4.0)]
    assert tl.makespan == 4.0 and tl.busy() == {"gpu0.compute": 4.0, "gpu0.d2h": 1.5}
    assert tl.engine == engine.partition("-")[0]


@ENGINE
def test_priority_then_list_order(engine):
    tl = run([task("a", "cpu.optim", prio=2), task("b", "cpu.optim", prio=0),
              task("c", "cpu.optim", prio=1), task("d", "cpu.optim", prio=0)], [1.0] * 4, engine)
    assert log(tl) == [("a", 3.0, 4.0), ("b", 0.0, 1.0), ("c", 2.0, 3.0), ("d", 1.0, 2.0)]


@ENGINE
def test_head_of_line_blocking_on_memory(engine):
    # A holds 6 of gpu0's 10 bytes for 2 s. On h2d, B (prio 0) asks 6 and blocks; C (prio 1,
    # no memory) must not overtake it. A's free at t=2 lets B start, then C.
    tl = run([task("A", "gpu0.compute", allocs=[("x", "gpu0", 6)], frees=["x"]),
              task("B", "gpu0.h2d", allocs=[("y", "gpu0", 6)], frees=["y"]),
              task("C", "gpu0.h2d", prio=1)], [2.0, 1.0, 1.0], engine)
    assert log(tl) == [("A", 0.0, 2.0), ("B", 2.0, 3.0), ("C", 3.0, 4.0)]
    assert tl.mem_events["gpu0"] == ((0.0, 0), (0.0, 6), (2.0, 0), (2.0, 6), (3.0, 0))
    assert tl.mem_events["cpu"] == ((0.0, 0),)
    assert tl.peak == {"gpu0": 6, "cpu": 0}
    assert tl.peak_by_class == {"gpu0": {"activations": 6}, "cpu": {}}


@ENGINE
def test_newly_ready_better_task_becomes_the_head(engine):
    # B blocks h2d until t=3; at t=1 Z finishes and makes P (prio -1, no memory) ready: P is the new
    # head and starts at once, then B waits again for A's free.
    tl = run([task("A", "gpu0.compute", allocs=[("x", "gpu0", 6)], frees=["x"]),
              task("B", "gpu0.h2d", allocs=[("y", "gpu0", 6)], frees=["y"]),
              task("Z", "gpu0.d2h"), task("P", "gpu0.h2d", deps=["Z"], prio=-1)],
             [3.0, 1.0, 1.0, 1.0], engine)
    assert log(tl) == [("A", 0.0, 3.0), ("B", 3.0, 4.0), ("Z", 0.0, 1.0), ("P", 1.0, 2.0)]


@ENGINE
def test_zero_duration_tasks_complete_at_the_same_instant(engine):
    tl = run([task("a", "gpu0.compute"), task("b", "gpu0.h2d", deps=["a"]),
              task("c", "gpu0.compute", deps=["b"]), task("d", "gpu0.compute", deps=["b"]),
              task("e", "cpu.optim", deps=["c", "d"])], [0.0, 0.0, 0.0, 2.0, 1.0], engine)
    # c (index 2) wins the compute stream at t=0 and finishes at once; d then runs 0..2.
    assert log(tl) == [("a", 0.0, 0.0), ("b", 0.0, 0.0), ("c", 0.0, 0.0), ("d", 0.0, 2.0),
                       ("e", 2.0, 3.0)]


@ENGINE
def test_frees_at_end_let_a_waiting_task_start_at_the_same_instant(engine):
    tl = run([task("A", "gpu0.compute", allocs=[("x", "gpu0", 10)], frees=["x"]),
              task("B", "gpu0.h2d", allocs=[("y", "gpu0", 10)], frees=["y"])], [1.0, 1.0], engine)
    assert log(tl) == [("A", 0.0, 1.0), ("B", 1.0, 2.0)]
    assert tl.mem_events["gpu0"] == ((0.0, 0), (0.0, 10), (1.0, 0), (1.0, 10), (2.0, 0))


@ENGINE
def test_interference_slows_a_copy_while_adam_runs(engine):
    # The 4 s copy runs alone for 1 s (3 s of work left), then at half speed while Adam runs 1..3
    # (1 s of work done), then alone again: 2 s left, done at t=5. Adam is not slowed.
    tl = run([task("G", "gpu0.compute"), task("ADAM", "cpu.optim", deps=["G"]), task("H2D", "gpu0.h2d")],
             [1.0, 2.0, 4.0], engine, interference=[("gpu0.h2d", "cpu.optim", 2.0)])
    assert log(tl) == [("G", 0.0, 1.0), ("ADAM", 1.0, 3.0), ("H2D", 0.0, 5.0)]


@ENGINE
def test_mutual_interference_takes_the_largest_matching_factor(engine):
    # Both slowed 1.5x while the other runs ('*' matches every stream, the larger 1.5 wins for A).
    # A: 3 s of work at 1/1.5 until B ends; B: 1.5 s work -> ends at 2.25; A has 3 - 1.5 = 1.5 left.
    tl = run([task("A", "gpu0.h2d"), task("B", "cpu.optim")], [3.0, 1.5], engine,
             interference=[("*", "*", 1.25), ("gpu0.h2d", "cpu.*", 1.5), ("cpu.optim", "gpu0.h2d", 1.5)])
    assert log(tl) == [("A", 0.0, 3.75), ("B", 0.0, 2.25)]


@ENGINE
def test_out_of_memory_reports_task_bytes_and_holders(engine):
    # w (6) and v (3) stay resident; X runs 2 s, then Y asks 5 of the 1 left: never satisfiable.
    initial = (Alloc("w", "gpu0", 6, MemClass.WEIGHTS), Alloc("v", "gpu0", 3, MemClass.OPTIM))
    tl = run([task("X", "gpu0.compute"), task("Y", "gpu0.compute", deps=["X"], allocs=[("y", "gpu0", 5)],
                                             frees=["y"]), task("Z", "gpu0.d2h", deps=["Y"])],
             [2.0, 1.0, 1.0], engine, initial=initial)
    assert log(tl) == [("X", 0.0, 2.0)]
    assert tl.oom == OOMReport("Y", "gpu0", 5, 1, 10, (("w", 6), ("v", 3)), 2.0)
    assert "task Y asks" in tl.oom.message()
    assert tl.peak == {"gpu0": 9, "cpu": 0}
    assert tl.peak_by_class["gpu0"] == {"weights": 6, "optim": 3}


@ENGINE
def test_single_allocation_larger_than_the_pool_is_an_oom(engine):
    tl = run([task("A", "gpu0.h2d", allocs=[("a", "gpu0", 4), ("b", "gpu0", 7)], frees=["a", "b"])],
             [1.0], engine)
    assert tl.records == () and tl.oom == OOMReport("A", "gpu0", 11, 10, 10, (), 0.0)


@ENGINE
def test_holders_largest_first_ties_by_name_at_most_ten(engine):
    initial = tuple(Alloc(f"w{k:02d}", "cpu", 8 if k % 3 else 9, MemClass.WEIGHTS) for k in range(12))
    tl = run([task("A", "cpu.optim", allocs=[("a", "cpu", 50)], frees=["a"])], [1.0], engine,
             initial=initial)
    assert tl.oom.holders == (("w00", 9), ("w03", 9), ("w06", 9), ("w09", 9), ("w01", 8),
                              ("w02", 8), ("w04", 8), ("w05", 8), ("w07", 8), ("w08", 8))
    assert (tl.oom.asked, tl.oom.free) == (50, 100 - 4 * 9 - 8 * 8)


@ENGINE
def test_initial_buffers_that_overflow_are_an_oom_at_time_zero(engine):
    initial = (Alloc("w", "gpu0", 8, MemClass.WEIGHTS), Alloc("m", "gpu0", 4, MemClass.MASTER))
    tl = run([task("A", "gpu0.compute")], [1.0], engine, initial=initial)
    assert tl.records == ()
    assert tl.oom == OOMReport("(initial)", "gpu0", 12, 10, 10, (("w", 8), ("m", 4)), 0.0,
                               (("weights", 8), ("master", 4)))
    assert tl.oom.message() == ("out of memory in gpu0: the states placed there at start need 0.00 GiB "
                                "(weights 0.00 GiB, master 0.00 GiB), capacity 0.00 GiB")


@ENGINE
def test_a_cycle_raises_instead_of_hanging(engine):
    with pytest.raises(SimheteError, match=r"nothing runs and no task is ready although 2 remain \(a, b\)"):
        run([task("a", "gpu0.compute", deps=["b"]), task("b", "gpu0.compute", deps=["a"])], [1.0, 1.0], engine)


@ENGINE
def test_bad_inputs_are_one_line_errors(engine):
    with pytest.raises(SimheteError, match="durations has 1 entries for 2 tasks"):
        run([task("a", "gpu0.compute"), task("b", "gpu0.compute")], [1.0], engine)
    with pytest.raises(SimheteError, match=r"task a: duration -1.0 must be a finite number >= 0"):
        run([task("a", "gpu0.compute")], [-1.0], engine)
    with pytest.raises(SimheteError, match=r"interference\[0\]: factor 0.5 must be a finite number >= 1"):
        run([task("a", "gpu0.compute")], [1.0], engine, interference=[("*", "*", 0.5)])
    with pytest.raises(SimheteError, match="task a: dependency zz does not exist"):
        run([task("a", "gpu0.compute", deps=["zz"])], [1.0], engine)
    with pytest.raises(SimheteError, match="task a frees buffer q, which is not live"):
        run([task("a", "gpu0.compute", frees=["q"])], [1.0], engine)
    with pytest.raises(SimheteError, match="task a allocates buffer x, which is still live"):
        run([task("a", "gpu0.compute", allocs=[("x", "cpu", 1), ("x", "cpu", 1)])], [1.0], engine)
    with pytest.raises(SimheteError, match="duplicate task name a"):
        run([task("a", "gpu0.compute"), task("a", "gpu0.h2d")], [1.0, 1.0], engine)


@ENGINE
def test_the_first_bad_task_in_list_order_is_reported_dependencies_before_allocations(engine):
    neg, nowhere, dep = ("x", "cpu", -1), ("y", "nvme", 1), ["zz"]
    with pytest.raises(SimheteError, match="task a: buffer x has negative size -1"):
        run([task("a", "gpu0.compute", allocs=[neg]), task("b", "gpu0.compute", deps=dep)], [1.0] * 2, engine)
    with pytest.raises(SimheteError, match="task b: buffer y in unknown pool 'nvme'"):
        run([task("a", "gpu0.compute"), task("b", "gpu0.h2d", allocs=[nowhere, neg])], [1.0] * 2, engine)
    with pytest.raises(SimheteError, match="task b: dependency zz does not exist"):
        run([task("a", "gpu0.compute"), task("b", "gpu0.h2d", deps=dep, allocs=[neg])], [1.0] * 2, engine)


def test_unknown_engine_lists_both():
    with pytest.raises(ConfigError, match=r"engine: bad value 'turbo'; allowed: fast \| simpy"):
        run([task("a", "gpu0.compute")], [1.0], "turbo")
