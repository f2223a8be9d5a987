"""The blocks an optimizer task over a sub-group works on (torch-free).

ZeRO-Infinity steps the optimizer per sub-group (``sub_group_size`` parameters): its task
``it2.ADAM.cpu.s0`` carries one Adam op over the sub-group's parameters and starts at the
sub-group's first block (``task.block``). The replay (simhete/replay/executor.py) runs that task
as each of the sub-group's blocks' steps, and the calibration's blocks suite (calibrate/blocks.py)
times the same steps whole, so both read the sub-group with :func:`subgroup_blocks`.
"""

from __future__ import annotations

from simhete.opkinds import OpKind


def subgroup_blocks(task, wl) -> list[int]:  # type: ignore[no-untyped-def]
    """Consecutive blocks of ``wl`` with parameters, from ``task.block`` on, whose parameters add
    up to the task's Adam op's ``n``; ValueError when no such run exists."""
    order = [b.index for b in wl.blocks if b.params]
    params = {b.index: b.params for b in wl.blocks}
    n = sum(op.n for op in task.ops if op.kind in (OpKind.ADAM_CPU, OpKind.ADAM_GPU))
    grp: list[int] = []
    total = 0
    for i in order[order.index(task.block):] if task.block in order else []:
        grp.append(i)
        total += params[i]
        if total >= n:
            break
    if total != n or not grp:
        raise ValueError(f"task {task.name}: cannot tell which blocks its {n} parameters are")
    return grp
