"""PCIe switch contention: GPUs behind one switch share its uplink to the host."""

from __future__ import annotations

import pytest

from simhete.engine import simulate
from simhete.hw.cost import CostModel
from simhete.hw.cost.copies import switch_rules
from simhete.hw.profile import load_profile
from simhete.opkinds import TaskCat
from simhete.schedule import Schedule, Task


def rules(profile: str, gpus: int):
    return switch_rules(CostModel(load_profile(profile).with_overrides(gpus=gpus)))


def test_rules_pair_gpus_of_one_switch_per_direction():
    # h100-sxm: two GPUs per switch, a 55 GB/s uplink, 55 GB/s per GPU: each copy gets half
    r = rules("h100-sxm", 4)
    assert set(r) == {(f"gpu{a}.{d}", f"gpu{b}.{d}", 2.0) for d in ("h2d", "d2h")
                      for a, b in ((0, 1), (1, 0), (2, 3), (3, 2))}


def test_no_rule_without_an_uplink_figure_or_a_second_gpu():
    assert rules("h100-sxm", 1) == ()
    assert rules("a100-40gb-pcie-epyc7713", 4) == ()   # one GPU per switch
    prof = load_profile("h100-sxm")
    assert prof.topology.switch_uplink_gbps is not None


def test_uplink_is_reported_as_uncalibrated_when_used():
    c = CostModel(load_profile("h100-sxm").with_overrides(gpus=2))
    c.interference()
    assert "topology.switch_uplink_gbps (assumed)" in c.flags


@pytest.mark.parametrize("engine", ["fast", "simpy"])
@pytest.mark.parametrize("other,end", [("gpu1", 2.0), ("gpu2", 1.0)])
def test_two_copies_through_one_switch_take_twice_as_long(engine, other, end):
    """1 s of H2D on gpu0 and on another GPU at once: behind the same switch each runs at half
    speed and both end at 2 s; behind different switches both end at 1 s."""
    tasks = (Task("a", "gpu0.h2d", TaskCat.H2D), Task("b", f"{other}.h2d", TaskCat.H2D))
    sched = Schedule(tasks, {"gpu0": 1, "gpu1": 1, "gpu2": 1, "cpu": 1})
    tl = simulate(sched, [1.0, 1.0], rules("h100-sxm", 4), engine=engine)
    assert [(r.start, r.end) for r in tl.records] == [(0.0, end), (0.0, end)]
