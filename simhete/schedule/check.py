"""Dry-run checker: problems a schedule has before any simulation.

Finds duplicate or malformed names, unknown streams, dangling dependencies, cycles, buffers
allocated twice while live, freed twice, freed without having been allocated, freed by a task not
ordered after the allocating one, never freed, and single allocations larger than their pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simhete.schedule.model import NAME_RE, STREAM_RE, Schedule

if TYPE_CHECKING:
    import networkx as nx


def dependency_graph(s: Schedule) -> nx.DiGraph:
    import networkx as nx    # on first use: a sweep process (which never checks) need not import it

    g = nx.DiGraph()
    g.add_nodes_from(t.name for t in s.tasks)
    g.add_edges_from((d, t.name) for t in s.tasks for d in t.deps if d in g)
    return g


def check_schedule(s: Schedule, capacity: bool = True) -> list[str]:
    """Return a list of one-line problems; empty means the schedule is well formed.

    ``capacity=False`` skips the checks against pool capacities (initial buffers or one buffer
    larger than its pool): for a simulation those are an out-of-memory verdict, not a malformed
    schedule.
    """
    import networkx as nx

    problems: list[str] = []
    names: set[str] = set()
    all_names = {t.name for t in s.tasks}
    for t in s.tasks:
        if t.name in names:
            problems.append(f"duplicate task name {t.name}")
        names.add(t.name)
        if not NAME_RE.match(t.name):
            problems.append(f"task name {t.name!r} has characters outside [A-Za-z0-9_.:-[]@#]")
        if not STREAM_RE.match(t.stream):
            problems.append(f"task {t.name}: unknown stream {t.stream!r}")
        for d in t.deps:
            if d not in all_names:
                problems.append(f"task {t.name}: dependency {d} does not exist")
    g = dependency_graph(s)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        problems.append("dependency cycle: " + " -> ".join(u for u, _ in cycle) + f" -> {cycle[0][0]}")
        return problems

    # reachability by ancestor bitsets (one big-int OR per edge), instead of a graph search per query
    bit = {name: 1 << i for i, name in enumerate(g.nodes)}
    anc: dict[str, int] = {}
    for n in nx.topological_sort(g):
        a = 0
        for d in g.predecessors(n):
            a |= anc[d] | bit[d]
        anc[n] = a

    def has_path(u: str, v: str) -> bool:
        return u == v or bool(anc[v] & bit[u])

    pools = s.pools
    alloc_by: dict[str, list[str]] = {}   # buffer -> allocating task names ('' for initial)
    persist: set[str] = set()
    for a in s.initial:
        if a.pool not in pools:
            problems.append(f"initial buffer {a.buf}: unknown pool {a.pool!r}")
        alloc_by.setdefault(a.buf, []).append("")
    for t in s.tasks:
        for a in t.allocs:
            if a.pool not in pools:
                problems.append(f"task {t.name}: buffer {a.buf} in unknown pool {a.pool!r}")
            elif capacity and a.bytes > pools[a.pool]:
                problems.append(f"task {t.name}: buffer {a.buf} of {a.bytes} B exceeds pool {a.pool} "
                                f"capacity {pools[a.pool]} B")
            if a.bytes < 0:
                problems.append(f"task {t.name}: buffer {a.buf} has negative size {a.bytes}")
            alloc_by.setdefault(a.buf, []).append(t.name)
            if a.persist:
                persist.add(a.buf)
    freed_by: dict[str, list[str]] = {}
    for t in s.tasks:
        for b in t.frees:
            freed_by.setdefault(b, []).append(t.name)

    init_total = {p: 0 for p in pools}
    for a in s.initial:
        if a.pool in init_total:
            init_total[a.pool] += a.bytes
    for p, used in init_total.items():
        if capacity and used > pools[p]:
            problems.append(f"initial buffers in pool {p} hold {used} B, more than its capacity {pools[p]} B")

    for buf, allocs in alloc_by.items():
        frees = freed_by.get(buf, [])
        if len(frees) < len(allocs) and buf not in persist and "" not in allocs:
            problems.append(f"buffer {buf} is allocated {len(allocs)}x but freed {len(frees)}x (never freed)")
        if len(frees) > len(allocs):
            problems.append(f"buffer {buf} is freed {len(frees)}x but allocated {len(allocs)}x (freed twice)")
        if len(allocs) > 1:
            # re-allocation of the same name is allowed only after a free ordered between them
            order = sorted(allocs, key=lambda n: -1 if n == "" else 0)
            for prev, nxt in zip(order, order[1:]):
                if not any((prev == "" or has_path(prev, f)) and has_path(f, nxt) for f in frees):
                    problems.append(f"buffer {buf} is allocated by {prev or 'initial'} and again by {nxt} "
                                    "with no free ordered between them")
        for f in frees:
            if not any(a == "" or has_path(a, f) for a in allocs):
                problems.append(f"buffer {buf} is freed by {f}, which is not ordered after its allocation")
    for buf, frees in freed_by.items():
        if buf not in alloc_by:
            problems.append(f"buffer {buf} is freed by {frees[0]} but never allocated")
    return problems
