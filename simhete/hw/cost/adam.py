"""Pricing of optimizer steps: CPU Adam (measured by-threads curve, whole-host rate, per-core
model or DRAM-bound ceiling: :class:`simhete.hw.profile.host.AdamModel`) and fused GPU Adam
(memory-bound over the optimizer state). Functions of (model, op)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simhete.hw.profile import ADAM_ACCESSES_PER_PARAM
from simhete.opkinds import DTYPE_BYTES
from simhete.schedule.model import Op

if TYPE_CHECKING:
    from simhete.hw.cost.model import CostModel

# Fused GPU Adam reads p, g, m, v and writes p, m, v (ADAM_ACCESSES_PER_PARAM), each in the op's
# dtype: fp32 state moves the same 28 B/param as CPU Adam. An op with a shape gives the accesses
# per parameter of an unfused implementation (simhete.opkinds.ADAM_GPU_ACCESSES: torch's foreach
# AdamW makes 20).


def adam_cpu(cm: CostModel, op: Op) -> float:
    adam = cm.profile.host.adam
    if cm.tables.adam_rate is not None:
        assert adam.by_threads is not None
        cm.use("host.adam.by_threads", adam.by_threads)
        if cm.tables.adam_flag:
            cm.flag(cm.tables.adam_flag)
        rate = cm.tables.adam_rate
    else:
        q, used, default = cm.tables.adam
        if default is not None:
            cm.flag(default)
        for key, prov in used:
            cm.use(key, prov)
        host = cm.profile.host
        if adam.threads is not None and adam.threads > host.cores and used[0][0] != "host.adam.params_per_s":
            cm.flag(f"host.adam.threads ({adam.threads} > host.cores {host.cores}: {host.cores} used)")
        rate = q.value
    fixed = 0.0
    if adam.overhead_us is not None:
        cm.use("host.adam.overhead_us", adam.overhead_us)
        fixed = adam.overhead_us.value * 1e-6
    return fixed + op.n / rate


def adam_gpu(cm: CostModel, op: Op) -> float:
    if cm.profile.device_type == "cpu":   # the device is the host: a device Adam is CPU Adam
        return adam_cpu(cm, op)
    accesses = op.shape[0] if op.shape else ADAM_ACCESSES_PER_PARAM   # an unfused implementation's
    return cm.dispatched(cm.mem_seconds(float(op.n) * accesses * DTYPE_BYTES[op.dtype]))
