"""Properties of both engines on random valid schedules, with known answers where there is one."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings

from simhete.engine import simulate, simulate_fast, simulate_simpy
from simhete.schedule import Schedule
from test_engine_strategies import runs

SETTINGS = settings(max_examples=120, deadline=None)


def _same(a, b) -> None:
    assert a.records == b.records
    assert a.mem_events == b.mem_events
    assert a.peak == b.peak
    assert a.peak_by_class == b.peak_by_class
    assert a.oom == b.oom


@settings(max_examples=300, deadline=None)
@given(runs())
def test_fast_equals_simpy_exactly(run):
    s, durs, rules = run
    ref = simulate_simpy(s, durs, rules)
    assert ref.engine == "simpy"
    fast = simulate_fast(s, durs, rules)
    assert fast.engine == "fast"
    _same(fast, ref)


@settings(max_examples=40, deadline=None)
@given(runs(max_tasks=40))
def test_fast_equals_simpy_on_larger_schedules(run):
    s, durs, rules = run
    ref = simulate_simpy(s, durs, rules)
    _same(simulate_fast(s, durs, rules), ref)


@settings(max_examples=60, deadline=None)
@given(runs())
def test_deterministic(run):
    s, durs, rules = run
    for engine in ("fast", "simpy"):
        assert simulate(s, durs, rules, engine=engine) == simulate(s, durs, rules, engine=engine)


@SETTINGS
@given(runs())
def test_streams_are_exclusive_deps_respected_and_makespan_bounds_busy_time(run):
    s, durs, rules = run
    tl = simulate_fast(s, durs, rules)
    if tl.oom is None:
        assert [r.name for r in tl.records] == [t.name for t in s.tasks]
    else:
        assert len(tl.records) < len(s.tasks)
    end = {r.name: r.end for r in tl.records}
    tasks = {t.name: t for t in s.tasks}
    for r in tl.records:
        assert all(d in end and end[d] <= r.start for d in tasks[r.name].deps)
        assert r.end >= r.start
    by_stream: dict[str, list] = {}
    for r in tl.records:
        by_stream.setdefault(r.stream, []).append((r.start, r.end))
    for spans in by_stream.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    busiest = max(tl.busy().values(), default=0.0)
    assert tl.makespan >= busiest * (1 - 1e-12)
    if not rules:
        dur = dict(zip((t.name for t in s.tasks), durs))
        assert all(r.end == r.start + dur[r.name] for r in tl.records)


@SETTINGS
@given(runs())
def test_memory_never_exceeds_capacity_and_peak_matches_events(run):
    s, durs, rules = run
    tl = simulate_fast(s, durs, rules)
    for pool, cap in s.pools.items():
        ev = tl.mem_events[pool]
        assert ev[0] == (0.0, sum(a.bytes for a in s.initial if a.pool == pool))
        assert all(0 <= used <= cap for _, used in ev)
        assert [t for t, _ in ev] == sorted(t for t, _ in ev)
        assert tl.peak[pool] == max(used for _, used in ev)
        assert sum(tl.peak_by_class[pool].values()) == tl.peak[pool]
    if tl.oom is None:   # everything ran: only persist and never-freed initial buffers remain
        for pool in s.pools:
            left = sum(a.bytes for t in s.tasks for a in t.allocs if a.pool == pool and a.persist)
            freed = {b for t in s.tasks for b in t.frees}
            left += sum(a.bytes for a in s.initial if a.pool == pool and a.buf not in freed)
            assert tl.mem_events[pool][-1][1] == left


@SETTINGS
@given(runs(with_memory=False, interference=False))
def test_infinite_resources_makespan_is_the_critical_path(run):
    s, durs, _ = run
    # every task alone on its own stream, no memory: nothing ever waits but for its dependencies
    alone = Schedule(tuple(dataclasses.replace(t, stream=f"gpu{i}.compute") for i, t in enumerate(s.tasks)),
                     s.pools, s.initial, s.iterations, s.meta)
    dur = dict(zip((t.name for t in s.tasks), durs))
    tasks = {t.name: t for t in s.tasks}
    finish: dict[str, float] = {}

    def cp(name: str) -> float:
        if name not in finish:
            finish[name] = max((cp(d) for d in tasks[name].deps), default=0.0) + dur[name]
        return finish[name]

    for engine in ("fast", "simpy"):
        tl = simulate(alone, durs, engine=engine)
        assert tl.oom is None
        assert tl.makespan == max(cp(t.name) for t in s.tasks)
        assert {r.name: r.end for r in tl.records} == {n: cp(n) for n in tasks}
