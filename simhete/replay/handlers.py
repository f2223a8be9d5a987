"""The replay's handlers, one per :class:`~simhete.opkinds.Action`: what a task of each action
does on the real blocks of the workload's model (:data:`HANDLERS`; the compute ones are in
:mod:`simhete.replay.compute`). A handler gets the executor, the task and the task's coordinates
(``Task.at``: iteration, micro-step, target):

=======================  ===========================================================================
``FORWARD``              forward of the block; with a ``RECOMPUTE`` of it in the schedule it runs
                         without a graph and keeps only its input (checkpoint), otherwise it
                         records the saved tensors through saved-tensor hooks
``RECOMPUTE``            the forward again, from the checkpointed input, with its graph
``BACKWARD``             gradients of the block input and weights (``torch.autograd.grad``) into
                         the gradient buffer the task allocates; a backward that allocates none
                         adds them into the block's buffer of the iteration (accumulation)
``ACT_D2H``              swap out: every saved activation copied to a host buffer, device copy dropped
``ACT_H2D``              swap in: the saved activations copied back to the device
``GRADS_D2H``            gradients of the blocks whose gradient buffers the task frees (the buffers
                         backward tasks allocated), to the host; when it also frees a staging
                         buffer (micro-step m > 1), the host accumulation staged there is added to
                         them first and the sum goes to the host
``GRADS_ACC_H2D``        the host accumulation of those blocks' gradients copied into the staging
                         buffer the task allocates (DeepSpeed's accumulate-through-the-GPU, see
                         :meth:`simhete.policy.dataparallel.DataParallel.accumulate`)
``ADAM_CPU``             torch's Adam on the block's (or sub-group's) fp32 master weights on the CPU
                         with the host gradients of its own iteration, then its working-precision
                         host copy refreshed for the ``WEIGHTS_H2D`` of that iteration
``HOST_PASS``,           a join before or inside a CPU step (``it2.STEP.grads``, ``it2.STEP.cast``),
``STEP_JOIN``,           or after a backward: timed, no work. zero-offload prices DeepSpeed's clip
``BACKWARD_JOIN``        pass over the fp32 gradients and its cast of the fp32 partition to 16 bits
                         there; the replay does not clip (losses stay plain training's) and its
                         ``ADAM_CPU`` writes the host's 16-bit copy
``ADAM_GPU``             torch's Adam on the device, then the working weights refreshed from the master
``WEIGHTS_H2D``,         the block's working weights copied from the host into its device leaves
``WEIGHTS_H2D_FWD``,     (fresh storage when they were released); a weight buffer the task
``WEIGHTS_H2D_BWD``      allocates is bound to them, and the task that frees that buffer releases
                         them. A ``WEIGHTS_H2D`` after an ``ADAM_CPU`` (a refresh) sends the
                         weights of that iteration's step
``WEIGHTS_D2H``,         device-updated weights to their host home (before an eviction, after a
``WEIGHTS_WRITEBACK``    device step)
=======================  ===========================================================================

Any other action (collectives, chunk moves: multi-GPU and chunked schedules) is refused with a
one-line :class:`~simhete.replay.state.ReplayError` when the executor is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from simhete.opkinds import Action
from simhete.replay.compute import backward_task, forward_task, recompute_task, swap_in, swap_out, to_device
from simhete.replay.model import adam_step
from simhete.replay.state import ReplayError
from simhete.schedule import Task

if TYPE_CHECKING:
    from simhete.replay.executor import Executor

Handler = Callable[["Executor", Task, int, int, str], None]


def grads_d2h(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Gradients to their host buffers; a staged host accumulation freed by this task is added
    on the device first (DeepSpeed: ``grad_accum.add_(dest_buffer)``, then the copy back)."""
    freed = x.grads_freed(t) or [(x.grad_buffer(t, it, j), j) for j in x.task_blocks(t, it, blk)]
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
            x.dev.keep_alive(v, x.copy_stream(t))
            out[k] = h
        x.state.host_grads[(it, j)] = out
    if staged:
        raise ReplayError(f"{t.name}: it frees the staged accumulation of "
                          f"{', '.join(x.names[j] for j in sorted(staged))} but sends no gradient of them")


def grads_acc_h2d(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
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
            staged[j] = {k: to_device(x, v) for k, v in h.items()}
            for v in staged[j].values():
                x.dev.keep_alive(v, user)
        x.state.staged[a.buf] = staged


def _adam_step(b, g: dict) -> None:
    """One Adam step of a block's fp32 master weights with gradients ``g`` (any precision)."""
    adam_step(b.master, b.opt, g)


def _master_on(x: Executor, t: Task, i: int, pool: str):
    """Block ``i``'s state, whose master weights the schedule must place in ``pool`` (where the
    task runs their Adam step)."""
    b = x.state.blocks[i]
    if b.master_pool != pool:
        there, here = ("device", "CPU") if pool == "cpu" else ("host", "device")
        raise ReplayError(f"{t.name}: the schedule places the master weights of {b.name} on the "
                          f"{there} but runs their Adam on the {here}")
    return b


def adam_cpu(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    for i in x.task_blocks(t, it, blk):
        b = _master_on(x, t, i, "cpu")
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


def adam_gpu(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    for i in x.task_blocks(t, it, blk):
        b = _master_on(x, t, i, "gpu0")
        g = x.state.dev_grads.pop(x.grad_buffer(t, it, i), None)
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


def weights_h2d(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Weights to the device: the owners of the weight buffers the task allocates
    (:func:`simhete.replay.plan.weight_targets`), or the device-resident blocks of its sub-group."""
    targets: dict[int, str | None] = dict(x.weight_targets.get(t.name, {}))
    if not targets:
        targets = {j: None for j in x.task_blocks(t, it, blk)
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
            x.hold_weights(j, buf)


def _refresh(x: Executor, t: Task, it: int, pinned: bool) -> None:
    """The weights of iteration ``it``'s CPU step to the device: from the host copy, or from its
    snapshot when a later step already ran; into the live leaves, or kept aside when a compute
    task needing the previous weights may still run (see :func:`simhete.replay.plan.refresh_plan`)."""
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


def weights_d2h(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """Device-updated weights to their host home (before an eviction, or after a device step)."""
    pinned = all(op.pinned for op in t.ops)
    for j in x.task_blocks(t, it, blk):
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
                x.dev.keep_alive(src[k], x.copy_stream(t))


def join(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    """A join (``it2.STEP.grads``, ``it2.STEP.cast``): no work, it only waits for its dependencies
    (zero-offload's clip and cast passes run as timed no-ops: see the module docstring)."""


HANDLERS: dict[Action, Handler] = {
    Action.FORWARD: forward_task, Action.RECOMPUTE: recompute_task, Action.BACKWARD: backward_task,
    Action.ACT_D2H: swap_out, Action.ACT_H2D: swap_in,
    Action.GRADS_D2H: grads_d2h, Action.GRADS_ACC_H2D: grads_acc_h2d,
    Action.ADAM_CPU: adam_cpu, Action.ADAM_GPU: adam_gpu,
    Action.WEIGHTS_H2D: weights_h2d, Action.WEIGHTS_H2D_FWD: weights_h2d, Action.WEIGHTS_H2D_BWD: weights_h2d,
    Action.WEIGHTS_D2H: weights_d2h, Action.WEIGHTS_WRITEBACK: weights_d2h,
    Action.HOST_PASS: join, Action.STEP_JOIN: join, Action.BACKWARD_JOIN: join,
}


def handler_of(t: Task) -> Handler:
    """The handler of a task's action; a one-line ReplayError for a task without one."""
    if t.action is None:
        raise ReplayError(f"task {t.name}: no action (the replay runs schedules built by simhete.policy, "
                          "whose tasks carry one)")
    h = HANDLERS.get(t.action)
    if h is None:
        raise ReplayError(f"task {t.name}: no replay for action {t.action.name} ({t.action.what()}); known: "
                          + ", ".join(sorted(a.name for a in HANDLERS)))
    return h
