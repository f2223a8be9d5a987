"""The fast engine's machinery: the indexed-schedule cache, lazily built records and their array
fast paths, and timeline equality with the SimPy reference on every shipped scenario."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import weakref
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from simhete.engine import simulate_fast, simulate_simpy
from simhete.engine import fast
from simhete.engine.fast import compiled_available
from simhete.engine.indexed import indexed
from simhete.engine.timeline import Timeline
from simhete.errors import SimheteError
from simhete.opkinds import MemClass, TaskCat
from simhete.report.metrics import summarize
from simhete.scenario import load_scenario
from simhete.schedule import Alloc, Schedule, Task
from simhete.sim import resolve
from test_engine_strategies import runs

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))


def _same(a: Timeline, b: Timeline) -> None:
    assert a.records == b.records
    assert a.mem_events == b.mem_events
    assert a.peak == b.peak and a.peak_by_class == b.peak_by_class and a.oom == b.oom


def _chain() -> Schedule:
    tasks = (Task("a", "gpu0.compute", TaskCat.FWD, it=1, allocs=(Alloc("x", "gpu0", 4, MemClass.ACTIVATIONS),)),
             Task("b", "gpu0.d2h", TaskCat.OTHER, deps=("a",), it=1, frees=("x",)),
             Task("c", "gpu0.compute", TaskCat.BWD, deps=("a",), it=2))
    return Schedule(tasks, {"gpu0": 10})


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_is_identical_to_simpy(path):
    try:
        ctx, policy = resolve(load_scenario(path))
        sched = policy.build(ctx)
    except SimheteError as e:   # not an engine matter; test_golden reports scenarios that do not build
        pytest.skip(f"scenario does not build: {e}")
    durs, rules = ctx.cost.durations(sched), tuple(ctx.cost.interference())
    ref = simulate_simpy(sched, durs, rules)
    tl = simulate_fast(sched, durs, rules)
    _same(tl, ref)
    assert (tl.makespan, tl.iteration_ends(), tl.busy()) == \
           (ref.makespan, ref.iteration_ends(), ref.busy())
    assert _summary(tl, sched) == dataclasses.replace(_summary(ref, sched), meta={"engine": "fast"})


@settings(max_examples=150, deadline=None)
@given(runs())
def test_array_answers_equal_the_record_answers(run):
    s, durs, rules = run
    lazy = simulate_fast(s, durs, rules)
    if lazy.columns is None:      # initial buffers overflow: nothing ran
        return
    answers = (lazy.makespan, lazy.iteration_ends(), lazy.busy(), lazy.steady_iteration_time())
    eager = Timeline(lazy.records, lazy.mem_events, lazy.peak, lazy.peak_by_class, lazy.oom, "fast")
    assert answers == (eager.makespan, eager.iteration_ends(), eager.busy(),
                       eager.steady_iteration_time())
    assert list(answers[1]) == list(eager.iteration_ends())         # same key order too
    assert all(type(r.start) is float and type(r.end) is float for r in lazy.records)
    assert all(type(v) is int for v in lazy.peak.values())
    assert lazy == eager and pickle.loads(pickle.dumps(lazy)) == eager
    assert _summary(lazy, s) == _summary(eager, s)


def _summary(tl: Timeline, s: Schedule):
    """summarize() with every figure it has: from the arrays (fast engine) or from the records."""
    return summarize(tl, tokens_per_iter=4096, samples_per_iter=2, model_flops_per_iter=1e15,
                     peak_flops_per_gpu=1e14, n_gpus=1, pool_capacity=dict(s.pools),
                     task_bytes={t.name: 1 + k for k, t in enumerate(s.tasks)})


def test_records_are_built_only_when_read():
    tl = simulate_fast(_chain(), [1.0, 2.0, 3.0])
    assert tl._records is None and callable(tl._mem_events)
    assert tl.makespan == 4.0 and tl.busy() == {"gpu0.compute": 4.0, "gpu0.d2h": 2.0}
    assert tl.iteration_ends() == {1: 3.0, 2: 4.0} and tl._records is None
    assert [(r.name, r.start, r.end) for r in tl.records] == [("a", 0.0, 1.0), ("b", 1.0, 3.0), ("c", 1.0, 4.0)]
    assert tl.mem_events == {"gpu0": ((0.0, 0), (0.0, 4), (3.0, 0))}


def test_a_schedule_is_indexed_once_and_repriced_with_new_durations():
    s = _chain()
    first = indexed(s)
    assert indexed(s) is first
    assert simulate_fast(s, [1.0, 2.0, 3.0]).makespan == 4.0
    assert simulate_fast(s, [2.0, 0.5, 0.5]).makespan == 2.5      # same index, new durations
    assert indexed(s) is first
    twin = Schedule(s.tasks, s.pools)                                # equal, but another object
    assert indexed(twin) is not first


def test_the_indexed_form_lives_on_its_schedule_and_dies_with_it():
    s = _chain()
    first = indexed(s)
    assert s.derived["engine.indexed"] is first
    assert copy.copy(s).derived == {} and copy.copy(s) == s          # a copy starts without it
    twin = Schedule(s.tasks, s.pools)
    assert indexed(twin).st is not first.st          # made from Task objects: no structure to share
    assert np.array_equal(indexed(twin).st.succ, first.st.succ)
    gone = weakref.ref(first)
    del s, first
    gc.collect()
    assert gone() is None


def test_a_bad_schedule_raises_every_time():
    bad = Schedule((Task("a", "gpu0.compute", TaskCat.FWD, deps=("zz",)),), {"gpu0": 10})
    for _ in range(2):
        with pytest.raises(SimheteError, match="task a: dependency zz does not exist"):
            simulate_fast(bad, [1.0])


def test_a_bad_interference_rule_is_reported_before_a_bad_dependency():
    """The reference checks the rules before the tasks; the fast engine's indexing keeps that order."""
    bad = Schedule((Task("a", "gpu0.compute", TaskCat.FWD, deps=("zz",)),), {"gpu0": 10})
    for run in (simulate_simpy, simulate_fast):
        with pytest.raises(SimheteError, match=r"^interference\[0\]: factor 0.5 must be a finite number >= 1$"):
            run(bad, [1.0], [("*", "*", 0.5)])


def test_simhete_loop_accepts_auto_and_compiled_only(monkeypatch):
    monkeypatch.delenv("SIMHETE_LOOP", raising=False)
    assert fast.choose_loop() == ("compiled" if compiled_available() else "simpy")
    for mode in ("python", "jit"):       # the pure-Python loop is gone: its old setting is refused too
        monkeypatch.setenv("SIMHETE_LOOP", mode)
        with pytest.raises(SimheteError, match=f"SIMHETE_LOOP: '{mode}' is not one of auto, compiled$"):
            simulate_fast(_chain(), [1.0, 1.0, 1.0])


def test_without_the_extension_the_fast_engine_runs_simpy_and_says_so_once(monkeypatch, capsys):
    s, durs = _chain(), [1.0, 2.0, 0.5]
    ref = simulate_simpy(s, durs)
    monkeypatch.setattr(fast, "_ext", None)          # as if the extension had not been built
    monkeypatch.setattr(fast, "_noted", False)
    monkeypatch.setenv("SIMHETE_LOOP", "auto")
    assert fast.choose_loop() == "simpy"
    got = [simulate_fast(s, durs), simulate_fast(s, durs)]
    for tl in got:
        _same(tl, ref)
        assert tl.engine == "simpy"                  # the summary's engine says what ran
    assert capsys.readouterr().err == fast.FALLBACK_NOTE + "\n"     # once per process
    monkeypatch.setenv("SIMHETE_LOOP", "compiled")   # refuses the fallback
    with pytest.raises(SimheteError, match="^SIMHETE_LOOP=compiled: the compiled event loop was not built"):
        simulate_fast(s, durs)


def test_the_compiled_loop_is_built_from_the_current_source():
    """A stale build would test old code: the extension must be newer than its source (``make``
    rebuilds it when the source changes). Skipped where it could not be built at all."""
    if not compiled_available():
        pytest.skip("the compiled loop is not built here")
    from simhete.engine import _compiled
    src = Path(_compiled.__file__).with_name("_compiled.pyx")
    if src.exists():
        assert Path(_compiled.__file__).stat().st_mtime >= src.stat().st_mtime


# -- static checks of the indexing ------------------------------------------------------------

@pytest.mark.parametrize("bad", ["duplicate", "dependency", "pool", "initial twice", "initial pool",
                                 "overflow", "negative"])
def test_every_bad_schedule_is_reported_as_the_reference_reports_it(bad):
    """Each problem the indexing finds (or turns into an OOM at t = 0) gives the reference
    engine's message, or its OOM report."""
    x = Alloc("x", "gpu0", 4, MemClass.ACTIVATIONS)
    tasks = [Task("a", "gpu0.compute", TaskCat.FWD, allocs=(x,)),
             Task("b", "gpu0.compute", TaskCat.BWD, deps=("a",), frees=("x",))]
    initial, pools = [Alloc("w", "gpu0", 2, MemClass.WEIGHTS)], {"gpu0": 10}
    if bad == "duplicate":
        tasks[1] = dataclasses.replace(tasks[1], name="a", deps=())
    elif bad == "dependency":
        tasks[1] = dataclasses.replace(tasks[1], deps=("zz",))
    elif bad == "pool":
        tasks[0] = dataclasses.replace(tasks[0], allocs=(dataclasses.replace(x, pool="gpu9"),))
    elif bad == "initial twice":
        initial.append(initial[0])
    elif bad == "initial pool":
        initial[0] = dataclasses.replace(initial[0], pool="gpu9")
    elif bad == "overflow":
        initial[0] = dataclasses.replace(initial[0], bytes=11)
    elif bad == "negative":
        tasks[0] = dataclasses.replace(tasks[0], allocs=(dataclasses.replace(x, bytes=-1),))
    s = Schedule(tuple(tasks), pools, tuple(initial))
    out = []
    for run in (simulate_simpy, simulate_fast):
        try:
            out.append(("oom", run(s, [1.0, 1.0]).oom))
        except SimheteError as e:
            out.append(("error", str(e)))
    assert out[0] == out[1]
    assert out[0][0] == ("oom" if bad == "overflow" else "error") and out[0][1] is not None
