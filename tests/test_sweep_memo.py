"""The sweep path's shortcuts give the results of the plain path: prices gathered per distinct ops
tuple (sim.durations) equal CostModel.durations, PCIe bytes as arrays equal the per-name mapping,
and remembered prices and timelines (run(..., memo=True)) give the summaries of fresh runs, in any
order of points, aliasing knob values included."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from simhete import cache, sim
from simhete.engine import Record, Timeline
from simhete.hw.cost import CostModel
from simhete.opkinds import OpKind, TaskCat
from simhete.policy import structures
from simhete.report.metrics import summarize
from simhete.report.pcie import TaskBytes, pcie_bytes, pcie_task_arrays, pcie_task_bytes
from simhete.scenario import load_scenario
from simhete.schedule import Op, Schedule, Task

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_prices_and_pcie_arrays_equal_the_plain_ones(path):
    res = sim.run(load_scenario(path), check=False)
    sched, prof = res.schedule, res.context.profile
    a, b = CostModel(prof), CostModel(prof)
    assert sim.durations(a, sched).tolist() == b.durations(sched)
    assert a.flags == b.flags
    if res.timeline.oom is None:
        assert pcie_bytes(res.timeline, pcie_task_arrays(sched)) == pcie_bytes(res.timeline, pcie_task_bytes(sched))
    tb = pcie_task_arrays(sched)
    assert {n: (u, d) for n, u, d in zip(sched.table.name, tb.h2d.tolist(), tb.d2h.tolist()) if u or d} \
        == pcie_task_bytes(sched)


def test_pcie_arrays_name_a_copy_task_moving_nothing():
    sched = Schedule((Task("a", "gpu0.h2d", TaskCat.H2D, (Op(OpKind.H2D, n=10),)),
                      Task("b", "gpu0.d2h", TaskCat.D2H, ())), {"gpu0": 100})
    tl = sim.simulate(sched, [1.0, 1.0])
    with pytest.raises(ValueError, match="no entry for copy task 'b' on gpu0.d2h"):
        pcie_bytes(tl, pcie_task_arrays(sched))
    with pytest.raises(ValueError, match="no entry for copy task 'b' on gpu0.d2h"):
        pcie_bytes(tl, pcie_task_bytes(sched))
    records = Timeline(records=(Record("a", "gpu0.h2d", TaskCat.H2D, 0, -1, 0.0, 1.0),))
    assert pcie_bytes(records, pcie_task_arrays(sched)) == {"h2d": 10, "d2h": 0}    # no arrays: by name
    assert isinstance(pcie_task_arrays(sched), TaskBytes)


def points():
    """Points of a small sweep: sizes, aliasing bucket sizes (one partition), other policies."""
    out = []
    for name in ("small-llama_cpu_swap", "small-gpt_cpu_zero-offload", "llama2-13b_h100-pcie_zero-offload"):
        s = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        for mb in (1, 2):
            for bucket in (1e12, 2e12):          # both: one bucket for the whole model
                for dpu in (False, True):
                    out.append(s.with_changes(**{"train.micro_batch": mb, "knobs.reduce_bucket_size": bucket,
                                                 "knobs.delayed_update": dpu}))
    for name in ("small-gpt_cpu_gpu-only", "small-gpt_cpu_stronghold", "small-llama_cpu_zero-infinity"):
        out.append(load_scenario(ROOT / "scenarios" / f"{name}.yaml"))
    return out


def test_memo_gives_the_plain_results_in_any_order():
    pts = points()
    plain = [sim.run(s, check=False).summary for s in pts]
    order = list(range(len(pts))) * 2
    random.Random(7).shuffle(order)
    cache.clear()
    prof = {}
    for i in order:
        s = pts[i]
        p = prof.setdefault(s.data.hardware if isinstance(s.data.hardware, str) else s.data.hardware.profile,
                            sim.resolve_profile(s))
        got = sim.run(s, check=False, profile=p, memo=True)
        assert got.summary == plain[i], (i, s.name)
    for p in prof.values():                      # kept on the profiles and the schedules
        kept, entries, _ = p.memo["sim.kept"]
        assert kept._task_cache and entries
    assert ("sim.timeline", "fast") in got.schedule.derived
    assert got.schedule.table.distinct_ops()[0].derived["sim.prices"][-1].profile is got.context.profile


def test_memo_prices_on_a_kept_model_and_gives_the_flags_of_the_point_alone():
    """A kept model that priced other points first gives the same floats, and the flags pricing
    this schedule on the point's own model would have added, on top of what that model has."""
    s = load_scenario(ROOT / "scenarios" / "small-llama_cpu_swap.yaml")
    ctx, pol = sim.resolve(s)
    sched = pol.build(ctx)
    cache.clear()
    other = sim.run(s.with_changes(**{"train.micro_batch": 3}), check=False, profile=ctx.profile, memo=True)
    assert other.schedule is not sched
    durs, prov = sim.memo_durations(ctx.cost, sched)
    ref = CostModel(ctx.profile)
    assert durs.tolist() == ref.durations(sched) and ctx.cost.flags_with(prov) == ref.flags
    assert ctx.cost.flags == set()                       # the point's model priced nothing
    ctx.cost._flags.add("something (assumed)")          # a model that priced something flagged before
    again, prov = sim.memo_durations(ctx.cost, sched)          # remembered on its palette
    assert again.tolist() == durs.tolist() and ctx.cost.flags_with(prov) == ref.flags | {"something (assumed)"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_provenance_of_a_tuple_is_what_pricing_it_alone_adds(path):
    """Per ops tuple, on a model that priced every other tuple of every shipped scenario first:
    its provenance gives exactly the flags of a fresh model that priced that tuple alone, and any
    set of tuples the flags of a fresh model that priced that set (roofline shape counts merge)."""
    s = load_scenario(path)
    ctx, pol = sim.resolve(s)
    palette = structures.build_schedule(pol, ctx).table.distinct_ops()[0]
    kept = sim.kept_model(ctx.profile)
    for other in SCENARIOS:                     # the kept model has priced others' tuples before
        o = load_scenario(other)
        octx, opol = sim.resolve(o, profile=ctx.profile)
        try:
            list(map(kept.ops_seconds, structures.build_schedule(opol, octx).table.distinct_ops()[0]))
        except Exception:                       # a policy or op this profile cannot build or price
            pass
    for ops in palette:
        alone = CostModel(ctx.profile)
        assert alone.ops_seconds(ops) == kept.ops_seconds(ops)
        assert CostModel(ctx.profile).flags_with(kept.provenance(ops)) == alone.flags
    rng = random.Random(path.stem)
    for _ in range(5):
        some = rng.sample(palette, k=rng.randint(0, len(palette)))
        fresh = CostModel(ctx.profile)
        list(map(fresh.ops_seconds, some))
        assert CostModel(ctx.profile).flags_with(*map(kept.provenance, some)) == fresh.flags


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_summaries_from_a_structures_shared_memo_equal_the_record_based_ones(path):
    """Runs of one structure share what the summary derives from rows, streams and iterations
    (Columns.memo): with durations that reorder the tasks between runs, every run's summary from
    the arrays equals the summary of its Record objects (no memo)."""
    res = sim.run(load_scenario(path), check=False)
    sched, cost = res.schedule, res.context.cost
    durs = np.array(cost.durations(sched))
    rules = cost.interference()
    rng = np.random.default_rng(3)
    kw = dict(tokens_per_iter=1000, samples_per_iter=2, model_flops_per_iter=1e12, peak_flops_per_gpu=1e14,
              n_gpus=1, pool_capacity=dict(sched.pools), flags=())
    for k in range(4):
        scaled = durs * (rng.uniform(0.2, 3.0, len(durs)) if k else 1.0)
        tl = sim.simulate(sched, scaled, rules)
        if tl.oom is None:
            assert tl.columns.memo is not None
        plain = Timeline(tl.records, tl.mem_events, tl.peak, tl.peak_by_class, tl.oom, tl.engine, tl.meta)
        tb = pcie_task_arrays(sched)
        assert summarize(tl, task_bytes=tb, **kw) == summarize(plain, task_bytes=pcie_task_bytes(sched), **kw)
