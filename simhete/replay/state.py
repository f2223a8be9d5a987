"""What the replay holds between tasks: per-block weights and optimizer; gradients per device
buffer and per host buffer; per-(iteration, micro-step, block) activations; and the byte
accounting of all of it per memory pool.

Weights on the device are persistent leaf tensors, one per parameter of a block, whose storage
comes and goes: a fetch (``H2D.w``) gives a released leaf fresh storage, a release (the schedule
freeing the weight buffer) points it at an empty tensor, as ZeRO-3 does with ``param.data``.
Autograd never keeps weights alive by itself: saved weights are packed as references to the leaf
and looked up again in backward (see :class:`Act`), so a backward whose weights are not on the
device fails instead of silently reading stale memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from simhete.errors import SimheteError
from simhete.opkinds import MemClass
from simhete.replay.model import Weights


class ReplayError(SimheteError):
    """The schedule asked the replay for something that is not where it should be."""


@dataclass
class BlockState:
    """One block's model states. ``dev`` leaves are resident when ``resident`` is true."""

    name: str
    index: int
    master: Weights                  # fp32 master weights (the optimizer's parameters)
    master_pool: str                 # "gpu0" or "cpu": where master and Adam m, v live
    opt: torch.optim.Adam
    dev: Weights                     # working-precision leaves used by compute
    shapes: dict[str, torch.Size]
    resident: bool
    host_w: Weights | None = None    # working-precision copy on the host that H2D.w reads
    dev_is_master: bool = False      # fp32 with master on the device: one set of tensors
    home_dev: bool = True            # resident on the device at the start (Schedule.initial)

    def release(self) -> None:
        empty = {k: torch.empty(0, dtype=v.dtype, device=v.device) for k, v in self.dev.items()}
        for k, v in self.dev.items():
            v.data = empty[k]
        self.resident = False


@dataclass
class Act:
    """Activations of one block in one micro-step of one iteration.

    ``saved``: the tensors autograd saved in forward (through saved-tensor hooks), on the device
    (``where == "device"``) or swapped to the host. ``x_in``: the block input (a leaf, so backward
    yields its gradient); ``out``: the forward output with its graph (``None`` after a
    no-grad checkpointed forward until the recompute runs).
    """

    x_in: torch.Tensor | None
    out: torch.Tensor | None = None
    saved: list[torch.Tensor] = field(default_factory=list)
    where: str = "device"


Step = tuple[int, int]   # (iteration, micro-step): one forward and backward of the model


class State:
    """Keys: ``Step`` = (iteration, micro-step); block indices; schedule buffer names.

    Device gradients live in the buffer the schedule allocates for them (the ``…grad.{block}``
    alloc of a backward task), keyed by that name; a backward that allocates none adds into the
    block's live buffer of the same iteration (gradient accumulation on the device). Host
    gradients are keyed by (iteration, block) (the fp32 gradient or 16-bit accumulation buffer a
    D2H of that iteration writes and the CPU optimizer or the next micro-step's accumulation of the
    same iteration reads): with a delayed parameter update iteration k+1's D2H may land before
    iteration k's step has read its gradient, and each must still read its own. ``staged``: host
    accumulations brought back to the device to be added to a micro-step's gradients, keyed by
    the staging buffer the schedule allocates for them.

    Weight refreshes (``ADAM.cpu`` of iteration k, then ``H2D.w`` of iteration k) are versioned by
    k: ``unsent[block]`` holds the steps whose refresh has not read the host copy yet; a later step
    of the block first snapshots that copy into ``w_snap[(k, block)]`` (copy on write), so the
    refresh of step k sends step k's weights whatever ran in between. A refresh that the schedule
    does not order after every compute task still needing the previous weights lands in
    ``w_staged[(k, block)]`` on the device, and the first compute task that depends on it swaps it
    into the block's leaves (see ``simhete.replay.plan.refresh_plan``).
    """

    def __init__(self, blocks: dict[int, BlockState]) -> None:
        self.blocks = blocks
        self.acts: dict[tuple[int, int, int], Act] = {}   # (it, m, block)
        self.carry: dict[Step, torch.Tensor] = {}       # next forward's input
        self.gcarry: dict[Step, torch.Tensor] = {}      # next backward's output grad
        self.dev_grads: dict[str, Weights] = {}         # gradient buffer name -> gradients
        self.grad_of: dict[int, tuple[int, str]] = {}   # block -> (iteration, its latest buffer)
        self.host_grads: dict[tuple[int, int], Weights] = {}   # (iteration, block) -> gradients
        self.unsent: dict[int, set[int]] = {}            # block -> steps whose H2D.w has not read
        self.w_snap: dict[tuple[int, int], Weights] = {}   # (step, block) -> host weights of that step
        self.w_staged: dict[tuple[int, int], Weights] = {}  # (step, block) -> device weights, not live
        self.staged: dict[str, dict[int, Weights]] = {}  # staging buffer -> block -> gradients
        self.tied_grad: dict[int, torch.Tensor] = {}    # embed's weight grad from the tied head
        self.losses: dict[Step, torch.Tensor] = {}      # the scaled loss the backward starts from
        self.pending_w: dict[int, Weights] = {}         # device-updated weights awaiting D2H.w
        # (pool, class, storage pointer, bytes) of each block's master weights, Adam states and
        # host weights: set up once and updated in place, so listed once per (Adam state count)
        self._static: dict[int, tuple[int, list[tuple[str, str, int, int]]]] = {}

    def pool_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes per pool and MemClass of every tensor the replay holds (storages counted once).

        Sampled after every task, on the stream's own thread (on a CPU device, between two of its
        tasks) while the other streams' threads go on adding and removing entries: every dict is
        read through a snapshot of its values (``list(d.values())`` copies under the GIL; iterating
        the live view raised "dictionary changed size during iteration" in a CI run under load,
        2026-11-22). The per-block states that only change in place are listed once, not walked
        tensor by tensor each time (0.35 ms a sample for the small GPT, 2026-11-22)."""
        seen: set[int] = set()
        out: dict[str, dict[str, int]] = {"gpu0": {}, "cpu": {}}
        for b in list(self.blocks.values()):
            for pool, cls, ptr, n in self._static_storages(b):
                if ptr == 0 or ptr in seen:
                    continue
                seen.add(ptr)
                out[pool][cls] = out[pool].get(cls, 0) + n
        for pool, cls, t in self._tensors():
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr == 0 or ptr in seen:
                continue
            seen.add(ptr)
            out[pool][cls] = out[pool].get(cls, 0) + st.nbytes()
        return out

    def _static_storages(self, b: BlockState) -> list[tuple[str, str, int, int]]:
        """A block's master weights, Adam states and host weights: tensors made once and then
        updated in place (Adam's states appear at its first step, hence the count in the key)."""
        n = len(b.opt.state)
        hit = self._static.get(b.index)
        if hit is not None and hit[0] == n:
            return hit[1]
        W, M, O = MemClass.WEIGHTS.value, MemClass.MASTER.value, MemClass.OPTIM.value
        items: list[tuple[str, str, torch.Tensor]] = []
        if not b.dev_is_master:
            items += [(b.master_pool, M, t) for t in b.master.values()]
        for st in list(b.opt.state.values()):
            items += [(b.master_pool, O, st[k]) for k in ("exp_avg", "exp_avg_sq") if k in st]
        if b.host_w is not None and b.host_w is not b.master:
            items += [("cpu", W, t) for t in b.host_w.values()]
        out = [(pool, cls, t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
               for pool, cls, t in items]
        self._static[b.index] = (n, out)
        return out

    def _tensors(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        """Every tensor besides the per-block states of :meth:`_static_storages`."""
        W = MemClass.WEIGHTS.value
        G, G32, A = MemClass.GRADS.value, MemClass.GRADS32.value, MemClass.ACTIVATIONS.value
        for b in list(self.blocks.values()):
            if b.resident:
                for t in list(b.dev.values()):
                    yield "gpu0", W, t
        for g in list(self.dev_grads.values()):
            for t in list(g.values()):
                yield "gpu0", G, t
        for st in list(self.staged.values()):
            for g in list(st.values()):
                for t in list(g.values()):
                    yield "gpu0", MemClass.BUFFERS.value, t
        for t in list(self.tied_grad.values()):
            yield "gpu0", G, t
        for w in list(self.pending_w.values()):
            for t in list(w.values()):
                yield "gpu0", W, t
        for g in list(self.host_grads.values()):
            for t in list(g.values()):
                yield "cpu", G32, t
        for w in list(self.w_snap.values()):
            for t in list(w.values()):
                yield "cpu", W, t
        for w in list(self.w_staged.values()):
            for t in list(w.values()):
                yield "gpu0", W, t
        for a in list(self.acts.values()):
            for t in (a.x_in, a.out):
                if t is not None:
                    yield "gpu0", A, t
            for t in a.saved:
                yield ("gpu0" if a.where == "device" else "cpu"), A, t
        for d in (self.carry, self.gcarry):
            for t in list(d.values()):
                yield "gpu0", A, t
