"""What the replay reads off a schedule before it runs it, from the tasks' actions, coordinates
and buffers (never from their names): the issue order, the micro-steps, the gradient buffers and
accumulation staging buffers, the blocks of optimizer sub-groups, and which weight refreshes each
compute task must see (delayed parameter update, :func:`refresh_plan`).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from simhete.opkinds import Action, MemClass, owned_buffer, state_buffer
from simhete.replay.model import kind_of
from simhete.replay.state import ReplayError
from simhete.replay.subgroups import subgroup_blocks
from simhete.schedule import Schedule

if TYPE_CHECKING:
    from simhete.replay.executor import Executor

COMPUTE = frozenset({Action.FORWARD, Action.RECOMPUTE, Action.BACKWARD})


def issue_order(schedule: Schedule, start: dict[str, float] | None = None) -> list[int]:
    """Task indices in a dependency-respecting order, earliest (predicted) start first."""
    idx = schedule.index()
    n = len(schedule.tasks)
    indeg = [0] * n
    users: list[list[int]] = [[] for _ in range(n)]
    for i, t in enumerate(schedule.tasks):
        for d in t.deps:
            users[idx[d]].append(i)
            indeg[i] += 1
    key = (lambda i: (start.get(schedule.tasks[i].name, float("inf")), i)) if start else (lambda i: (0.0, i))
    heap = [(key(i), i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    out: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        out.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, (key(u), u))
    if len(out) != n:
        raise ReplayError("the schedule's dependencies have a cycle")
    return out


def micro_steps(schedule: Schedule) -> int:
    """Micro-steps per iteration (``train.grad_accum``): every iteration's forwards must be those
    of micro-steps 1 … k."""
    seen: dict[int, set[int]] = {}
    for t in schedule.tasks:
        if t.action is Action.FORWARD:
            seen.setdefault(t.at.it, set()).add(t.at.m)
    k = max((max(ms) for ms in seen.values()), default=1)
    for it, ms in sorted(seen.items()):
        if ms != set(range(1, k + 1)):
            raise ReplayError(f"iteration {it} has forward micro-steps {sorted(ms)}; the replay "
                              f"needs micro-steps 1 to {k} in every iteration")
    return k


def grad_buffers(schedule: Schedule) -> dict[str, int]:
    """Every device gradient buffer -> its block: the GRADS buffers the backward tasks allocate."""
    return {a.buf: t.block for t in schedule.tasks if t.action is Action.BACKWARD
            for a in t.allocs if a.cls is MemClass.GRADS}


def state_owners(workload) -> dict[str, int]:
    """Every name a block's model-state buffer in ``Schedule.initial`` can have (host, device 0)
    -> the block (:func:`~simhete.opkinds.state_buffer`)."""
    return {state_buffer(cls, b.name, gpu): b.index for b in workload.blocks for cls in MemClass
            for gpu in (None, 0)}


FETCHES = frozenset({Action.WEIGHTS_H2D, Action.WEIGHTS_H2D_FWD, Action.WEIGHTS_H2D_BWD})


def weight_targets(x: Executor) -> dict[str, dict[int, str]]:
    """Per weight fetch that allocates device weight buffers: block -> the buffer holding its
    weights (one per block the fetch brings, :func:`~simhete.opkinds.owned_buffer`, else the
    fetch's own target block)."""
    out: dict[str, dict[int, str]] = {}
    for t in x.sched.tasks:
        if t.action not in FETCHES:
            continue
        mine = {owned_buffer(t.name, name): j for name, j in x.index_of.items()}
        for a in t.allocs:
            if a.cls is MemClass.WEIGHTS and a.pool == "gpu0":
                j = mine.get(a.buf, x.index_of.get(t.at.target))
                if j is None:
                    raise ReplayError(f"{t.name}: cannot tell whose weights buffer {a.buf} holds")
                out.setdefault(t.name, {})[j] = a.buf
    return out


def stage_blocks(x: Executor) -> dict[str, tuple[list[int], str]]:
    """Per accumulation staging buffer a ``GRADS_ACC_H2D`` task allocates: the blocks whose
    gradient buffers the task that frees it sends to the host, and that task's stream."""
    freer = {buf: t for t in x.sched.tasks for buf in t.frees}
    out: dict[str, tuple[list[int], str]] = {}
    for t in x.sched.tasks:
        if t.action is not Action.GRADS_ACC_H2D:
            continue
        for a in t.allocs:
            if a.cls is not MemClass.BUFFERS:
                continue
            user = freer.get(a.buf)
            blocks = [j for _, j in x.grads_freed(user)] if user is not None else []
            if not blocks:
                raise ReplayError(f"task {t.name}: no task frees its staging buffer {a.buf} together "
                                  "with the gradient buffers it accumulates into")
            out[a.buf] = (blocks, user.stream)
    return out


def groups(x: Executor) -> dict[tuple[int, str], list[int]]:
    """Blocks of each optimizer sub-group (an Adam task whose target is not a block, ``s0``):
    consecutive blocks from the task's ``block`` whose parameters add up to its Adam op's ``n``
    (:func:`subgroup_blocks`)."""
    out: dict[tuple[int, str], list[int]] = {}
    for t in x.sched.tasks:
        if t.action not in (Action.ADAM_CPU, Action.ADAM_GPU) or t.at.target in x.index_of:
            continue
        try:
            out[(t.at.it, t.at.target)] = subgroup_blocks(t, x.wl)
        except ValueError as e:
            raise ReplayError(str(e)) from None
    return out


def refresh_plan(x: Executor) -> tuple[dict[str, dict[int, bool]], set[tuple[int, int]],
                                       dict[str, dict[int, int]], set[str]]:
    """Which weight refreshes each compute task must see, and which refreshes must not
    overwrite the live device weights: ``(refresh, refreshed, need_w, host_hazard)``.

    A refresh is a ``WEIGHTS_H2D`` that depends directly on an ``ADAM_CPU`` and allocates no
    weight buffer (weights resident on the device, updated after a CPU step); its version is its
    iteration k. ``need_w[task][block]``: the newest refresh of the block among the (transitive)
    dependencies of a forward, recompute or backward — the weights the schedule guarantees it.
    ``refresh[task][block]`` is true when the refresh must be kept aside (``w_staged``): some
    compute task of the block that needs an older version is not among the refresh's
    dependencies, so it may still run after it (DPU: iteration k+1 while step k arrives).
    ``refreshed``: the (iteration, block) pairs some refresh sends. ``host_hazard``: refreshes
    whose host source a later ``ADAM_CPU`` of the block may rewrite before they read it (it is not
    ordered either way); the CPU device handles that with the lock and ``w_snap``, CUDA
    additionally waits for such a copy before releasing the lock.
    """
    tasks = x.sched.tasks
    refresh: dict[str, dict[int, bool]] = {}
    refreshed: set[tuple[int, int]] = set()
    need_w: dict[str, dict[int, int]] = {}
    host_hazard: set[str] = set()
    idx = x.sched.index()
    adam_cpu = {i for i, t in enumerate(tasks) if t.action is Action.ADAM_CPU}
    ref: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        if (t.action is Action.WEIGHTS_H2D and any(idx[d] in adam_cpu for d in t.deps)
                and not any(a.cls is MemClass.WEIGHTS and a.pool == "gpu0" for a in t.allocs)):
            blk = t.at.target
            ref[i] = [j for j in x.task_blocks(t, t.at.it, blk)
                      if j in x.state.blocks and (blk in x.index_of or x.state.blocks[j].home_dev)]
    if not ref:
        return refresh, refreshed, need_w, host_hazard
    uses: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        if t.action in COMPUTE:
            blk = t.at.target
            uses[i] = [x.index_of[blk]] + ([x.index_of["embed"]] if kind_of(blk) == "head"
                                            and x.spec.tied_embeddings and "embed" in x.index_of else [])
    anc = [0] * len(tasks)                       # bitset of transitive dependencies
    seen: list[dict[int, int]] = [{} for _ in tasks]   # newest refresh per block
    for i in issue_order(x.sched):
        a, v = 0, {}
        for d in tasks[i].deps:
            k = idx[d]
            a |= anc[k] | (1 << k)
            for j, ver in seen[k].items():
                if ver > v.get(j, 0):
                    v[j] = ver
            for j in ref.get(k, ()):
                if tasks[k].at.it > v.get(j, 0):
                    v[j] = tasks[k].at.it
        anc[i], seen[i] = a, v
    for i, blocks in uses.items():
        need_w[tasks[i].name] = {j: seen[i].get(j, 0) for j in blocks}
    adam_blocks = {i: x.task_blocks(tasks[i], tasks[i].at.it, tasks[i].at.target) for i in adam_cpu}
    for r, blocks in ref.items():
        k, name = tasks[r].at.it, tasks[r].name
        refresh[name] = {}
        for j in blocks:
            refreshed.add((k, j))
            refresh[name][j] = any(
                j in bl and seen[i].get(j, 0) < k and not anc[r] >> i & 1 for i, bl in uses.items())
            if any(j in bl and not anc[r] >> i & 1 and not anc[i] >> r & 1
                   for i, bl in adam_blocks.items()):
                host_hazard.add(name)
    return refresh, refreshed, need_w, host_hazard
