"""How a profile's devices are connected: host links, NVLink, collectives, PCIe switch topology,
and measured interference between streams."""

from __future__ import annotations

from pydantic import Field

from simhete.config import Strict
from simhete.hw.profile.quantity import Curve, FractionQ, NonNegQ, PositiveQ, SlowdownQ

class Link(Strict):
    """α-β link: T(n) = latency + n / bandwidth, or n / curve(n) inside a measured curve."""

    bandwidth_gbps: PositiveQ
    latency_us: NonNegQ
    curve: Curve | None = None


class Direction(Strict):
    pinned: Link
    pageable: Link


class Links(Strict):
    h2d: Direction
    d2h: Direction
    duplex_factor: FractionQ = Field(description="bandwidth fraction each direction keeps when both run")
    nvlink: Link | None = None


class Collectives(Strict):
    """nccl-tests bus-bandwidth model: T = latency + bytes · factor / bus_bandwidth, with factor
    2(r−1)/r for all-reduce and (r−1)/r for reduce-scatter and all-gather (nccl-tests
    doc/PERFORMANCE.md)."""

    bus_bandwidth_gbps: PositiveQ
    latency_us: NonNegQ


class Topology(Strict):
    ref: str = Field(min_length=1)
    gpus_per_pcie_switch: int = Field(1, ge=1)
    switch_uplink_gbps: PositiveQ | None = None
    """Bandwidth of one switch's link to the host; with it, GPUs of one switch that copy in the same
    direction at once slow each other down (CostModel.interference derives the rules)."""


class Interference(Strict):
    """While a task on a stream matching ``aggressor`` runs, tasks on ``victim`` run ``slowdown``× longer."""

    victim: str
    aggressor: str
    slowdown: SlowdownQ
