"""What a task's handler works with: the state of one replay, built from the schedule and the
workload before anything runs (model states placed as ``Schedule.initial`` says, the tables
:mod:`simhete.replay.plan` reads off the schedule, each task's handler), and what the handlers ask
of it (a task's blocks, training step, device weights and gradient buffers). The tasks are run by
:class:`simhete.replay.executor.Executor`.

Delayed parameter update (ZeRO-Offload's DPU: iteration k+1 computes with the weights of step k−1,
and the step of iteration k overlaps it): the schedule does not order iteration k+1's D2H of
gradients after iteration k's step, nor iteration k's weight refresh after iteration k+1's compute
or iteration k+1's step. So host gradients are kept per (iteration, block), each step reads its
own; a refresh sends its own step's weights (a later step snapshots them first if the refresh has
not read them yet); and a compute task uses the newest refresh that is among its dependencies
(transitively): a refresh that could land while a compute task that does not depend on it still
needs the previous weights is kept aside on the device and swapped in by the first compute task
that depends on it (:func:`simhete.replay.plan.refresh_plan`). Without DPU every refresh is ordered
before the next iteration, and all of this reduces to the plain in-place copies.

Gradient accumulation (k micro-steps): micro-step m trains on the m-th micro-batch of the
iteration's data, its dropout masks are seeded with m, its backward starts from the loss divided
by k, and the iteration's loss is the mean over its micro-steps (simhete.replay.model); where the
gradients are added follows the schedule's gradient and staging buffers (above).
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from simhete.opkinds import Action, MemClass, TaskCat
from simhete.replay import plan
from simhete.replay.device import CPU_STREAM, Device
from simhete.replay.handlers import handler_of
from simhete.replay.model import TORCH_DTYPES, Step, adam, batch_of, data, init_master, kind_of, scale_loss
from simhete.replay.state import BlockState, ReplayError, State
from simhete.schedule import Schedule, Task

STREAMS = ("gpu0.compute", "gpu0.h2d", "gpu0.d2h", CPU_STREAM)


class TaskContext:
    """The state of one replay of one Schedule of one workload on one device, and what its
    handlers ask of it."""

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
        self.handlers = [handler_of(t) for t in schedule.tasks]    # refuses unknown actions
        self.recompute = {(t.at.it, t.at.m, t.block) for t in schedule.tasks if t.action is Action.RECOMPUTE}
        self.grad_block = plan.grad_buffers(schedule)
        self.state_owner = plan.state_owners(workload)
        self.micro_steps = plan.micro_steps(schedule)
        self.bound: dict[str, Callable[[], None]] = {}
        self.holders: dict[int, set[str]] = {}    # block -> the buffers holding its device weights
        self.hold_lock = threading.Lock()
        tokens = data(self.spec, schedule.iterations, workload.micro_batch, workload.seq_len, seed,
                      self.micro_steps)
        self.tokens = tokens.to(device.dev)
        self.stage_blocks = plan.stage_blocks(self)
        self.state = State({b.index: self._block_state(b, lr) for b in workload.blocks if b.params})
        self.groups = plan.groups(self)
        self.lock = threading.Lock()   # the kept-aside refreshes (state.w_staged), all blocks
        # host weight versions of one block: its ADAM_CPU vs its WEIGHTS_H2D on another stream (a lock
        # per block: the schedule runs one block's refresh beside another block's step)
        self.block_lock = {j: threading.Lock() for j in self.state.blocks}
        self.refresh, self.refreshed, self.need_w, self.host_hazard = plan.refresh_plan(self)
        self.weight_targets = plan.weight_targets(self)
        for a in schedule.initial:   # a schedule may free an initially resident weight buffer
            j = self.state_owner.get(a.buf)
            if a.cls is MemClass.WEIGHTS and a.pool == "gpu0" and j in self.state.blocks:
                self.hold_weights(j, a.buf)
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
            if self.state_owner.get(a.buf) == b.index:
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

    def _pinned_h2d(self) -> bool:
        """Host weight buffers are pinned when the schedule's H2D copies are."""
        return all(op.pinned for t in self.sched.tasks if t.cat is TaskCat.H2D for op in t.ops)

    def hold_weights(self, j: int, buf: str) -> None:
        """Block ``j``'s device weights are (also) held by buffer ``buf``: they are released when the
        last buffer holding them is freed. A block's weights can be held by two buffers at once — a
        fetch for the backward (``it1.w.b.b0``) can run before the copy home that frees the
        forward's (``weights.g0.b0``) on another stream — and freeing the older must not drop the
        weights the newer brought."""
        with self.hold_lock:
            self.holders.setdefault(j, set()).add(buf)
        self.bound[buf] = lambda: self._drop_weights(j, buf)

    def _drop_weights(self, j: int, buf: str) -> None:
        with self.hold_lock:
            held = self.holders.get(j, set())
            held.discard(buf)
            if not held:
                self.state.blocks[j].release()

    # -- helpers ----------------------------------------------------------------------------

    def step_of(self, it: int, m: int, i: int) -> Step:
        inp, tgt = batch_of(self.tokens, it, m)
        return Step(it, i, self.seed, inp, tgt, m)

    def output(self, blk: str, y: torch.Tensor) -> torch.Tensor:
        """A block's output as backward differentiates it: the head's loss scaled for accumulation."""
        return scale_loss(y, self.micro_steps) if kind_of(blk) == "head" else y

    def weights_of(self, t: Task, i: int) -> tuple[dict, dict | None]:
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

    def copy_stream(self, t: Task) -> str:
        """The device stream a copy made by ``t`` runs on (a CPU task's: the compute stream)."""
        return "gpu0.compute" if t.stream == CPU_STREAM else t.stream

    def task_blocks(self, t: Task, it: int, blk: str) -> list[int]:
        """Blocks a task works on: its named block, its sub-group, or the gradients it frees."""
        if blk in self.index_of:
            return [self.index_of[blk]]
        if (it, blk) in self.groups:
            return self.groups[(it, blk)]
        freed = [j for _, j in self.grads_freed(t)]
        if freed:
            return freed
        raise ReplayError(f"task {t.name}: cannot tell which blocks {blk!r} covers")

    def grads_freed(self, t: Task) -> list[tuple[str, int]]:
        """(buffer, block) of every gradient buffer (one a backward allocated) the task frees."""
        g = self.grad_block
        return [(buf, g[buf]) for buf in t.frees if buf in g]

    def grad_buffer(self, t: Task, it: int, j: int) -> str:
        """The device gradient buffer of block j that task t consumes: the one it frees, else the
        block's live buffer of iteration ``it``."""
        for buf, b in self.grads_freed(t):
            if b == j:
                return buf
        cur = self.state.grad_of.get(j)
        if cur is None or cur[0] != it:
            raise ReplayError(f"{t.name}: block {self.names[j]} has no gradient on the device "
                              "(its backward has not run, or it was already sent)")
        return cur[1]
