"""Hypothesis strategies for random *valid* schedules (imported by the engine and schedule tests).

A schedule is drawn as a DAG in topological order, then listed in a shuffled order (the engines
break priority ties by list position, not by topology). Every buffer is freed exactly once by its
allocating task or one of its descendants, or marked persist; single allocations fit their pool,
but several may not fit together, so some schedules stall and some run out of memory.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.schedule import Alloc, Op, Schedule, Task, check_schedule

STREAMS = ("gpu0.compute", "gpu0.h2d", "gpu0.d2h", "cpu.optim", "gpu1.compute")
POOLS = ("gpu0", "cpu")
INTERFERENCE_GLOBS = ("gpu0.*", "gpu0.h2d", "gpu0.d2h", "cpu.optim", "*.compute", "*")

# durations: small integers make ties (simultaneous completions) frequent, floats make rounding real
durations_st = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
                         st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False))

ops_st = st.lists(st.builds(
    Op, kind=st.sampled_from(list(OpKind)),
    shape=st.lists(st.integers(0, 4096), max_size=6).map(tuple),
    n=st.integers(0, 2**40), dtype=st.sampled_from(["bf16", "fp16", "fp32"]),
    pinned=st.booleans(), count=st.integers(1, 4)), max_size=3).map(tuple)


@st.composite
def schedules(draw, max_tasks: int = 12, with_memory: bool = True, with_ops: bool = False) -> Schedule:
    """Ops only matter to the text form; the engines never read them, so they are off by default."""
    n = draw(st.integers(1, max_tasks))
    caps = {p: draw(st.integers(1, 64)) for p in POOLS}
    deps: list[list[int]] = []
    for i in range(n):
        deps.append(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [])
    desc: list[set[int]] = [set() for _ in range(n)]      # descendants, by reverse topological sweep
    for i in reversed(range(n)):
        for d in deps[i]:
            desc[d] |= desc[i] | {i}
    allocs: list[list[Alloc]] = [[] for _ in range(n)]
    frees: list[list[str]] = [[] for _ in range(n)]
    initial: list[Alloc] = []
    if with_memory:
        for k in range(draw(st.integers(0, 2))):
            pool = draw(st.sampled_from(POOLS))
            size = draw(st.integers(0, caps[pool] // 3))
            a = Alloc(f"init{k}", pool, size, draw(st.sampled_from([MemClass.WEIGHTS, MemClass.OPTIM])))
            if sum(x.bytes for x in initial if x.pool == pool) + size > caps[pool]:
                continue
            initial.append(a)
            if draw(st.booleans()):
                frees[draw(st.integers(0, n - 1))].append(a.buf)
        for i in range(n):
            for k in range(draw(st.integers(0, 2))):
                pool = draw(st.sampled_from(POOLS))
                persist = draw(st.integers(0, 9)) == 0
                size = draw(st.integers(0, caps[pool] // 4) if draw(st.integers(0, 3)) else st.integers(0, caps[pool]))
                a = Alloc(f"b{i}_{k}", pool, size,
                          draw(st.sampled_from(list(MemClass))), persist)
                allocs[i].append(a)
                if not persist:
                    frees[draw(st.sampled_from(sorted(desc[i] | {i})))].append(a.buf)
    names = [f"t{i}" for i in range(n)]
    tasks = [Task(names[i], draw(st.sampled_from(STREAMS)), draw(st.sampled_from(list(TaskCat))),
                  draw(ops_st) if with_ops else (), tuple(names[d] for d in deps[i]), draw(st.integers(-2, 2)),
                  tuple(allocs[i]), tuple(frees[i]), draw(st.integers(0, 3)), draw(st.integers(-1, 40)))
             for i in range(n)]
    order = draw(st.permutations(range(n)))
    return Schedule(tuple(tasks[i] for i in order), caps, tuple(initial), draw(st.integers(1, 3)),
                    draw(st.dictionaries(st.sampled_from(["policy", "model", "note"]),
                                         st.sampled_from(["zero-offload", "llama2 13b", "x=1,y"]))))


@st.composite
def runs(draw, max_tasks: int = 12, with_memory: bool = True, interference: bool = True):
    """(schedule, durations, interference rules)."""
    s = draw(schedules(max_tasks, with_memory))
    durs = draw(st.lists(durations_st, min_size=len(s.tasks), max_size=len(s.tasks)))
    rules = ()
    if interference:
        rules = tuple(draw(st.lists(st.tuples(
            st.sampled_from(INTERFERENCE_GLOBS), st.sampled_from(INTERFERENCE_GLOBS),
            st.sampled_from([1.0, 1.25, 1.5, 2.0, 3.0])), max_size=3)))
    return s, durs, rules


@settings(max_examples=100, deadline=None)
@given(schedules(with_ops=True))
def test_generated_schedules_pass_the_checker(s):
    assert check_schedule(s) == []
