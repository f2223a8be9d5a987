"""Policies with known answers: degenerate knobs reproduce gpu-only, schedules are well formed,
memory stays within capacity, and data-parallel offload traffic splits 1/N over the GPUs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simhete.engine import simulate
from simhete.opkinds import COPY_KINDS, OpKind
from simhete.policy import list_policies
from simhete.scenario import scenario_from_dict
from simhete.schedule import check_schedule
from simhete.sim import resolve

PROFILE = "a100-40gb-pcie-epyc7713"
FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scenario(policy: str, knobs: dict | None = None, *, layers: int = 4, hidden: int = 256, batch: int = 2,
             seq: int = 128, gpus: int = 1, iterations: int = 3, **hw):
    return scenario_from_dict(dict(
        model=f"gpt-like-h{hidden}-l{layers}", hardware=dict(profile=PROFILE, gpus=gpus, **hw),
        train=dict(micro_batch=batch, seq_len=seq), iterations=iterations, policy=policy, knobs=knobs or {}))


def build(s):
    ctx, pol = resolve(s)
    sched = pol.build(ctx)
    assert check_schedule(sched) == []
    return ctx, sched


def timeline(s, *, infinite_pcie: bool = False):
    """Simulate ``s``. ``infinite_pcie``: every task that moves bytes over PCIe takes 0 s — the
    limit of infinite link bandwidth and zero latency, built by zeroing those tasks' durations
    (a profile cannot express an infinite bandwidth), everything else priced as usual."""
    ctx, sched = build(s)
    durs = ctx.cost.durations(sched)
    if infinite_pcie:
        durs = [0.0 if any(op.kind in (OpKind.H2D, OpKind.D2H) for op in t.ops) else d
                for t, d in zip(sched.tasks, durs)]
    return sched, simulate(sched, durs, ctx.cost.interference())


def compute_spans(tl):
    return sorted((r.start, r.end) for r in tl.records if r.stream.endswith(".compute"))


ckpt = st.sampled_from(["none", "full", "every"])


@FAST
@given(layers=st.integers(2, 5), batch=st.integers(1, 3), checkpointing=ckpt)
def test_zero_infinity_with_infinite_pcie_is_gpu_only(layers, batch, checkpointing):
    """Weights homed on the host but fetched in zero time, optimizer on the GPU (offload_optimizer
    none; sub_group_size 1 so each block steps alone, like gpu-only's per-block Adam): the GPU runs
    exactly gpu-only's tasks at exactly gpu-only's times."""
    kn = {"checkpointing": checkpointing}
    _, ref = timeline(scenario("gpu-only", kn, layers=layers, batch=batch))
    zi = {**kn, "offload_optimizer": "none", "sub_group_size": 1}
    sched, got = timeline(scenario("zero-infinity", zi, layers=layers, batch=batch), infinite_pcie=True)
    assert sum(1 for t in sched.tasks if t.stream == "gpu0.h2d") > 0   # it really fetches weights
    assert compute_spans(got) == compute_spans(ref)
    assert got.steady_iteration_time() == ref.steady_iteration_time()


@FAST
@given(layers=st.integers(2, 5), extra=st.integers(0, 3), checkpointing=ckpt)
def test_stronghold_window_holding_every_block_is_gpu_only(layers, extra, checkpointing):
    kn = {"checkpointing": checkpointing}
    _, ref = timeline(scenario("gpu-only", kn, layers=layers))
    sched, got = timeline(scenario("stronghold", {**kn, "window_size": layers + extra}, layers=layers))
    assert not any(op.kind in COPY_KINDS for t in sched.tasks for op in t.ops)
    assert compute_spans(got) == compute_spans(ref)
    assert got.steady_iteration_time() == ref.steady_iteration_time()


def test_stronghold_window_moves_exactly_the_blocks_outside_it():
    """w = 2 of 4 blocks: b2, b3 are fetched in the forward and b0, b1 in the backward (H2D), b0,
    b1 (updated on the GPU) are copied home when the forward window evicts them, b2, b3 send
    their gradients D2H to the CPU Adam."""
    ctx, sched = build(scenario("stronghold", {"window_size": 2}, iterations=2))
    it2 = sorted(t.name for t in sched.tasks if t.it == 2 and t.stream in ("gpu0.h2d", "gpu0.d2h"))
    assert it2 == ["it2.D2H.g.b2", "it2.D2H.g.b3", "it2.D2H.w.b0", "it2.D2H.w.b1",
                   "it2.H2D.wb.b0", "it2.H2D.wb.b1", "it2.H2D.wf.b2", "it2.H2D.wf.b3"]
    adam = sorted(t.name for t in sched.tasks if t.it == 2 and t.stream == "cpu.optim")
    assert adam == ["it2.ADAM.cpu.b2", "it2.ADAM.cpu.b3"]


@pytest.mark.parametrize("policy", ["zero-infinity", "stronghold"])
@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_schedules_are_well_formed(policy, gpus):
    for kn in ({}, {"checkpointing": "full"}, {"activations": ["swap", "recompute", "keep", "swap"]}):
        build(scenario(policy, kn, gpus=gpus))
