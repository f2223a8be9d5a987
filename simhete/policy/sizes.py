"""The size codes of the policies, and a workload's size table.

A policy marks the cells of its schedule that depend on the micro-batch and sequence length
(``Builder.add(..., sized=(block position, ops code, alloc codes))``); each mark names one of the
codes below, which say how the cell's value follows from the block (a workload
:class:`~simhete.workload.ops.BlockWork`). :func:`size_table` is the workload's table of every
code's value per block, which binds a :class:`~simhete.schedule.structure.Structure`'s references
(simhete/schedule/structure.py).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from simhete.errors import SimheteError
from simhete.opkinds import OpKind
from simhete.policy.base import shared_ops
from simhete.schedule.model import Palette

# How an ops cell follows from its block.
OPS_CODES: dict[str, Callable[[Any], tuple]] = {
    "fwd": lambda b: b.fwd_ops,
    "bwd": lambda b: b.bwd_ops,
    "rec": lambda b: b.recompute_ops,
    "act.d2h": lambda b: shared_ops(OpKind.D2H, b.act_bytes, True),
    "act.h2d": lambda b: shared_ops(OpKind.H2D, b.act_bytes, True),
    "act.d2h.pageable": lambda b: shared_ops(OpKind.D2H, b.act_bytes, False),
    "act.h2d.pageable": lambda b: shared_ops(OpKind.H2D, b.act_bytes, False),
}
# How an allocation's bytes follow from its block.
BYTES_CODES: dict[str, Callable[[Any], int]] = {
    "act": lambda b: b.act_bytes,
    "ckpt": lambda b: b.ckpt_bytes,
    "ract": lambda b: b.recompute_bytes,      # what a recompute allocates beyond the checkpoint
    "ws": lambda b: b.workspace_bytes,
}


class BlockSizes:
    """The size table of a workload: per code, the value for each of its blocks (made on first
    use of a code, kept here). ``key``: the workload's build arguments (equal keys, equal sizes),
    or ``None`` for a workload made otherwise."""

    __slots__ = ("blocks", "key", "n_blocks", "_ops", "_bytes")

    def __init__(self, wl: Any) -> None:
        self.blocks = wl.blocks
        self.key = wl.key or None
        self.n_blocks = len(wl.blocks)
        self._ops: dict[str, Palette] = {}
        self._bytes: dict[str, np.ndarray] = {}

    def ops(self, code: str) -> Palette:
        got = self._ops.get(code)
        if got is None:
            got = self._ops[code] = Palette(map(_code(OPS_CODES, code), self.blocks))
        return got

    def bytes(self, code: str) -> np.ndarray:
        got = self._bytes.get(code)
        if got is None:
            got = self._bytes[code] = np.fromiter(map(_code(BYTES_CODES, code), self.blocks), np.int64,
                                                  self.n_blocks)
        return got


def _code(codes: dict, code: str) -> Callable:
    try:
        return codes[code]
    except KeyError:
        raise SimheteError(f"unknown size code {code!r}; known: {', '.join(codes)}") from None


def size_table(ctx: Any) -> BlockSizes:
    """The size table of ``ctx``'s workload, kept on the workload."""
    wl = ctx.workload
    return wl.keep(("policy.size_table",), lambda: BlockSizes(wl))
