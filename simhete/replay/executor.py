"""Execute a simulated Schedule for real with torch and return the measured Timeline.

Every task is dispatched by its action (``Task.action``, :class:`simhete.opkinds.Action`) to its
handler (:mod:`simhete.replay.handlers`, which documents each), with its coordinates
(``Task.at``: iteration, micro-step m of a gradient-accumulating iteration, target block or
sub-group), and runs on the real blocks of the workload's model. What the handlers need to know
about the schedule as a whole is read off it before running (:mod:`simhete.replay.plan`).
The replay's state and what the handlers ask of it are in :mod:`simhete.replay.context`.

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

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from simhete.engine.timeline import Record, Timeline
from simhete.replay.context import STREAMS, TaskContext
from simhete.replay.device import CPU_STREAM
from simhete.replay.model import iteration_loss
from simhete.replay.plan import issue_order
from simhete.schedule import Task

__all__ = ["CPU_THREADS_PER_STREAM", "Executor", "Replayed", "STREAMS", "issue_order"]

CPU_THREADS_PER_STREAM = 1


@dataclass(frozen=True)
class Replayed:
    timeline: Timeline
    losses: list[float]          # per iteration, in order
    device: str
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU device: per task, the CPU seconds its thread ran (``time.thread_time``); its wall time
    minus this is time the thread waited for a core. Empty on CUDA."""


class Executor(TaskContext):
    """Runs one Schedule of one workload on one device. Build, then :meth:`run` once."""

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
        it, blk, m = t.at[:3]
        with self.dev.stream(t.stream):
            self.dev.wait(list(t.deps))
            mark = self.dev.begin(t.name)
            self.handlers[i](self, t, it, m, blk)
            self.dev.end(t.name, mark)
        self._after(t)

    def _run_host(self, i: int) -> None:
        """A CPU task next to a CUDA device: wait for the device work it needs, stamp with the host clock."""
        t = self.sched.tasks[i]
        it, blk, m = t.at[:3]
        self.dev.wait_host(list(t.deps))  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        self.handlers[i](self, t, it, m, blk)
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
        for t in self.sched.tasks:
            s, e = times[t.name]
            recs.append(Record(t.name, t.stream, t.cat, t.it or t.at.it, t.block, s, e))
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
