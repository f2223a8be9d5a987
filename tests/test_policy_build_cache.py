"""What builds keep on the workload (policy/training.py's block plans, ZeRO-Offload's step rows and
host buffers, Workload.derived): a build that reuses them equals a build from empty caches, for other workloads too,
and Builder.add_row stores exactly what Builder.add stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from simhete.opkinds import Action, At, MemClass, TaskCat
from simhete.policy import Builder
from simhete.policy.structures import same_schedule
from simhete.scenario import load_scenario
from simhete.schedule.model import new_alloc
from simhete.sim import resolve

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "small-gpt_cpu_zero-offload.yaml"


def columns(s) -> tuple:
    """Every column, where the structure's size references are, and the initial buffers."""
    tb = s.table
    st = tb.structure
    refs = (st.ops_codes, st.ops_src, {c: (p.tolist(), b.tolist()) for c, (p, b) in st.byte_cells.items()})
    return tuple(getattr(tb, f) for f in tb.FIELDS), refs, s.initial


@pytest.mark.parametrize("changes", [
    {},
    {"knobs.delayed_update": True, "knobs.checkpointing": "full"},
    {"knobs.overlap_comm": False, "knobs.reduce_bucket_size": 1e3},
    {"hardware.gpus": 2, "train.grad_accum": 2},
    {"hardware.gpus": 3, "knobs.delayed_update": True, "knobs.pin_memory": False},
])
def test_kept_plans_build_what_empty_caches_build(changes: dict) -> None:
    sc = load_scenario(BASE).with_changes(**changes) if changes else load_scenario(BASE)
    other = sc.with_changes(**{"train.micro_batch": sc.data.train.micro_batch + 1})
    ctx, pol = resolve(sc)
    ctx_o, pol_o = resolve(other)
    ctx.workload.derived.clear()            # what builds keep lives on the workload
    ctx_o.workload.derived.clear()
    cold = pol.build(ctx)
    assert ctx.workload.derived and not ctx_o.workload.derived
    cold_other = pol_o.build(ctx_o)
    # warm: the kept plans of both workloads are reused, each for its own blocks only
    warm, warm_other = pol.build(ctx), pol_o.build(ctx_o)
    assert same_schedule(warm, cold) and columns(warm) == columns(cold)
    assert same_schedule(warm_other, cold_other) and columns(warm_other) == columns(cold_other)
    assert not same_schedule(warm, warm_other)     # the micro-batch changes activation bytes
    ctx_o.workload.derived.clear()
    again = pol_o.build(ctx_o)
    assert same_schedule(again, cold_other) and columns(again) == columns(cold_other)


def test_add_row_stores_what_add_stores() -> None:
    a, b = Builder(), Builder()
    alloc = new_alloc("x", "gpu0", 8, MemClass.BUFFERS)
    a.add(Action.FORWARD, At(1, "b1"), "gpu0.compute", (), deps=["", "t0"], prio=3, allocs=[alloc], frees=["y"],
          it=1, block=2, sized=(0, "fwd", (None,)))
    b.add_row(("it1.F.b1", "gpu0.compute", TaskCat.FWD, (), ("t0",), 3, (alloc,), ("y",), 1, 2, Action.FORWARD,
               At(1, "b1")), (0, "fwd", (None,)))
    assert a._rows == b._rows and a._sized == b._sized


def test_what_builds_keep_lives_on_the_workload_alone() -> None:
    """Kept data is on the workload it derives from: a pickled or replaced workload (another
    object, maybe other sizes) starts without it, and the entries are bounded per workload."""
    import dataclasses
    import pickle

    ctx, pol = resolve(load_scenario(BASE))
    wl = ctx.workload
    wl.derived.clear()
    pol.build(ctx)
    kinds = {k[0] for k in wl.derived}
    assert {"policy.model_states", "training.plan", "zero_offload.adam"} <= kinds
    assert pickle.loads(pickle.dumps(wl)).derived == {} and pickle.loads(pickle.dumps(wl)) == wl
    assert dataclasses.replace(wl).derived == {}
    wl.derived.clear()
    for k in range(wl.KEPT + 1):
        wl.keep(("test", k), lambda: k)
    assert len(wl.derived) == 1                 # full at KEPT: started empty again
    wl.derived.clear()
