"""Every policy builds a well-formed schedule on every shipped scenario where it applies."""

from __future__ import annotations

import pytest

from conftest import SCENARIOS
from simhete.search.compare import knobs_for
from simhete.policy import get_policy
from simhete.scenario import load_scenario
from simhete.schedule import check_schedule
from simhete.sim import resolve, resolve_profile

POLICIES = ["zero-infinity", "stronghold", "chunked", "autohete", "gpu-only", "zero-offload"]


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_policy_builds_a_valid_schedule(path):
    s = load_scenario(path)
    ctx, pol = resolve(s)
    pol.build(ctx)                           # the scenario as shipped must itself be valid
    prof = resolve_profile(s)
    checked = 0
    for name in POLICIES:
        if prof.gpu.count > 1 and not get_policy(name).multi_gpu:
            continue
        kn = knobs_for(s, name) | ({"verify": False} if name == "autohete" else {})
        ctx, pol = resolve(s.with_changes(policy=name, knobs=kn), prof)
        assert check_schedule(pol.build(ctx), capacity=False) == [], name
        checked += 1
    assert checked >= 4
