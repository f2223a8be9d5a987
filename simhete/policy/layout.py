"""Small helpers the offloading policies share: weight owners, use traces, grouping, pricing."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from simhete.opkinds import TaskCat
from simhete.schedule import Op, Task


def owners(blk: Any) -> list[int]:
    """Blocks whose weights ``blk``'s ops read: itself, plus the block it is tied to (the LM head
    of a tied-embedding model multiplies by the token embedding)."""
    out = [blk.index] if blk.params else []
    if blk.tied_to is not None and blk.tied_to not in out:
        out.insert(0, blk.tied_to)
    return out


def uses(blocks: Sequence[Any]) -> list[tuple[str, Any]]:
    """One iteration's compute steps in execution order: ("F", blk) forward, then ("B", blk)
    backward in reverse (a recomputed block's R belongs to its "B" step)."""
    return [("F", blk) for blk in blocks] + [("B", blk) for blk in reversed(blocks)]


def group(items: Iterable[tuple[int, int]], size: float) -> list[list[int]]:
    """Consecutive ids grouped until each group holds at least ``size`` elements (DeepSpeed's
    ``sub_group_size`` and ``reduce_bucket_size`` tiling, at block granularity); ``items`` are
    (id, elements) in order; the last group may be smaller."""
    out: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i, elems in items:
        cur.append(i)
        n += elems
        if n >= size:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def seconds(cost: Any, ops: tuple[Op, ...]) -> float:
    """Seconds the cost model gives a task made of ``ops`` (the engine prices tasks the same way)."""
    return cost.task_seconds(Task("price", "gpu0.compute", TaskCat.OTHER, tuple(ops)))


def activation_peak(blocks: Sequence[Any], modes: dict[int, str]) -> int:
    """Static estimate of the activation (non-model) peak: what every block keeps at the end of
    the forward (its checkpoint if recomputed, nothing if swapped out, else all its activations),
    plus the largest transient (a recomputed block's rematerialised activations, a swapped
    block's activations back on the GPU) and the largest workspace."""
    kept = sum(blk.ckpt_bytes if modes[blk.index] == "recompute" else 0 if modes[blk.index] == "swap"
               else blk.act_bytes for blk in blocks)
    transient = max([blk.recompute_bytes for blk in blocks if modes[blk.index] == "recompute"]
                    + [blk.act_bytes for blk in blocks if modes[blk.index] == "swap"] + [0])
    return kept + transient + max(blk.workspace_bytes for blk in blocks)


def nonmodel_by_step(blocks: Sequence[Any], modes: dict[int, str]) -> list[int]:
    """Activation and workspace bytes live while each step of :func:`uses` runs (what a warm-up
    iteration traces as non-model memory): what earlier blocks keep, plus the running block's
    activations (all of them during its backward: recomputed or swapped back; a per-op selective
    checkpoint's kept outputs besides) and workspace."""
    kept = {blk.index: blk.ckpt_bytes if modes[blk.index] == "recompute" else 0 if modes[blk.index] == "swap"
            else blk.act_bytes for blk in blocks}
    out, held = [], 0
    for blk in blocks:
        out.append(held + max(kept[blk.index], blk.act_bytes if modes[blk.index] == "swap" else 0)
                   + blk.workspace_bytes)
        held += kept[blk.index]
    for blk in reversed(blocks):
        held -= kept[blk.index]
        live = blk.ckpt_bytes + blk.recompute_bytes if modes[blk.index] == "recompute" else blk.act_bytes
        out.append(held + live + blk.workspace_bytes)
    return out
