"""Structural templates (simhete/policy/template.py): a template resized for a point equals a fresh
build of that point exactly — schedule, every table column, allocation bytes — and simulates to the
same timeline; for every shipped scenario whose policy opts in, and over drawn sizes and knobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simhete import cache
from simhete.engine import simulate_fast, simulate_simpy
from simhete.errors import SimheteError
from simhete.opkinds import Action, At, MemClass
from simhete.policy import Builder, Context, Policy, template
from simhete.policy.template import Template, build_schedule, same_schedule
from simhete.scenario import load_scenario
from simhete.schedule import check_schedule
from simhete.schedule.model import new_alloc
from simhete.schedule.text import format_schedule
from simhete.sim import resolve, run

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def opts_in(path: Path) -> bool:
    ctx, policy = resolve(load_scenario(path))
    return policy.structure_key(ctx) is not None


TEMPLATED = [p for p in SCENARIOS if opts_in(p)]


def timeline_key(tl) -> tuple:
    return (tl.records, tl.mem_events, tl.peak, tl.peak_by_class, tl.oom)


def assert_resizes(s0, s1, simulate: bool = True) -> None:
    """Template from ``s0``'s fresh build, resized for ``s1``, equals ``s1``'s fresh build."""
    ctx0, pol0 = resolve(s0)
    ctx1, pol1 = resolve(s1)
    k0, k1 = pol0.structure_key(ctx0), pol1.structure_key(ctx1)
    if k0 != k1:     # only what the policy decides from sizes (a window) may differ: built afresh
        assert k0[:3] == k1[:3] and k0[3] != k1[3], "sizes alone changed more than the policy's decisions"
        return
    t = Template(pol0.build(ctx0), ctx0, pol0)
    got = t.resize(ctx1)
    fresh = pol1.build(ctx1)
    assert format_schedule(got) == format_schedule(fresh)
    assert same_schedule(got, fresh)
    assert got.table.shape is t.table.shape
    if simulate:
        durs, rules = ctx1.cost.durations(fresh), ctx1.cost.interference()
        assert ctx1.cost.durations(got) == durs
        ref = simulate_simpy(fresh, durs, rules)
        cache.clear()
        simulate_fast(t.resize(ctx0), ctx0.cost.durations(t.resize(ctx0)), ctx0.cost.interference())  # index the template's structure
        assert timeline_key(simulate_fast(got, durs, rules)) == timeline_key(ref)


def test_zero_offload_opts_in():
    assert any("zero-offload" in p.name for p in TEMPLATED)


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.stem)
def test_shipped_scenario_resized_equals_fresh_build(path):
    s = load_scenario(path)
    tr = s.data.train
    assert_resizes(s, s)
    assert_resizes(s, s.with_changes(**{"train.micro_batch": tr.micro_batch + 1}))
    seq = max(16, tr.seq_len // 2)
    assert_resizes(s.with_changes(**{"train.seq_len": seq}), s)
    assert_resizes(s, s.with_changes(**{"train.micro_batch": 1, "train.seq_len": seq}))
    other = "h200-sxm" if s.data.hardware != "h200-sxm" else "a100-80gb-sxm"
    gpus = resolve(s)[0].n_gpus
    assert_resizes(s, s.with_changes(hardware={"profile": other, "gpus": gpus}), simulate=False)


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.stem)
def test_shipped_scenario_through_the_cache(path, monkeypatch):
    """The sweep path (sim.run → build_schedule) on a template and a resize, checked by VERIFY."""
    monkeypatch.setattr(template, "VERIFY", True)
    template.clear()
    s = load_scenario(path)
    a = run(s, check=True)
    s1 = s.with_changes(**{"train.micro_batch": s.data.train.micro_batch + 1})
    b = run(s1, check=True)
    (c0, p0), (c1, p1) = resolve(s), resolve(s1)
    same = p0.structure_key(c0) == p1.structure_key(c1)     # unless a size decision (a window) changed
    assert a.schedule.table.shape is not None
    assert (b.schedule.table.shape is a.schedule.table.shape) == same
    again = run(s, check=False)
    assert again.schedule is a.schedule          # equal sizes: the very schedule, re-priced
    assert again.summary == a.summary


def test_check_schedule_accepts_resized():
    s = load_scenario(TEMPLATED[0])
    ctx, pol = resolve(s)
    t = Template(pol.build(ctx), ctx, pol)
    ctx1, _ = resolve(s.with_changes(**{"train.micro_batch": s.data.train.micro_batch + 2}))
    assert check_schedule(t.resize(ctx1), capacity=False) == []


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
def test_drawn_sizes_resize_exactly(a, b, gpus, accum, n_layers, mode, modes, every, pin, iterations, recompute,
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

    assert_resizes(point(*a), point(*b), simulate=gpus == 1)


def test_a_wrong_size_code_is_caught():
    """The template's own check: a cell marked with a code that does not give its value."""
    s = load_scenario(BASE)
    ctx, _ = resolve(s)
    blk = ctx.blocks[1]
    b = Builder()
    b.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops,
          allocs=[new_alloc("act", "gpu0", blk.act_bytes, MemClass.ACTIVATIONS)], frees=["act"],
          sized=(1, "fwd", ("ckpt",)))
    sched = b.build(ctx.pools(), (), 1, {"policy": "test"})
    assert blk.act_bytes != blk.ckpt_bytes
    with pytest.raises(SimheteError, match="do not reproduce"):
        Template(sched, ctx)


class _Unmarked(Policy):
    """A policy that forgets to mark a size-dependent allocation: VERIFY catches it on resize."""
    name = "unmarked"

    def structure_key(self, ctx: Context) -> tuple:
        return ("unmarked", len(ctx.blocks))

    def build(self, ctx: Context):
        b = Builder()
        blk = ctx.blocks[1]
        b.add(Action.FORWARD, At(1, blk.name), "gpu0.compute", blk.fwd_ops,
              allocs=[new_alloc("act", "gpu0", blk.act_bytes, MemClass.ACTIVATIONS)], frees=["act"],
              sized=(1, "fwd", (None,)))
        return b.build(ctx.pools(), (), 1, {"policy": self.name})


def test_verify_catches_an_unmarked_size(monkeypatch):
    monkeypatch.setattr(template, "VERIFY", True)
    template.clear()
    s = load_scenario(BASE)
    pol = _Unmarked(None)
    build_schedule(pol, resolve(s)[0])
    with pytest.raises(SimheteError, match="differs from a fresh build"):
        build_schedule(pol, resolve(s.with_changes(**{"train.micro_batch": 7}))[0])


@pytest.mark.parametrize("gpu_memory", [3 * 2**30, 30 * 2**30, 2**36])
def test_resized_through_the_known_shape_keeps_the_memory_checks(gpu_memory):
    """A resized schedule recognised by its shape takes its structure's memory at t = 0 (kept per
    initial-buffers tuple) and capacities of its own: initial overflow, OOM mid-run and a fit all
    give the reference's timeline after the template's structure was indexed."""
    s = load_scenario(ROOT / "scenarios" / "llama2-13b_h100-pcie_zero-offload.yaml")
    ctx0, pol = resolve(s)
    t = Template(pol.build(ctx0), ctx0)
    cache.clear()
    simulate_fast(t.resize(ctx0), ctx0.cost.durations(t.resize(ctx0)), ctx0.cost.interference())
    s1 = s.with_changes(**{"train.micro_batch": 3, "hardware": {"profile": "h100-pcie", "gpu_memory": gpu_memory}})
    ctx1, pol1 = resolve(s1)
    got, fresh = t.resize(ctx1), pol1.build(ctx1)
    durs, rules = ctx1.cost.durations(fresh), ctx1.cost.interference()
    ref = simulate_simpy(fresh, durs, rules)
    t.reused.clear()
    assert timeline_key(simulate_fast(t.resize(ctx1), durs, rules)) == timeline_key(ref)
    assert timeline_key(simulate_fast(got, durs, rules)) == timeline_key(ref)
