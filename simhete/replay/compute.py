"""The replay's compute handlers: forward, recompute and backward of a block on the device, and
the swapping of its saved activations (``Action.FORWARD``, ``RECOMPUTE``, ``BACKWARD``,
``ACT_D2H``, ``ACT_H2D``; the table is :data:`simhete.replay.handlers.HANDLERS`).

A forward with a recompute of its block in the schedule runs without a graph and keeps only its
input (checkpoint); otherwise it records the tensors autograd saves through saved-tensor hooks
(:func:`saving`: weights as references to their leaf, so a backward whose weights are not on the
device fails instead of reading stale memory). A backward computes the gradients of the block
input and weights (``torch.autograd.grad``) into the gradient buffer it allocates; one that
allocates none adds them into the block's buffer of the iteration (accumulation on the device).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from simhete.opkinds import MemClass
from simhete.replay.model import forward, kind_of
from simhete.replay.state import Act, ReplayError
from simhete.schedule import Task

if TYPE_CHECKING:
    from simhete.replay.executor import Executor


def forward_task(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    w, tied = x.weights_of(t, i)
    kind = kind_of(blk)
    if kind == "embed":
        inp = None
    else:
        if (it, m) not in x.state.carry:
            raise ReplayError(f"{t.name}: no input (the previous block's forward has not run)")
        inp = x.state.carry.pop((it, m))
    step = x.step_of(it, m, i)
    if (it, m, i) in x.recompute:
        with torch.no_grad():
            y = x.output(blk, forward(x.spec, blk, w, inp, step, tied))
        x.state.acts[(it, m, i)] = Act(inp)
    else:
        if inp is not None:
            inp.requires_grad_()
        act = Act(inp)
        with saving(x, t, act, i):
            y = x.output(blk, forward(x.spec, blk, w, inp, step, tied))
        act.out = y
        x.state.acts[(it, m, i)] = act
    if kind == "head":
        x.state.losses[(it, m)] = y.detach()
    else:
        x.state.carry[(it, m)] = y.detach()


def recompute_task(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    act = x.state.acts.get((it, m, i))
    if act is None:
        raise ReplayError(f"{t.name}: no checkpointed input of block {blk} (its forward did not run)")
    w, tied = x.weights_of(t, i)
    if act.x_in is not None:
        act.x_in.requires_grad_()
    act.saved = []
    with saving(x, t, act, i):
        act.out = x.output(blk, forward(x.spec, blk, w, act.x_in, x.step_of(it, m, i), tied))


def backward_task(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    i = x.index_of[blk]
    act = x.state.acts.get((it, m, i))
    if act is None or act.out is None:
        raise ReplayError(f"{t.name}: block {blk} has no forward graph to differentiate "
                          "(forward or recompute missing)")
    w, tied = x.weights_of(t, i)
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


def swap_out(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    act = x.state.acts.get((it, m, x.index_of[blk]))
    if act is None or act.where != "device":
        raise ReplayError(f"{t.name}: no activations of block {blk} on the device to swap out")
    pinned = all(op.pinned for op in t.ops)
    host = []
    for s in act.saved:
        h = x.dev.host_empty(s, pinned)
        h.copy_(s, non_blocking=pinned)
        x.dev.keep_alive(s, x.copy_stream(t))
        host.append(h)
    act.saved, act.where = host, "host"


def swap_in(x: Executor, t: Task, it: int, m: int, blk: str) -> None:
    act = x.state.acts.get((it, m, x.index_of[blk]))
    if act is None or act.where != "host":
        raise ReplayError(f"{t.name}: no activations of block {blk} on the host to swap in")
    back = [to_device(x, s) for s in act.saved]
    for s in back:
        x.dev.keep_alive(s, "gpu0.compute")
    act.saved, act.where = back, "device"


def to_device(x: Executor, h: torch.Tensor) -> torch.Tensor:
    return h.to(x.dev.dev, non_blocking=True) if x.dev.kind == "cuda" else h.clone()


@contextmanager
def saving(x: Executor, t: Task, act: Act, i: int) -> Iterator[None]:
    """Record what autograd saves: weights as references to their leaf, the rest into ``act``."""
    leaves: dict[int, tuple[int, str]] = {}
    for j in {i, x.index_of.get("embed", -1)}:
        b = x.state.blocks.get(j)
        if b is not None and b.resident:
            for k, v in b.dev.items():
                leaves[v.untyped_storage().data_ptr()] = (j, k)

    def pack(y: torch.Tensor) -> object:
        ref = leaves.get(y.untyped_storage().data_ptr())
        if ref is not None:
            return ("w", ref[0], ref[1], y.size(), y.stride(), y.storage_offset())
        act.saved.append(y)
        return ("a", len(act.saved) - 1)

    def unpack(p: tuple) -> torch.Tensor:
        if p[0] == "w":
            b = x.state.blocks[p[1]]
            if not b.resident:
                raise ReplayError(f"{t.name}: backward of block {x.names[i]} needs the weights "
                                  f"of block {b.name}, which are not on the device")
            return b.dev[p[2]].as_strided(p[3], p[4], p[5])
        if act.where != "device":
            raise ReplayError(f"{t.name}: backward of block {x.names[i]} needs activations "
                              "that are still swapped out to the host (no H2D.act brought them back)")
        return act.saved[p[1]]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
