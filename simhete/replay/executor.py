"""Execute a simulated Schedule for real with torch and return the measured Timeline.

Every task is dispatched by the operation in its name (``it{k}.{what}.{block}``, or
``it{k}.m{m}.{what}.{block}`` in micro-step m > 1 of a gradient-accumulating iteration: the names
:func:`simhete.policy.training.tname` gives) and runs on the real blocks of the workload's model:

==============  ==========================================================================
``F``           forward of the block; with a ``R`` task in the schedule it runs without a
                graph and keeps only its input (checkpoint), otherwise it records the saved
                tensors through saved-tensor hooks
``R``           recompute: the forward again, from the checkpointed input, with its graph
``B``           backward: gradients of the block input and weights (``torch.autograd.grad``)
                into the gradient buffer the task allocates; a backward that allocates none
                adds them into the block's buffer of the iteration (accumulation on the device)
``D2H.act``     swap out: every saved activation copied to a host buffer, device copy dropped
``H2D.act``     swap in: the saved activations copied back to the device
``D2H.g``       gradients of the blocks whose gradient buffers the task frees, to the host;
                when it also frees a staging buffer (micro-step m > 1), the host accumulation
                staged there is added to them first and the sum goes to the host
``D2H.g.ga``    the host accumulation of those blocks' gradients copied into the staging buffer
                the task allocates (DeepSpeed's accumulate-through-the-GPU, see
                :meth:`simhete.policy.dataparallel.DataParallel.accumulate`)
``ADAM.cpu``    torch's Adam on the block's fp32 master weights on the CPU with the host
                gradients of its own iteration, then its working-precision host copy
                refreshed for the ``H2D.w`` of that iteration
``STEP``        a join before or inside a CPU step (``it2.STEP.grads``, ``it2.STEP.cast``): timed,
                no work. zero-offload prices DeepSpeed's clip pass over the fp32 gradients and
                its cast of the fp32 partition to 16 bits there; the replay does not clip (losses
                stay plain training's) and its ``ADAM.cpu`` writes the host's 16-bit copy
``ADAM.gpu``    torch's Adam on the device, then the working weights refreshed from the master
``H2D.w``       the block's working weights copied from the host into its device leaves (fresh
                storage when they were released); a weight buffer the task allocates is bound
                to them, and the task that frees that buffer releases them. After an
                ``ADAM.cpu`` (a refresh) it sends the weights of that iteration's step
==============  ==========================================================================

Delayed parameter update (ZeRO-Offload's DPU: iteration k+1 computes with the weights of step
k−1, and the step of iteration k overlaps it): the schedule does not order iteration k+1's D2H of
gradients after iteration k's step, nor iteration k's weight refresh after iteration k+1's
compute or iteration k+1's step. So host gradients are kept per (iteration, block), each step
reads its own; a refresh sends its own step's weights (a later step snapshots them first if the
refresh has not read them yet); and a compute task uses the newest refresh that is among its
dependencies (transitively): a refresh that could land while a compute task that does not depend
on it still needs the previous weights is kept aside on the device and swapped in by the first
compute task that depends on it (:meth:`Executor._refresh_plan`). Without DPU every refresh is
ordered before the next iteration, and all of this reduces to the plain in-place copies.

Gradient accumulation (k micro-steps): micro-step m trains on the m-th micro-batch of the
iteration's data, its dropout masks are seeded with m, its backward starts from the loss divided
by k, and the iteration's loss is the mean over its micro-steps (simhete.replay.model); where the
gradients are added follows the schedule's gradient and staging buffers (above).

Order: tasks are issued in a topological order of the dependencies, earliest predicted start
first (the simulated start order). Each stream runs its tasks in that order, each after its
dependencies. On the CPU device every stream is a host thread with one intra-op thread, as the
CPU calibration measures them, sharing the cores (the profile's interference entries describe
that sharing). On CUDA each device stream is a ``torch.cuda.Stream`` fed by the main thread, a
dependency on another stream is a ``wait_event``, and CPU tasks (``cpu.optim``) run on a host
thread that first waits for the device tasks they depend on.

Memory: on CUDA the measured peak is ``torch.cuda.max_memory_allocated``. On the CPU device it is
the executor's own accounting (:meth:`State.pool_bytes`: weights, optimizer states, gradients and
every saved activation, storages counted once) sampled at each task's end before its frees —
transient memory inside a task is not seen.
"""

from __future__ import annotations

import heapq
import queue
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from simhete.engine.timeline import Record, Timeline
from simhete.opkinds import MemClass, TaskCat
from simhete.replay.device import CPU_STREAM, Device
from simhete.replay.model import (TORCH_DTYPES, Step, adam, adam_step, batch_of, data, forward, init_master,
                                  iteration_loss, kind_of, scale_loss)
from simhete.replay.state import Act, BlockState, ReplayError, State
from simhete.replay.subgroups import subgroup_blocks
from simhete.schedule import Schedule, Task

NAME_RE = re.compile(r"^it(\d+)\.(?:m(\d+)\.)?(.+)\.([A-Za-z0-9_]+)$")
STREAMS = ("gpu0.compute", "gpu0.h2d", "gpu0.d2h", CPU_STREAM)
CPU_THREADS_PER_STREAM = 1


@dataclass(frozen=True)
class Replayed:
    timeline: Timeline
    losses: list[float]          # per iteration, in order
    device: str
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU device: per task, the CPU seconds its thread ran (``time.thread_time``); its wall time
    minus this is time the thread waited for a core. Empty on CUDA."""


def parse_name(name: str) -> tuple[int, int, str, str]:
    """``it2.H2D.w.b3`` -> (2, 1, "H2D.w", "b3"); ``it2.m3.B.b3`` -> (2, 3, "B", "b3")."""
    m = NAME_RE.match(name)
    if m is None:
        raise ReplayError(f"task {name}: the replay needs names it<k>[.m<m>].<what>.<block> "
                          "(single-GPU schedules from simhete.policy)")
    return int(m.group(1)), int(m.group(2) or 1), m.group(3), m.group(4)


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


class Executor:
    """Runs one Schedule of one workload on one device. Build, then :meth:`run` once."""

    def __init__(self, schedule: Schedule, workload, device: Device, *, seed: int = 0,
                 lr: float = 1e-2) -> None:
        self.sched = schedule
        self.wl = workload
        self.spec = workload.spec
        self.dev = device
        self.seed = seed
        self.dtype = TORCH_DTYPES[workload.dtype]
        bad = sorted({t.stream for t in schedule.tasks} - set(STREAMS))
        if bad:
            raise ReplayError(f"stream {bad[0]}: the replay runs single-device schedules on "
                              f"{', '.join(STREAMS)}")
        self.names = {b.index: b.name for b in workload.blocks}
        self.index_of = {b.name: b.index for b in workload.blocks}
        self.parsed = [parse_name(t.name) for t in schedule.tasks]
        for (it, m, what, blk), t in zip(self.parsed, schedule.tasks):
            if handler(what) is None:
                raise ReplayError(f"task {t.name}: no replay for operation {what!r}; known: "
                                  + ", ".join(sorted(HANDLERS)))
        self.recompute = {(it, m, self.index_of[b]) for it, m, w, b in self.parsed if w == "R"}
        self.micro_steps = self._micro_steps()
        self.bound: dict[str, Callable[[], None]] = {}
        tokens = data(self.spec, schedule.iterations, workload.micro_batch, workload.seq_len, seed,
                      self.micro_steps)
        self.tokens = tokens.to(device.dev)
        self.stage_blocks = self._stage_blocks()
        self.state = State({b.index: self._block_state(b, lr) for b in workload.blocks if b.params})
        self.groups = self._groups()
        self.lock = threading.Lock()   # the kept-aside refreshes (state.w_staged), all blocks
        # host weight versions of one block: its ADAM.cpu vs its H2D.w on another stream (a lock
        # per block: the schedule runs one block's refresh beside another block's step)
        self.block_lock = {j: threading.Lock() for j in self.state.blocks}
        self._refresh_plan()
        for a in schedule.initial:   # a schedule may free an initially resident weight buffer
            j = self.index_of.get(a.buf.rsplit(".", 1)[-1])
            if a.cls is MemClass.WEIGHTS and a.pool == "gpu0" and j in self.state.blocks:
                self.bound[a.buf] = self.state.blocks[j].release
        self.mem_events: dict[str, list[tuple[float, int]]] = {"gpu0": [], "cpu": []}
        self.peak: dict[str, int] = {"gpu0": 0, "cpu": 0}
        self.peak_by_class: dict[str, dict[str, int]] = {"gpu0": {}, "cpu": {}}

    # -- setup ------------------------------------------------------------------------------

    def _block_state(self, b, lr: float) -> BlockState:
        """Model states placed as ``Schedule.initial`` says: ``{cls}.g0.{block}`` on the device,
        ``{cls}.{block}`` on the host. Without a master buffer (fp32 training) the optimizer's
        fp32 parameters live with the Adam states. Weights may have a device copy, a host home,
        or both (StrongHold's window)."""
        pools: dict[str, set[str]] = {}
        for a in self.sched.initial:
            if a.buf.rsplit(".", 1)[-1] == b.name:
                pools.setdefault(a.cls.value, set()).add(a.pool)
        opt = pools.get(MemClass.OPTIM.value)
        if not opt:
            raise ReplayError(f"block {b.name}: the schedule places no Adam states "
                              f"({MemClass.OPTIM.value}.{b.name}) in Schedule.initial")
        master_pool = min(pools.get(MemClass.MASTER.value, opt))
        weights = pools.get(MemClass.WEIGHTS.value, set())
        on_dev, home = "gpu0" in weights, "cpu" in weights
        dev, dtype = self.dev.dev, self.dtype
        init = init_master(self.spec, b.name, b.index, self.seed)
        where = dev if master_pool == "gpu0" else torch.device("cpu")
        master = {k: v.to(where, copy=True) for k, v in init.items()}
        dev_is_master = dtype == torch.float32 and master_pool == "gpu0" and on_dev and not home
        if dev_is_master:
            leaves = {k: v.requires_grad_() for k, v in master.items()}
        else:
            leaves = {k: v.to(device=dev, dtype=dtype, copy=True).requires_grad_() for k, v in init.items()}
        bs = BlockState(b.name, b.index, master, master_pool, adam(list(master.values()), lr), leaves,
                        {k: v.shape for k, v in init.items()}, resident=True, dev_is_master=dev_is_master)
        bs.home_dev = on_dev
        if not on_dev:
            bs.release()
        if home or master_pool == "cpu":
            if master_pool == "cpu" and dtype == torch.float32:
                bs.host_w = master
            else:
                pinned = self._pinned_h2d()
                bs.host_w = {}
                for k, v in init.items():
                    h = self.dev.host_empty(v, pinned, dtype)
                    h.copy_(v)
                    bs.host_w[k] = h
        return bs

    def _micro_steps(self) -> int:
        """Micro-steps per iteration (``train.grad_accum``): every iteration's forwards must be
        those of micro-steps 1 … k."""
        seen: dict[int, set[int]] = {}
        for it, m, what, _ in self.parsed:
            if what == "F":
                seen.setdefault(it, set()).add(m)
        k = max((max(ms) for ms in seen.values()), default=1)
        for it, ms in sorted(seen.items()):
            if ms != set(range(1, k + 1)):
                raise ReplayError(f"iteration {it} has forward micro-steps {sorted(ms)}; the replay "
                                  f"needs micro-steps 1 to {k} in every iteration")
        return k

    def _stage_blocks(self) -> dict[str, tuple[list[int], str]]:
        """Per accumulation staging buffer a ``D2H.g.ga`` task allocates: the blocks whose gradient
        buffers the task that frees it sends to the host, and that task's stream."""
        freer = {buf: t for t in self.sched.tasks for buf in t.frees}
        out: dict[str, tuple[list[int], str]] = {}
        for (_, _, what, _), t in zip(self.parsed, self.sched.tasks):
            if handler(what) is not _grads_acc_h2d:
                continue
            for a in t.allocs:
                if a.cls is not MemClass.BUFFERS:
                    continue
                user = freer.get(a.buf)
                blocks = [j for _, j in self._grads_freed(user)] if user is not None else []
                if not blocks:
                    raise ReplayError(f"task {t.name}: no task frees its staging buffer {a.buf} together "
                                      "with the gradient buffers it accumulates into")
                out[a.buf] = (blocks, user.stream)
        return out

    def _pinned_h2d(self) -> bool:
        """Host weight buffers are pinned when the schedule's H2D copies are."""
        return all(op.pinned for t in self.sched.tasks if t.cat is TaskCat.H2D for op in t.ops)

    def _groups(self) -> dict[tuple[int, str], list[int]]:
        """Blocks of each optimizer sub-group label (``ADAM.cpu.s0``): consecutive blocks from the
        task's ``block`` whose parameters add up to its Adam op's ``n`` (:func:`subgroup_blocks`)."""
        out: dict[tuple[int, str], list[int]] = {}
        for (it, _, what, blk), t in zip(self.parsed, self.sched.tasks):
            if not what.startswith("ADAM.") or blk in self.index_of:
                continue
            try:
                out[(it, blk)] = subgroup_blocks(t, self.wl)
            except ValueError as e:
                raise ReplayError(str(e)) from None
        return out

    def _refresh_plan(self) -> None:
        """Which weight refreshes each compute task must see, and which refreshes must not
        overwrite the live device weights.

        A refresh is an ``H2D.w`` that depends directly on an ``ADAM.cpu`` and allocates no weight
        buffer (weights resident on the device, updated after a CPU step); its version is its
        iteration k. ``need_w[task][block]``: the newest refresh of the block among the (transitive)
        dependencies of a forward, recompute or backward — the weights the schedule guarantees it.
        ``refresh[task][block]`` is true when the refresh must be kept aside (``w_staged``): some
        compute task of the block that needs an older version is not among the refresh's
        dependencies, so it may still run after it (DPU: iteration k+1 while step k arrives).
        ``host_hazard``: refreshes whose host source a later ``ADAM.cpu`` of the block may rewrite
        before they read it (it is not ordered either way); the CPU device handles that with the
        lock and ``w_snap``, CUDA additionally waits for such a copy before releasing the lock.
        """
        tasks, parsed = self.sched.tasks, self.parsed
        self.refresh: dict[str, dict[int, bool]] = {}
        self.refreshed: set[tuple[int, int]] = set()
        self.need_w: dict[str, dict[int, int]] = {}
        self.host_hazard: set[str] = set()
        idx = self.sched.index()
        adam_cpu = {i for i, p in enumerate(parsed) if handler(p[2]) is _adam_cpu}
        ref: dict[int, list[int]] = {}
        for i, ((it, m, what, blk), t) in enumerate(zip(parsed, tasks)):
            if (what == "H2D.w" and any(idx[d] in adam_cpu for d in t.deps)
                    and not any(a.cls is MemClass.WEIGHTS and a.pool == "gpu0" for a in t.allocs)):
                ref[i] = [j for j in self._task_blocks(t, it, blk)
                          if j in self.state.blocks and (blk in self.index_of or self.state.blocks[j].home_dev)]
        if not ref:
            return
        uses: dict[int, list[int]] = {}
        for i, (it, m, what, blk) in enumerate(parsed):
            if what in ("F", "R", "B"):
                j = self.index_of[blk]
                uses[i] = [j] + ([self.index_of["embed"]] if kind_of(blk) == "head"
                                 and self.spec.tied_embeddings and "embed" in self.index_of else [])
        anc = [0] * len(tasks)                       # bitset of transitive dependencies
        seen: list[dict[int, int]] = [{} for _ in tasks]   # newest refresh per block
        for i in issue_order(self.sched):
            a, v = 0, {}
            for d in tasks[i].deps:
                k = idx[d]
                a |= anc[k] | (1 << k)
                for j, ver in seen[k].items():
                    if ver > v.get(j, 0):
                        v[j] = ver
                for j in ref.get(k, ()):
                    if parsed[k][0] > v.get(j, 0):
                        v[j] = parsed[k][0]
            anc[i], seen[i] = a, v
        for i, blocks in uses.items():
            self.need_w[tasks[i].name] = {j: seen[i].get(j, 0) for j in blocks}
        adam_blocks = {i: self._task_blocks(tasks[i], parsed[i][0], parsed[i][3]) for i in adam_cpu}
        for r, blocks in ref.items():
            k, name = parsed[r][0], tasks[r].name
            self.refresh[name] = {}
            for j in blocks:
                self.refreshed.add((k, j))
                self.refresh[name][j] = any(
                    j in bl and seen[i].get(j, 0) < k and not anc[r] >> i & 1 for i, bl in uses.items())
                if any(j in bl and not anc[r] >> i & 1 and not anc[i] >> r & 1
                       for i, bl in adam_blocks.items()):
                    self.host_hazard.add(name)

    # -- running ----------------------------------------------------------------------------

    def run(self, start: dict[str, float] | None = None,
            on_task: Callable[[Task], None] | None = None) -> Replayed:
        """Execute every task once; ``start`` (predicted start per task name) sets the issue order,
        ``on_task`` is called as each task finishes (from the thread that ran it)."""
        order = issue_order(self.sched, start)
        threaded = set(STREAMS) if self.dev.kind == "cpu" else {CPU_STREAM}
        self.on_task = on_task
        self.done: dict[str, threading.Event] = {}
        self.failed = threading.Event()
        self.error: BaseException | None = None
        workers = {s: _Worker(self, s) for s in self.sched.streams if s in threaded}
        before = torch.get_num_threads()
        if self.dev.kind == "cpu":
            torch.set_num_threads(CPU_THREADS_PER_STREAM)
        try:
            self.dev.start()
            self.device_name = self.dev.name
            for w in workers.values():
                w.start()
            for i in order:
                t = self.sched.tasks[i]
                if self.failed.is_set():
                    break
                if t.stream in workers:
                    self.done[t.name] = threading.Event()
                    workers[t.stream].queue.put(i)
                    continue
                try:
                    for d in t.deps:
                        self._wait(d)
                    self._run(i)
                except _Aborted:
                    break
                except BaseException as e:
                    self._fail(e)
                    break
            for w in workers.values():
                w.queue.put(None)
            for w in workers.values():
                w.join()
            if self.error is not None:
                raise self.error
            times = self.dev.times()
        finally:
            torch.set_num_threads(before)
        return self._result(times)

    def _wait(self, dep: str) -> None:
        """Block until a task run by a worker thread has finished (device tasks need no wait here)."""
        ev = self.done.get(dep)
        if ev is None:
            return
        while not ev.wait(0.05):
            if self.failed.is_set():
                raise _Aborted()

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.failed.set()

    def _run(self, i: int) -> None:
        """Issue a task on its stream: wait for its dependencies on other streams, run, time it."""
        t = self.sched.tasks[i]
        it, m, what, blk = self.parsed[i]
        with self.dev.stream(t.stream):
            self.dev.wait(list(t.deps))
            mark = self.dev.begin(t.name)
            handler(what)(self, t, it, m, blk)
            self.dev.end(t.name, mark)
        self._after(t)

    def _run_host(self, i: int) -> None:
        """A CPU task next to a CUDA device: wait for the device work it needs, stamp with the host clock."""
        t = self.sched.tasks[i]
        it, m, what, blk = self.parsed[i]
        self.dev.wait_host(list(t.deps))  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        handler(what)(self, t, it, m, blk)
        self.dev.host_task(t.name, t0, time.perf_counter())  # type: ignore[attr-defined]
        self._after(t)

    def _after(self, t: Task) -> None:
        if self.dev.kind == "cpu":
            self._sample()
        for buf in t.frees:
            release = self.bound.pop(buf, None)
            if release is not None:
                release()
        if self.on_task is not None:
            self.on_task(t)

    def _sample(self) -> None:
        by = self.state.pool_bytes()
        now = self.dev.now()
        for pool, classes in by.items():
            total = sum(classes.values())
            self.mem_events[pool].append((now, total))
            if total > self.peak[pool]:
                self.peak[pool] = total
                self.peak_by_class[pool] = dict(sorted(classes.items()))

    def _result(self, times: dict[str, tuple[float, float]]) -> Replayed:
        recs = []
        for t, (it, _, _, _) in zip(self.sched.tasks, self.parsed):
            s, e = times[t.name]
            recs.append(Record(t.name, t.stream, t.cat, t.it or it, t.block, s, e))
        t0 = min((r.start for r in recs), default=0.0)
        recs = [Record(r.name, r.stream, r.cat, r.it, r.block, r.start - t0, r.end - t0) for r in recs]
        peak, by_class = dict(self.peak), dict(self.peak_by_class)
        measured = self.dev.peak_bytes()
        if measured is not None:
            peak["gpu0"] = measured
            by_class["gpu0"] = {}
        events = {p: tuple((max(0.0, a - t0), b) for a, b in ev) for p, ev in self.mem_events.items() if ev}
        tl = Timeline(tuple(recs), events, peak, by_class, engine=f"replay-{self.dev.kind}",
                      meta={"device": self.device_name})
        per_it: dict[int, list[float]] = {}
        for (it, _), loss in sorted(self.state.losses.items()):
            per_it.setdefault(it, []).append(float(loss))
        losses = [iteration_loss(per_it[it]) for it in sorted(per_it)]
        cpu = self.dev.cpu_seconds() if self.dev.kind == "cpu" else {}
        return Replayed(tl, losses, self.device_name, cpu)

    # -- helpers ----------------------------------------------------------------------------

    def _step(self, it: int, m: int, i: int) -> Step:
        inp, tgt = batch_of(self.tokens, it, m)
        return Step(it, i, self.seed, inp, tgt, m)

    def _out(self, blk: str, y: torch.Tensor) -> torch.Tensor:
        """A block's output as backward differentiates it: the head's loss scaled for accumulation."""
        return scale_loss(y, self.micro_steps) if kind_of(blk) == "head" else y

    def _weights(self, t: Task, i: int) -> tuple[dict, dict | None]:
        """The block's device weights (and the tied embedding for the head); they must be resident."""
        need = [i]
        tied = None
        if kind_of(self.names[i]) == "head" and self.spec.tied_embeddings:
            need.append(self.index_of["embed"])
        for j, ver in self.need_w.get(t.name, {}).items():
            self._take_refresh(j, ver)
        for j in need:
            b = self.state.blocks.get(j)
            if b is not None and not b.resident:
                raise ReplayError(f"{t.name}: weights of block {self.names[j]} are not on the device "
                                  "(no H2D brought them, or they were released)")
        if len(need) > 1:
            tied = self.state.blocks[need[1]].dev
        own = self.state.blocks[i].dev if i in self.state.blocks else {}
        return own, tied

    def _take_refresh(self, j: int, ver: int) -> None:
        """Swap the newest refresh of block j up to step ``ver`` that was kept aside into its
        device leaves (older ones kept aside are dropped: the schedule guarantees the newest)."""
        with self.lock:
            ks = [k for (k, b) in self.state.w_staged if b == j and k <= ver]
            if not ks:
                return
            w = self.state.w_staged[(max(ks), j)]
            for k in ks:
                del self.state.w_staged[(k, j)]
        b = self.state.blocks[j]
        for k, v in b.dev.items():
            v.data = w[k]
        b.resident = True

    @contextmanager
    def _saving(self, t: Task, act: Act, i: int) -> Iterator[None]:
        """Record what autograd saves: weights as references to their leaf, the rest into ``act``."""
        leaves: dict[int, tuple[int, str]] = {}
        for j in {i, self.index_of.get("embed", -1)}:
            b = self.state.blocks.get(j)
            if b is not None and b.resident:
                for k, v in b.dev.items():
                    leaves[v.untyped_storage().data_ptr()] = (j, k)

        def pack(x: torch.Tensor) -> object:
            ref = leaves.get(x.untyped_storage().data_ptr())
            if ref is not None:
                return ("w", ref[0], ref[1], x.size(), x.stride(), x.storage_offset())
            act.saved.append(x)
            return ("a", len(act.saved) - 1)

        def unpack(p: tuple) -> torch.Tensor:
            if p[0] == "w":
                b = self.state.blocks[p[1]]
                if not b.resident:
                    raise ReplayError(f"{t.name}: backward of block {self.names[i]} needs the weights "
                                      f"of block {b.name}, which are not on the device")
                return b.dev[p[2]].as_strided(p[3], p[4], p[5])
            if act.where != "device":
                raise ReplayError(f"{t.name}: backward of block {self.names[i]} needs activations "
                                  "that are still swapped out to the host (no H2D.act brought them back)")
            return act.saved[p[1]]

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield

    def _copy_stream(self, t: Task) -> str:
        return "gpu0.compute" if t.stream == CPU_STREAM else t.stream

    def _task_blocks(self, t: Task, it: int, blk: str) -> list[int]:
        """Blocks a task works on: its named block, its sub-group, or the gradients it frees."""
        if blk in self.index_of:
            return [self.index_of[blk]]
        if (it, blk) in self.groups:
            return self.groups[(it, blk)]
        freed = [j for _, j in self._grads_freed(t)]
        if freed:
            return freed
        raise ReplayError(f"task {t.name}: cannot tell which blocks {blk!r} covers")

    def _grads_freed(self, t: Task) -> list[tuple[str, int]]:
        """(buffer, block) of every gradient buffer (``it{k}[.m{m}].grad.{block}``) the task frees."""
        out = []
        for buf in t.frees:
            m = NAME_RE.match(buf)
            if m and m.group(3) == "grad" and m.group(4) in self.index_of:
                out.append((buf, self.index_of[m.group(4)]))
        return out

    def _grad_buffer(self, t: Task, it: int, j: int) -> str:
        """The device gradient buffer of block j that task t consumes: the one it frees, else the
        block's live buffer of iteration ``it``."""
        for buf, b in self._grads_freed(t):
            if b == j:
                return buf
        cur = self.state.grad_of.get(j)
        if cur is None or cur[0] != it:
            raise ReplayError(f"{t.name}: block {self.names[j]} has no gradient on the device "
                              "(its backward has not run, or it was already sent)")
        return cur[1]


class _Aborted(Exception):
    """Another thread failed; stop waiting."""


class _Worker(threading.Thread):
    """One schedule stream run by a host thread: its tasks in issue order, each after its deps.

    On the CPU device every stream is one (the calibration measures each CPU "stream" as a thread
    with one intra-op thread, sharing the cores with the others: calibrate/runner.py
    ``default_threads``); next to a CUDA device only ``cpu.optim`` is.
    """

    def __init__(self, x: Executor, stream: str) -> None:
        super().__init__(name=f"replay-{stream}", daemon=True)
        self.x, self.stream = x, stream
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def run(self) -> None:
        x = self.x
        if x.dev.kind == "cpu":
            torch.set_num_threads(CPU_THREADS_PER_STREAM)  # not inherited by a new thread
        while (i := self.queue.get()) is not None:
            if x.failed.is_set():
                continue
            t = x.sched.tasks[i]
            try:
                for d in t.deps:
                    x._wait(d)
                if x.dev.kind == "cpu":
                    x._run(i)
                else:
                    x._run_host(i)
            except _Aborted:
                continue
            except BaseException as e:
                x._fail(e)
                continue
            x.done[t.name].set()


# -- handlers: one per operation -------------------------------------------------------------

def _fwd(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    w, tied = x._weights(t, i)
    kind = kind_of(blk)
    if kind == "embed":
        inp = None
    else:
        if (it, m) not in x.state.carry:
            raise ReplayError(f"{t.name}: no input (the previous block's forward has not run)")
        inp = x.state.carry.pop((it, m))
    step = x._step(it, m, i)
    if (it, m, i) in x.recompute:
        with torch.no_grad():
            y = x._out(blk, forward(x.spec, blk, w, inp, step, tied))
        x.state.acts[(it, m, i)] = Act(inp)
    else:
        if inp is not None:
            inp.requires_grad_()
        act = Act(inp)
        with x._saving(t, act, i):
            y = x._out(blk, forward(x.spec, blk, w, inp, step, tied))
        act.out = y
        x.state.acts[(it, m, i)] = act
    if kind == "head":
        x.state.losses[(it, m)] = y.detach()
    else:
        x.state.carry[(it, m)] = y.detach()


def _recompute(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    act = x.state.acts.get((it, m, i))
    if act is None:
        raise ReplayError(f"{t.name}: no checkpointed input of block {blk} (its forward did not run)")
    w, tied = x._weights(t, i)
    if act.x_in is not None:
        act.x_in.requires_grad_()
    act.saved = []
    with x._saving(t, act, i):
        act.out = x._out(blk, forward(x.spec, blk, w, act.x_in, x._step(it, m, i), tied))


def _bwd(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    act = x.state.acts.get((it, m, i))
    if act is None or act.out is None:
        raise ReplayError(f"{t.name}: block {blk} has no forward graph to differentiate "
                          "(forward or recompute missing)")
    w, tied = x._weights(t, i)
    kind = kind_of(blk)
    grad_out = None
    if kind != "head":
        grad_out = x.state.gcarry.pop((it, m), None)
        if grad_out is None:
            raise ReplayError(f"{t.name}: no output gradient (the next block's backward has not run)")
    keys = list(w)
    inputs = ([act.x_in] if act.x_in is not None else []) + [w[k] for k in keys]
    if tied is not None:
        inputs.append(tied["wte"])
    grads = list(torch.autograd.grad(act.out, inputs, grad_out))
    del x.state.acts[(it, m, i)]
    if act.x_in is not None:
        x.state.gcarry[(it, m)] = grads.pop(0)
    if tied is not None:
        x.state.tied_grad[x.index_of["embed"]] = grads.pop()
    g = dict(zip(keys, grads))
    if i in x.state.tied_grad:
        g["wte"] = g["wte"] + x.state.tied_grad.pop(i)
    if g:
        _keep_grads(x, t, it, m, i, g)


def _keep_grads(x: Executor, t: Task, it: int, m: int, i: int, g: dict) -> None:
    """A backward's weight gradients go into the gradient buffer the task allocates; without one
    they are added into the block's buffer of this iteration (PyTorch accumulates into an existing
    ``.grad``), or, when there is none, kept as a new one (a schedule that names no buffer)."""
    st = x.state
    buf = next((a.buf for a in t.allocs if a.cls is MemClass.GRADS), None)
    if buf is None:
        cur = st.grad_of.get(i)
        if cur is not None and cur[0] == it and cur[1] in st.dev_grads:
            with torch.no_grad():
                for k, v in st.dev_grads[cur[1]].items():
                    v.add_(g[k])
            return
        if m > 1:
            raise ReplayError(f"{t.name}: micro-step {m} allocates no gradient buffer for block "
                              f"{x.names[i]} and none of iteration {it} is left to accumulate into")
        buf = f"{t.name}.grad"
    st.dev_grads[buf] = g
    st.grad_of[i] = (it, buf)


def _swap_out(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    act = x.state.acts.get((it, m, x.index_of[blk]))
    if act is None or act.where != "device":
        raise ReplayError(f"{t.name}: no activations of block {blk} on the device to swap out")
    pinned = all(op.pinned for op in t.ops)
    host = []
    for s in act.saved:
        h = x.dev.host_empty(s, pinned)
        h.copy_(s, non_blocking=pinned)
        x.dev.keep_alive(s, x._copy_stream(t))
        host.append(h)
    act.saved, act.where = host, "host"


def _swap_in(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    act = x.state.acts.get((it, m, x.index_of[blk]))
    if act is None or act.where != "host":
        raise ReplayError(f"{t.name}: no activations of block {blk} on the host to swap in")
    back = [_to_device(x, s) for s in act.saved]
    for s in back:
        x.dev.keep_alive(s, "gpu0.compute")
    act.saved, act.where = back, "device"


def _to_device(x: Executor, h: torch.Tensor) -> torch.Tensor:
    return h.to(x.dev.dev, non_blocking=True) if x.dev.kind == "cuda" else h.clone()


def _grads_d2h(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Gradients to their host buffers; a staged host accumulation freed by this task is added
    on the device first (DeepSpeed: ``grad_accum.add_(dest_buffer)``, then the copy back)."""
    freed = x._grads_freed(t) or [(x._grad_buffer(t, it, j), j) for j in x._task_blocks(t, it, blk)]
    staged: dict[int, dict] = {}
    for buf in t.frees:
        staged.update(x.state.staged.pop(buf, {}))
    pinned = all(op.pinned for op in t.ops)
    for buf, j in freed:
        g = x.state.dev_grads.pop(buf, None)
        if g is None:
            raise ReplayError(f"{t.name}: block {x.names[j]} has no gradient on the device "
                              "(its backward has not run, or it was already sent)")
        acc = staged.pop(j, None)
        out = {}
        for k, v in g.items():
            if acc is not None:
                with torch.no_grad():
                    v.add_(acc[k])
            h = x.dev.host_empty(v, pinned)
            h.copy_(v, non_blocking=pinned)
            x.dev.keep_alive(v, x._copy_stream(t))
            out[k] = h
        x.state.host_grads[(it, j)] = out
    if staged:
        raise ReplayError(f"{t.name}: it frees the staged accumulation of "
                          f"{', '.join(x.names[j] for j in sorted(staged))} but sends no gradient of them")


def _grads_acc_h2d(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Micro-step m > 1: the host accumulation of the blocks whose gradients the staging buffer's
    freer sends, copied into that staging buffer on the device."""
    for a in t.allocs:
        if a.buf not in x.stage_blocks:
            continue
        staged = {}
        blocks, user = x.stage_blocks[a.buf]
        for j in blocks:
            h = x.state.host_grads.pop((it, j), None)
            if h is None:
                raise ReplayError(f"{t.name}: no accumulated gradient of block {x.names[j]} on the host "
                                  "(the previous micro-step's D2H is missing)")
            staged[j] = {k: _to_device(x, v) for k, v in h.items()}
            for v in staged[j].values():
                x.dev.keep_alive(v, user)
        x.state.staged[a.buf] = staged


def _adam_step(b, g: dict) -> None:
    """One Adam step of a block's fp32 master weights with gradients ``g`` (any precision)."""
    adam_step(b.master, b.opt, g)


def _adam_cpu(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    for i in x._task_blocks(t, it, blk):
        b = x.state.blocks[i]
        if b.master_pool != "cpu":
            raise ReplayError(f"{t.name}: the schedule places the master weights of {b.name} on the "
                              "device but runs their Adam on the CPU")
        g = x.state.host_grads.pop((it, i), None)
        if g is None:
            raise ReplayError(f"{t.name}: no gradient of block {b.name} from iteration {it} on the "
                              "host (a D2H is missing)")
        with x.block_lock[i]:   # a refresh of an earlier step that has not read the host copy keeps its own
            st = x.state
            for k in st.unsent.get(i, ()):
                if (k, i) not in st.w_snap and b.host_w is not None:
                    st.w_snap[(k, i)] = {n: h.clone() for n, h in b.host_w.items()}
            _adam_step(b, g)
            with torch.no_grad():
                if b.host_w is not None and b.host_w is not b.master:
                    for k, h in b.host_w.items():
                        h.copy_(b.master[k])
            if (it, i) in x.refreshed:
                st.unsent.setdefault(i, set()).add(it)


def _adam_gpu(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    for i in x._task_blocks(t, it, blk):
        b = x.state.blocks[i]
        if b.master_pool != "gpu0":
            raise ReplayError(f"{t.name}: the schedule places the master weights of {b.name} on the "
                              "host but runs their Adam on the device")
        g = x.state.dev_grads.pop(x._grad_buffer(t, it, i), None)
        if g is None:
            raise ReplayError(f"{t.name}: no gradient of block {b.name} on the device")
        _adam_step(b, g)
        with torch.no_grad():
            if b.dev_is_master:
                continue
            if b.resident:
                for k, v in b.dev.items():
                    v.copy_(b.master[k])
            elif b.host_w is not None:   # weights homed on the host: a D2H.w takes them home
                x.state.pending_w[i] = {k: m.to(x.dtype) for k, m in b.master.items()}
            else:
                raise ReplayError(f"{t.name}: weights of block {b.name} are neither on the device nor "
                                  "homed on the host")


def _weights_h2d(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Weights to the device: the owners named by the weight buffers the task allocates
    (``{task}.{owner}``, else the task's block), or the device-resident blocks of its sub-group."""
    targets: dict[int, str | None] = {}
    for a in t.allocs:
        if a.cls is MemClass.WEIGHTS and a.pool == "gpu0":
            suffix = a.buf[len(t.name) + 1:] if a.buf.startswith(t.name + ".") else blk
            if suffix not in x.index_of:
                raise ReplayError(f"{t.name}: cannot tell whose weights buffer {a.buf} holds")
            targets[x.index_of[suffix]] = a.buf
    if not targets:
        targets = {j: None for j in x._task_blocks(t, it, blk)
                   if blk in x.index_of or x.state.blocks[j].home_dev}
    pinned = all(op.pinned for op in t.ops)
    if t.name in x.refresh:
        _refresh(x, t, it, pinned)
        return
    for j, buf in targets.items():
        b = x.state.blocks[j]
        if b.host_w is None:
            raise ReplayError(f"{t.name}: block {b.name} has no host copy of its weights to send")
        with torch.no_grad():
            if b.resident:
                for k, v in b.dev.items():
                    v.copy_(b.host_w[k], non_blocking=pinned)
            else:
                for k, v in b.dev.items():
                    fresh = torch.empty(b.shapes[k], dtype=x.dtype, device=x.dev.dev)
                    fresh.copy_(b.host_w[k], non_blocking=pinned)
                    x.dev.keep_alive(fresh, "gpu0.compute")
                    v.data = fresh
                b.resident = True
        if buf is not None:
            x.bound[buf] = b.release


def _refresh(x: Executor, t: Task, it: int, pinned: bool) -> None:
    """The weights of iteration ``it``'s CPU step to the device: from the host copy, or from its
    snapshot when a later step already ran; into the live leaves, or kept aside when a compute
    task needing the previous weights may still run (see :meth:`Executor._refresh_plan`)."""
    st = x.state
    # on CUDA a copy from a host copy that a later step may rewrite must finish under the lock
    blocking = x.dev.kind == "cuda" and t.name in x.host_hazard
    for j, aside in x.refresh[t.name].items():
        b = st.blocks[j]
        with x.block_lock[j], torch.no_grad():
            src = st.w_snap.pop((it, j), None)
            if it not in st.unsent.get(j, ()):
                raise ReplayError(f"{t.name}: no updated weights of block {b.name} from the step of "
                                  f"iteration {it} on the host (its ADAM.cpu has not run)")
            st.unsent[j].discard(it)
            src = src if src is not None else b.host_w
            if not aside:   # older refreshes kept aside: no compute task can need them any more
                with x.lock:
                    for key in [key for key in st.w_staged if key[1] == j and key[0] < it]:
                        del st.w_staged[key]
            nb = pinned and not blocking
            if aside or not b.resident:
                fresh = {}
                for k, v in src.items():
                    d = torch.empty(b.shapes[k], dtype=x.dtype, device=x.dev.dev)
                    d.copy_(v, non_blocking=nb)
                    x.dev.keep_alive(d, "gpu0.compute")
                    fresh[k] = d
                if aside:
                    with x.lock:
                        st.w_staged[(it, j)] = fresh
                else:
                    for k, v in b.dev.items():
                        v.data = fresh[k]
                    b.resident = True
            else:
                for k, v in b.dev.items():
                    v.copy_(src[k], non_blocking=nb)


def _weights_d2h(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Device-updated weights to their host home (before an eviction, or after a device step)."""
    pinned = all(op.pinned for op in t.ops)
    for j in x._task_blocks(t, it, blk):
        b = x.state.blocks[j]
        if b.host_w is None:
            continue
        src = x.state.pending_w.pop(j, None)
        if src is None:
            if not b.resident:
                raise ReplayError(f"{t.name}: weights of block {b.name} are not on the device to send home")
            src = b.dev
        with torch.no_grad():
            for k, h in b.host_w.items():
                h.copy_(src[k], non_blocking=pinned)
                x.dev.keep_alive(src[k], x._copy_stream(t))


def _join(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """A join (``it2.STEP.grads``, ``it2.STEP.cast``): no work, it only waits for its dependencies
    (zero-offload's clip and cast passes run as timed no-ops: see the module docstring)."""


def handler(what: str) -> Callable[[Executor, Task, int, int, str], None] | None:
    """The handler of an operation; numbered variants (``H2D.wf2``) share their base's."""
    return HANDLERS.get(what) or HANDLERS.get(what.rstrip("0123456789"))


HANDLERS: dict[str, Callable[[Executor, Task, int, int, str], None]] = {
    "F": _fwd, "R": _recompute, "B": _bwd, "D2H.act": _swap_out, "H2D.act": _swap_in,
    "D2H.g": _grads_d2h, "D2H.g.ga": _grads_acc_h2d, "ADAM.cpu": _adam_cpu, "ADAM.gpu": _adam_gpu, "H2D.w": _weights_h2d,
    "H2D.wf": _weights_h2d, "H2D.wb": _weights_h2d, "D2H.w": _weights_d2h, "STEP": _join,
}
