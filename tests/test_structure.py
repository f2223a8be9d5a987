"""A schedule is a structure plus a size table (simhete/schedule/structure.py,
simhete/policy/structures.py): a policy's structure bound to another point's size table equals a
fresh build of that point exactly — schedule, every table column, allocation bytes — and simulates
to the same timeline; for every shipped scenario whose policy gives a structure key, and over drawn
sizes and knobs for every such policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simhete import cache
from simhete.engine import simulate_fast, simulate_simpy
from simhete.errors import SimheteError
from simhete.opkinds import Action, At, MemClass
from simhete.policy import Builder, Context, Policy, structures
from simhete.policy.sizes import size_table
from simhete.policy.structures import KeptStructure, build_schedule, same_schedule
from simhete.policy.training import size_decisions
from simhete.scenario import load_scenario
from simhete.schedule import SizeRef, check_schedule
from simhete.schedule.model import new_alloc
from simhete.schedule.text import format_schedule
from simhete.sim import resolve, run

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def opts_in(path: Path) -> bool:
    ctx, policy = resolve(load_scenario(path))
    return policy.structure_key(ctx) is not None


KEYED = [p for p in SCENARIOS if opts_in(p)]


def timeline_key(tl) -> tuple:
    return (tl.records, tl.mem_events, tl.peak, tl.peak_by_class, tl.oom)


def assert_binds(s0, s1, simulate: bool = True) -> None:
    """The structure of ``s0``'s fresh build, bound to ``s1``, equals ``s1``'s fresh build."""
    ctx0, pol0 = resolve(s0)
    ctx1, pol1 = resolve(s1)
    k0, k1 = pol0.structure_key(ctx0), pol1.structure_key(ctx1)
    if k0 != k1:     # only what the policy decides from sizes (a window) may differ: built afresh
        assert k0[:3] == k1[:3] and k0[3] != k1[3], "sizes alone changed more than the policy's decisions"
        return
    t = KeptStructure(pol0.build(ctx0))
    got = t.schedule(pol1, ctx1)
    fresh = pol1.build(ctx1)
    assert format_schedule(got) == format_schedule(fresh)
    assert same_schedule(got, fresh)
    assert got.table.structure is t.structure
    if simulate:
        durs, rules = ctx1.cost.durations(fresh), ctx1.cost.interference()
        assert ctx1.cost.durations(got) == durs
        ref = simulate_simpy(fresh, durs, rules)
        first = t.schedule(pol0, ctx0)
        simulate_fast(first, ctx0.cost.durations(first), ctx0.cost.interference())  # index the structure
        assert timeline_key(simulate_fast(got, durs, rules)) == timeline_key(ref)


def test_every_policy_but_autohete_opts_in():
    policies = {resolve(load_scenario(p))[1].name for p in KEYED}
    assert policies >= {"gpu-only", "zero-offload", "zero-infinity", "stronghold", "chunked"}
    assert "autohete" not in policies


@pytest.mark.parametrize("path", KEYED, ids=lambda p: p.stem)
def test_shipped_scenario_bound_equals_fresh_build(path):
    s = load_scenario(path)
    tr = s.data.train
    assert_binds(s, s)
    assert_binds(s, s.with_changes(**{"train.micro_batch": tr.micro_batch + 1}))
    seq = max(16, tr.seq_len // 2)
    assert_binds(s.with_changes(**{"train.seq_len": seq}), s)
    assert_binds(s, s.with_changes(**{"train.micro_batch": 1, "train.seq_len": seq}))
    other = "h200-sxm" if s.data.hardware != "h200-sxm" else "a100-80gb-sxm"
    gpus = resolve(s)[0].n_gpus
    assert_binds(s, s.with_changes(hardware={"profile": other, "gpus": gpus}), simulate=False)


@pytest.mark.parametrize("path", KEYED, ids=lambda p: p.stem)
def test_shipped_scenario_through_the_cache(path, monkeypatch):
    """The sweep path (sim.run → build_schedule) on a build and a binding, checked by VERIFY."""
    monkeypatch.setattr(structures, "VERIFY", True)
    cache.clear()
    s = load_scenario(path)
    a = run(s, check=True)
    s1 = s.with_changes(**{"train.micro_batch": s.data.train.micro_batch + 1})
    b = run(s1, check=True)
    (c0, p0), (c1, p1) = resolve(s), resolve(s1)
    same = p0.structure_key(c0) == p1.structure_key(c1)     # unless a size decision (a window) changed
    assert a.schedule.table.structure is not None
    assert (b.schedule.table.structure is a.schedule.table.structure) == same
    again = run(s, check=False)
    assert again.schedule is a.schedule          # equal sizes: the very schedule, re-priced
    assert again.summary == a.summary


def test_check_schedule_accepts_bound():
    s = load_scenario(KEYED[0])
    ctx, pol = resolve(s)
    t = KeptStructure(pol.build(ctx))
    ctx1, pol1 = resolve(s.with_changes(**{"train.micro_batch": s.data.train.micro_batch + 2}))
    assert check_schedule(t.schedule(pol1, ctx1), capacity=False) == []


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_build_is_its_structure_bound_to_its_size_table(path):
    """Every policy's schedule, AutoHete's too, is a structure whose size cells are references:
    a block's forward takes its ops from ``SizeRef("fwd", block)``, its kept activations their
    bytes from ``SizeRef("act", block)`` (or the checkpoint's, ``"ckpt"``). That nothing else
    depends on sizes is what binding-equals-building checks (the tests above and below)."""
    ctx, pol = resolve(load_scenario(path))
    sched = pol.build(ctx)
    st = sched.table.structure
    pos = {blk.index: p for p, blk in enumerate(ctx.blocks)}
    fwd = [i for i, (a, at) in enumerate(zip(st.action, st.at)) if a is Action.FORWARD]
    assert fwd
    for i in fwd:
        assert st.ops_ref(i) == SizeRef("fwd", pos[st.block[i]])
        q = st.a_ptr[i]
        refs = {st.bytes_ref(j) for j in range(q, st.a_ptr[i + 1]) if st.flat[j].cls is MemClass.ACTIVATIONS}
        assert refs and refs <= {SizeRef("act", pos[st.block[i]]), SizeRef("ckpt", pos[st.block[i]])}


BASE = ROOT / "scenarios" / "small-llama_cpu_swap.yaml"
PROFILES = ["h100-pcie", "h200-sxm", "a100-80gb-sxm", "rtx4090-desktop", "cpu-local"]   # bf16-capable
sizes = st.tuples(st.integers(1, 12), st.sampled_from([32, 64, 128, 200, 256]), st.sampled_from(PROFILES),
                  st.sampled_from(["auto", "flash", "math"]), st.sampled_from([2**34, 5 * 2**30]))


# per policy that opts in: its own knobs, drawn
POLICY_KNOBS = {
    "zero-offload": st.fixed_dictionaries({"delayed_update": st.booleans(), "overlap_comm": st.booleans(),
                                           "reduce_bucket_size": st.floats(1e3, 1e8)}),
    "gpu-only": st.fixed_dictionaries({"bucket_cap_mb": st.floats(1e-3, 100),
                                       "gradient_as_bucket_view": st.booleans()}),
    "zero-infinity": st.fixed_dictionaries({"offload_param": st.sampled_from(["cpu", "none"]),
                                            "offload_optimizer": st.sampled_from(["cpu", "none"]),
                                            "reduce_bucket_size": st.floats(1e3, 1e8)}),
    "stronghold": st.fixed_dictionaries({"window_size": st.one_of(st.none(), st.integers(1, 5))}),
    "chunked": st.fixed_dictionaries({"placement_policy": st.sampled_from(["auto", "static"]),
                                      "chunk_size": st.sampled_from([2**16, 2**18, 2**20]),
                                      "max_prefetch": st.integers(0, 2), "async_reduce": st.booleans()}),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=sizes, b=sizes, gpus=st.integers(1, 3), accum=st.integers(1, 3), n_layers=st.integers(1, 5),
       mode=st.sampled_from(["none", "full", "every", "per-block"]), modes=st.lists(
           st.sampled_from(["keep", "recompute", "swap"]), min_size=5, max_size=5),
       every=st.integers(1, 3), pin=st.booleans(), iterations=st.integers(1, 3),
       recompute=st.sampled_from(["full", "op"]), data=st.data())
def test_drawn_sizes_bind_exactly(a, b, gpus, accum, n_layers, mode, modes, every, pin, iterations, recompute,
                                    data):
    policy = data.draw(st.sampled_from(sorted(POLICY_KNOBS)), label="policy")
    knobs = {"pin_memory": pin, **data.draw(POLICY_KNOBS[policy], label="knobs")}
    if mode == "per-block":
        knobs["activations"] = modes[:n_layers]
    else:
        knobs.update(checkpointing=mode, checkpoint_every=every)
    if policy == "chunked":
        accum = 1                      # a gradient overwrites its parameter in the chunk
    base = load_scenario(BASE).with_changes(**{"model.n_layers": n_layers, "knobs": knobs, "policy": policy,
                                               "iterations": iterations, "train.grad_accum": accum})

    def point(mb, seq, prof, attn, memory):
        return base.with_changes(**{"train.micro_batch": mb, "train.seq_len": seq, "train.attention": attn,
                                    "train.recompute": recompute if attn != "math" else "full",
                                    "hardware": {"profile": prof, "gpus": gpus, "gpu_memory": memory}})

    assert_binds(point(*a), point(*b), simulate=gpus == 1)


def test_a_wrong_size_code_is_caught():
    """The Builder's own check: a cell marked with a code that does not give its value."""
    s = load_scenario(BASE)
    ctx, _ = resolve(s)
    blk = ctx.blocks[1]
    b = Builder(size_table(ctx))
    b.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops,
          allocs=[new_alloc("act", "gpu0", blk.act_bytes, MemClass.ACTIVATIONS)], frees=["act"],
          sized=(1, "fwd", ("ckpt",)))
    assert blk.act_bytes != blk.ckpt_bytes
    with pytest.raises(SimheteError, match=rf"task it1\.F\.{blk.name}: the size codes it marked do not give"):
        b.build(ctx.pools(), (), 1, {"policy": "test"})
    b.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops, sized=(1, "fwdd", ()))
    with pytest.raises(SimheteError, match="unknown size code 'fwdd'; known: fwd, bwd, rec"):
        b.build(ctx.pools(), (), 1, {"policy": "test"})
    bare = Builder()
    bare.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops, sized=(1, "fwd", ()))
    with pytest.raises(SimheteError, match=r"marks size-dependent cells, but its Builder has no size table: "
                                           r"use Builder\(size_table\(ctx\)\)"):
        bare.build(ctx.pools(), (), 1, {"policy": "test"})


class _Unmarked(Policy):
    """A policy that forgets to mark a size-dependent allocation: VERIFY catches it on binding."""
    name = "unmarked"

    def structure_key(self, ctx: Context) -> tuple:
        return ("unmarked", len(ctx.blocks))

    def build(self, ctx: Context):
        b = Builder(size_table(ctx))
        blk = ctx.blocks[1]
        b.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops,
              allocs=[new_alloc("act", "gpu0", blk.act_bytes, MemClass.ACTIVATIONS)], frees=["act"],
              sized=(1, "fwd", (None,)))
        return b.build(ctx.pools(), (), 1, {"policy": self.name})


def test_verify_catches_an_unmarked_size(monkeypatch):
    monkeypatch.setattr(structures, "VERIFY", True)
    cache.clear()
    s = load_scenario(BASE)
    pol = _Unmarked(None)
    build_schedule(pol, resolve(s)[0])
    with pytest.raises(SimheteError, match="differs from a fresh build"):
        build_schedule(pol, resolve(s.with_changes(**{"train.micro_batch": 7}))[0])


@pytest.mark.parametrize("gpu_memory", [3 * 2**30, 30 * 2**30, 2**36])
def test_bound_through_the_indexed_structure_keeps_the_memory_checks(gpu_memory):
    """A bound schedule whose structure's index is kept takes the index's memory at t = 0 (kept
    per initial-buffers tuple) and capacities of its own: initial overflow, OOM mid-run and a fit
    all give the reference's timeline after the structure was indexed."""
    s = load_scenario(ROOT / "scenarios" / "llama2-13b_h100-pcie_zero-offload.yaml")
    ctx0, pol = resolve(s)
    t = KeptStructure(pol.build(ctx0))
    first = t.schedule(pol, ctx0)
    simulate_fast(first, ctx0.cost.durations(first), ctx0.cost.interference())
    assert t.structure.derived.get("engine.index") is not None
    s1 = s.with_changes(**{"train.micro_batch": 3, "hardware": {"profile": "h100-pcie", "gpu_memory": gpu_memory}})
    ctx1, pol1 = resolve(s1)
    got, fresh = t.schedule(pol1, ctx1), pol1.build(ctx1)
    durs, rules = ctx1.cost.durations(fresh), ctx1.cost.interference()
    ref = simulate_simpy(fresh, durs, rules)
    t.bound.clear()
    assert timeline_key(simulate_fast(t.schedule(pol1, ctx1), durs, rules)) == timeline_key(ref)
    assert timeline_key(simulate_fast(got, durs, rules)) == timeline_key(ref)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(points=st.lists(st.tuples(st.integers(1, 6), st.sampled_from([32, 64, 128]),
                                 st.sampled_from([2**31, 3 * 2**30, 2**34])), min_size=2, max_size=4),
       verify=st.booleans())
def test_autohete_plans_bind_exactly(points, verify, monkeypatch):
    """AutoHete builds every point (its MILP reads every size) but each candidate's structure
    follows from its plan alone: a point whose plan was seen before gets that plan's structure
    bound to its sizes, which VERIFY checks against a fresh build; the result equals a run with
    nothing kept."""
    monkeypatch.setattr(structures, "VERIFY", True)
    base = load_scenario(BASE).with_changes(policy="autohete", knobs={"verify": verify})
    runs = []
    cache.clear()
    for mb, seq, mem in points:
        s = base.with_changes(**{"train.micro_batch": mb, "train.seq_len": seq,
                                 "hardware.gpu_memory": mem})
        runs.append((s, run(s, check=True)))
    for s, got in runs:
        cache.clear()
        fresh = run(s, check=False)
        assert fresh.summary == got.summary
        assert format_schedule(fresh.schedule) == format_schedule(got.schedule)
    plans = [r.schedule.meta["checkpoint"] + r.schedule.meta["offload_param"] + r.schedule.meta["offload_optimizer"]
             for _, r in runs]
    structs = [r.schedule.table.structure for _, r in runs]
    keys = [resolve(s)[0] for s, _ in runs]
    for i in range(len(runs)):        # one structure per plan (and skeleton decisions), no other sharing
        for j in range(i):
            same = plans[i] == plans[j] and size_decisions(keys[i]) == size_decisions(keys[j])
            assert (structs[i] is structs[j]) == same
