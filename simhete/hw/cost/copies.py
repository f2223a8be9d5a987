"""Pricing of copies and collectives: H2D/D2H over the profile's links (α-β or a measured
curve), device and host memcpys, NCCL collectives (nccl-tests bus bandwidth), and the
interference rules of GPUs that share a PCIe switch. Functions of (model, op)."""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Callable

from simhete.hw.profile import Link
from simhete.opkinds import OpKind
from simhete.schedule.model import Op

if TYPE_CHECKING:
    from simhete.hw.cost.model import CostModel

# nccl-tests doc/PERFORMANCE.md: busbw = algbw × factor, with r ranks.
BUS_FACTOR: dict[OpKind, Callable[[int], float]] = {
    OpKind.ALLREDUCE: lambda r: 2.0 * (r - 1) / r,
    OpKind.REDUCE_SCATTER: lambda r: (r - 1) / r,
    OpKind.ALLGATHER: lambda r: (r - 1) / r,
}


def transfer(cm: CostModel, op: Op) -> float:
    links = cm.profile.links
    if links is None:  # device_type cpu without links: the "device" shares host memory
        return memcpy_cpu(cm, op)
    direction = "h2d" if op.kind is OpKind.H2D else "d2h"
    kind = "pinned" if op.pinned else "pageable"
    link = getattr(getattr(links, direction), kind)
    return link_seconds(cm, f"links.{direction}.{kind}", link, op.n)


def link_seconds(cm: CostModel, key: str, link: Link, nbytes: int) -> float:
    if link.curve is not None:
        cm.use(f"{key}.curve", link.curve)
        pts = link.curve.points
        sizes = [p[0] for p in pts]
        if nbytes <= sizes[0]:
            return sizes[0] / (pts[0][1] * 1e9)  # below the curve: latency-bound floor
        if nbytes >= sizes[-1]:
            return nbytes / (pts[-1][1] * 1e9)
        i = bisect.bisect_right(sizes, nbytes)
        (b0, g0), (b1, g1) = pts[i - 1], pts[i]
        w = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
        return nbytes / ((g0 + w * (g1 - g0)) * 1e9)
    cm.use(f"{key}.latency_us", link.latency_us)
    cm.use(f"{key}.bandwidth_gbps", link.bandwidth_gbps)
    return link.latency_us.value * 1e-6 + nbytes / (link.bandwidth_gbps.value * 1e9)


def d2d(cm: CostModel, op: Op) -> float:
    if cm.profile.device_type == "cpu":   # the device is the host: a device copy is a memcpy
        return memcpy_cpu(cm, op)
    return cm.dispatched(cm.mem_seconds(2.0 * op.n, efficiency=False))  # read + write


def memcpy_cpu(cm: CostModel, op: Op) -> float:
    q = cm.profile.host.memcpy_gbps
    cm.use("host.memcpy_gbps", q)
    return op.n / (q.value * 1e9)


def collective(cm: CostModel, op: Op) -> float:
    (ranks,) = op.shape
    if ranks <= 1:
        return 0.0
    factor = BUS_FACTOR[op.kind](ranks)
    p = cm.profile
    if p.collectives is not None:
        cm.use("collectives.latency_us", p.collectives.latency_us)
        cm.use("collectives.bus_bandwidth_gbps", p.collectives.bus_bandwidth_gbps)
        alpha, beta = p.collectives.latency_us.value, p.collectives.bus_bandwidth_gbps.value
    elif p.links is not None and p.links.nvlink is not None:
        cm.flag("collectives (absent: links.nvlink used as bus bandwidth)")
        return link_seconds(cm, "links.nvlink", p.links.nvlink, round(op.n * factor))
    elif p.links is not None:
        # No NVLink: a ring over PCIe moves each byte D2H and H2D through the host.
        cm.flag("collectives (absent: links.d2h.pinned used as bus bandwidth)")
        return link_seconds(cm, "links.d2h.pinned", p.links.d2h.pinned, round(op.n * factor))
    else:
        q = p.host.memcpy_gbps
        cm.flag("collectives (absent: host.memcpy_gbps used as bus bandwidth)")
        cm.use("host.memcpy_gbps", q)
        alpha, beta = 0.0, q.value
    return alpha * 1e-6 + op.n * factor / (beta * 1e9)


def switch_rules(cm: CostModel) -> tuple[tuple[str, str, float], ...]:
    """Copies of GPUs that share a PCIe switch share its uplink to the host.

    With s GPUs per switch, each with a pinned link of B GB/s per direction, and an uplink of
    U GB/s, s copies in one direction at once each get U/s: a slowdown of s·B/U (at least 1)
    while another GPU of the same switch copies the same way. GPUs are grouped by index
    (0..s-1, s..2s-1, ...). Without ``switch_uplink_gbps`` no contention is assumed.
    """
    topo, links = cm.profile.topology, cm.profile.links
    n = cm.profile.gpu.count
    if topo is None or topo.switch_uplink_gbps is None or topo.gpus_per_pcie_switch < 2 or n < 2 \
            or links is None:
        return ()
    s = topo.gpus_per_pcie_switch
    out = []
    for d in ("h2d", "d2h"):
        link = getattr(links, d).pinned.bandwidth_gbps
        f = max(1.0, s * link.value / topo.switch_uplink_gbps.value)
        if f == 1.0:
            continue
        cm.use("topology.switch_uplink_gbps", topo.switch_uplink_gbps)
        cm.use(f"links.{d}.pinned.bandwidth_gbps", link)
        for a in range(n):
            for b in range(n):
                if a != b and a // s == b // s:
                    out.append((f"gpu{a}.{d}", f"gpu{b}.{d}", f))
    return tuple(out)
