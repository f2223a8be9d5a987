"""Replay: real torch execution of simulated schedules — loss parity with a plain training loop
(also with gradient accumulation), data-movement bugs caught, memory accounting with known answers,
safety refusal, ordering."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from simhete.errors import ConfigError
from simhete.opkinds import Action
from simhete.hw.profile import load_profile
from simhete.replay.config import scaled_scenario
from simhete.replay.device import Device, check_fits
from simhete.replay.executor import Executor, issue_order
from simhete.policy.registry import get_policy, list_policies
from simhete.replay.model import Step, batch_of, data, forward, init_master, n_params
from simhete.replay.reference import reference_losses
from simhete.replay.state import ReplayError
from simhete.scenario import scenario_from_dict
from simhete.schedule import Schedule
from simhete.sim import run as simulate
from simhete.workload import build_workload, get_model

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "hwprofiles" / "cpu-local.yaml"
TINY = {"n_layers": 2, "hidden": 64, "heads": 4, "vocab": 256, "micro_batch": 2, "seq_len": 32, "lr": 0.01}


def tiny(policy: str, knobs: dict | None = None, model: str = "gpt-like-h768-l12", dtype: str = "fp32",
         iterations: int = 3, grad_accum: int = 1):
    """Simulate a tiny scenario on the CPU-device profile; returns the simulator's Result. ZeRO-1/2
    policies get 1e6-element buckets unless told: DeepSpeed's default 5e8 sizes an ipg buffer of
    2-4 GB, beyond the 2 GiB device."""
    knobs = dict(knobs or {})
    if policy in ("zero-offload", "zero-2"):
        knobs.setdefault("reduce_bucket_size", 1e6)
    s = scenario_from_dict({
        "model": model, "hardware": {"profile": str(PROFILE), "gpu_memory": "2GiB"},
        "train": {"micro_batch": 2, "seq_len": 32, "grad_accum": grad_accum}, "iterations": iterations,
        "policy": policy,
        "knobs": knobs, "replay": {**TINY, "dtype": dtype}})
    return simulate(scaled_scenario(s))


def replay(res, schedule: Schedule | None = None):
    ex = Executor(schedule or res.schedule, res.context.workload, Device(), seed=0, lr=TINY["lr"])
    return ex.run({r.name: r.start for r in res.timeline.records})


def ref(res):
    return reference_losses(res.context.workload, res.schedule.iterations, seed=0, lr=TINY["lr"], threads=1,
                            grad_accum=res.context.grad_accum)


def without(s: Schedule, drop) -> Schedule:
    """The schedule minus the tasks ``drop(task)`` selects (their dependants lose the edge)."""
    gone = {t.name for t in s.tasks if drop(t)}
    tasks = tuple(dataclasses.replace(t, deps=tuple(d for d in t.deps if d not in gone))
                  for t in s.tasks if t.name not in gone)
    return Schedule(tasks, dict(s.pools), s.initial, s.iterations, dict(s.meta))


def bypass(s: Schedule, drop) -> Schedule:
    """The schedule minus the tasks ``drop(task)`` selects, their dependants waiting for the dropped
    tasks' own dependencies instead (so only the dropped work is missing, not an ordering)."""
    gone = {t.name: t.deps for t in s.tasks if drop(t)}

    def deps(t):
        out = []
        for d in t.deps:
            out += gone[d] if d in gone else [d]
        return tuple(dict.fromkeys(out))

    tasks = tuple(dataclasses.replace(t, deps=deps(t)) for t in s.tasks if t.name not in gone)
    return Schedule(tasks, dict(s.pools), s.initial, s.iterations, dict(s.meta))


CASES = [
    ("gpu-only", {}, "gpt-like-h768-l12", "fp32"),
    ("gpu-only", {"checkpointing": "full"}, "gpt-like-h768-l12", "fp32"),
    ("zero-offload", {"reduce_bucket_size": 2e4}, "gpt-like-h768-l12", "fp32"),
    ("zero-offload", {"activations": ["swap", "recompute"]}, "llama3-8b", "bf16"),
    ("zero-infinity", {"stage3_param_persistence_threshold": 1e3}, "llama3-8b", "fp32"),
    ("zero-infinity", {"ratio": 0.5, "stage3_param_persistence_threshold": 1e3}, "gpt-like-h768-l12", "bf16"),
    ("stronghold", {"window_size": 1}, "gpt-like-h768-l12", "fp32"),
    ("gpu-only", {"activations": ["swap", "keep"]}, "llama3-8b", "bf16"),
]


@pytest.mark.parametrize("policy,knobs,model,dtype", CASES)
def test_replayed_losses_match_the_plain_training_loop(policy, knobs, model, dtype):
    res = tiny(policy, knobs, model, dtype)
    out = replay(res)
    expect = ref(res)
    assert len(out.losses) == 3
    assert out.losses == pytest.approx(expect, rel=1e-5 if dtype == "fp32" else 1e-3)
    assert len(set(expect)) == 3   # the model trains: every iteration's loss differs


ACCUM_CASES = [
    ("gpu-only", {}, "gpt-like-h768-l12", "fp32", 2),
    ("gpu-only", {"checkpointing": "full"}, "gpt-like-h768-l12", "fp32", 3),
    ("zero-offload", {"reduce_bucket_size": 2e4}, "gpt-like-h768-l12", "fp32", 2),
    ("zero-offload", {"activations": ["swap", "recompute"]}, "llama3-8b", "bf16", 2),
    ("zero-offload", {"reduce_bucket_size": 2e4, "overlap_comm": False}, "gpt-like-h768-l12", "fp32", 3),
    ("zero-infinity", {"stage3_param_persistence_threshold": 1e3}, "llama3-8b", "fp32", 2),
    ("zero-infinity", {"ratio": 0.5, "stage3_param_persistence_threshold": 1e3}, "gpt-like-h768-l12", "bf16", 2),
    ("stronghold", {"window_size": 1}, "gpt-like-h768-l12", "fp32", 2),
]


def test_freeing_an_older_weight_buffer_keeps_the_weights_a_later_fetch_brought():
    """StrongHold, window 1: block b0's forward weights (``weights.g0.b0``) go home on the D2H
    stream while the H2D stream fetches them again for the backward (``it1.w.b.b0``). On a loaded
    machine the copy home can finish after the fetch; forcing that order (the copy home after the
    fetch, the backward after both) must still leave the fetched weights on the device, as the
    simulator's buffers say (each free releases its own buffer)."""
    res = tiny("stronghold", {"window_size": 1})
    late = {"it1.D2H.w.b0": ("it1.H2D.wb.b0",), "it1.B.b0": ("it1.D2H.w.b0",)}
    names = {t.name for t in res.schedule.tasks}
    assert set(late) <= names and "it1.H2D.wb.b0" in names
    sched = dataclasses.replace(res.schedule, tasks=tuple(
        dataclasses.replace(t, deps=t.deps + late.get(t.name, ())) for t in res.schedule.tasks))
    out = replay(res, sched)
    assert out.losses == pytest.approx(ref(res), rel=1e-5)


@pytest.mark.parametrize("policy,knobs,model,dtype,k", ACCUM_CASES)
def test_accumulating_replays_match_the_plain_training_loop(policy, knobs, model, dtype, k):
    """k micro-steps per iteration, each on its own micro-batch with its own dropout masks, the
    gradients added where the schedule puts them (device buffer or host accumulation buffer),
    one optimizer step: the same losses as the plain loop accumulating into ``.grad``."""
    assert get_policy(policy).accumulates
    res = tiny(policy, knobs, model, dtype, grad_accum=k)
    names = [t.name for t in res.schedule.tasks]
    assert f"it3.m{k}.B.embed" in names and not any(f".m{k + 1}." in n for n in names)
    out = replay(res)
    expect = ref(res)
    assert len(out.losses) == 3
    assert out.losses == pytest.approx(expect, rel=1e-5 if dtype == "fp32" else 1e-3)
    assert len(set(expect)) == 3
    plain = reference_losses(res.context.workload, 3, seed=0, lr=TINY["lr"], threads=1)
    assert all(abs(a - b) > 1e-4 for a, b in zip(expect, plain))   # the accumulated run is another run


@pytest.mark.parametrize("policy", list_policies())
def test_every_policy_that_accumulates_replays_it(policy):
    """``Policy.accumulates`` is the contract: such a policy's accumulating schedule replays with
    loss parity (the policies not in ACCUM_CASES here with their default knobs); the others refuse
    ``train.grad_accum`` > 1 when building."""
    if not get_policy(policy).accumulates:
        with pytest.raises(ConfigError, match="train.grad_accum"):
            tiny(policy, grad_accum=2)
        return
    if policy in {c[0] for c in ACCUM_CASES}:
        pytest.skip("covered with knobs by test_accumulating_replays_match_the_plain_training_loop")
    res = tiny(policy, grad_accum=2)
    assert replay(res).losses == pytest.approx(ref(res), rel=1e-5)


@pytest.mark.parametrize("policy,knobs,drop", [
    ("zero-offload", {"reduce_bucket_size": 2e4}, "it1.m2.D2H.g.ga.k0"),
    ("stronghold", {"window_size": 1}, "it1.m2.D2H.g.ga.b1"),
])
def test_a_dropped_accumulation_copy_makes_the_losses_diverge(policy, knobs, drop):
    """Without the H2D that brings micro-step 1's host accumulation back to be added, micro-step
    2's copy overwrites it: iteration 1's step misses half the gradient of those blocks."""
    res = tiny(policy, knobs, grad_accum=2)
    assert drop in {t.name for t in res.schedule.tasks}
    out, expect = replay(res, bypass(res.schedule, lambda t: t.name == drop)).losses, ref(res)
    assert out[0] == pytest.approx(expect[0], rel=1e-6)    # iteration 1 uses the initial weights
    assert abs(out[1] - expect[1]) > 1e-4 and abs(out[2] - expect[2]) > 1e-4


def test_a_missing_micro_step_copy_is_reported_by_name():
    res = tiny("zero-offload", {"reduce_bucket_size": 2e4}, grad_accum=2)
    broken = bypass(res.schedule, lambda t: t.name == "it1.D2H.g.k0")
    with pytest.raises(ReplayError, match=r"it1\.m2\.D2H\.g\.ga\.k0: no accumulated gradient of block \w+ "
                                          r"on the host \(the previous micro-step's D2H is missing\)"):
        replay(res, broken)


def test_iterations_must_hold_the_same_micro_steps():
    res = tiny("gpu-only", grad_accum=2)
    broken = without(res.schedule, lambda t: t.name.startswith("it2.m2."))
    with pytest.raises(ReplayError, match=r"iteration 2 has forward micro-steps \[1\]; the replay needs "
                                          r"micro-steps 1 to 2 in every iteration"):
        Executor(broken, res.context.workload, Device())


def test_each_micro_step_has_its_own_data_and_dropout_masks():
    spec = dataclasses.replace(get_model("gpt-like-h768-l12"), n_layers=1, hidden=64, n_heads=4,
                               n_kv_heads=4, ffn_hidden=96, vocab=100)
    assert spec.dropout
    toks = data(spec, 2, 2, 16, 0, micro_steps=3)
    assert toks.shape == (2, 3, 2, 17)
    assert torch.equal(data(spec, 2, 2, 16, 0, micro_steps=3), toks)       # deterministic in seed
    assert torch.equal(data(spec, 2, 2, 16, 0)[:, 0], data(spec, 2, 2, 16, 0, micro_steps=1)[:, 0])
    inp = {m: batch_of(toks, 2, m)[0] for m in (1, 2, 3)}
    assert not torch.equal(inp[1], inp[2]) and not torch.equal(inp[2], inp[3])
    w = init_master(spec, "b0", 1, 0)
    x = torch.randn(2, 16, 64)

    def block(m):
        return forward(spec, "b0", w, x, Step(1, 1, 0, inp[1], inp[1], m))

    assert torch.equal(block(2), block(2))           # a recomputation redraws the same masks
    assert not torch.equal(block(1), block(2))       # another micro-step draws others


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_every_task_is_measured_once_and_respects_its_dependencies(grad_accum):
    res = tiny("zero-offload", {"activations": ["swap", "recompute"]}, grad_accum=grad_accum)
    out = replay(res)
    tl = out.timeline
    assert [r.name for r in tl.records] == [t.name for t in res.schedule.tasks]
    # every task's thread CPU time is known and never exceeds its wall time (clock resolution:
    # thread_time ticks are coarser than perf_counter's)
    assert set(out.cpu_s) == {t.name for t in res.schedule.tasks}
    assert all(0.0 <= out.cpu_s[r.name] <= r.dur + 1e-3 for r in tl.records)
    end = {r.name: r.end for r in tl.records}
    for t, r in zip(res.schedule.tasks, tl.records):
        assert (r.stream, r.cat, r.block) == (t.stream, t.cat, t.block)
        assert r.end >= r.start >= 0.0
        assert all(r.start >= end[d] for d in t.deps)
    by_stream: dict[str, list] = {}
    for r in tl.records:
        by_stream.setdefault(r.stream, []).append(r)
    for recs in by_stream.values():   # a stream runs one task at a time
        recs.sort(key=lambda r: r.start)
        assert all(a.end <= b.start for a, b in zip(recs, recs[1:]))


def test_a_dropped_weight_copy_makes_the_losses_diverge():
    """ZeRO-Offload without the H2D of b0's updated weights: the device keeps stale weights."""
    res = tiny("zero-offload")
    broken = without(res.schedule, lambda t: t.name.endswith("H2D.w.b0"))
    out, expect = replay(res, broken).losses, ref(res)
    assert out[0] == pytest.approx(expect[0], rel=1e-6)    # iteration 1 uses the initial weights
    assert abs(out[1] - expect[1]) > 1e-4 and abs(out[2] - expect[2]) > 1e-4


def test_a_missing_swap_in_is_reported_not_silently_read():
    res = tiny("gpu-only", {"activations": ["swap", "keep"]})
    # the backward then waits for the swap-out instead (``without`` would leave it free to run
    # before the swap-out on a loaded machine, and find the activations still on the device)
    broken = bypass(res.schedule, lambda t: t.name == "it1.H2D.act.b0")
    with pytest.raises(ReplayError, match="swapped out to the host"):
        replay(res, broken)


def test_a_missing_weight_fetch_is_reported():
    res = tiny("zero-infinity", {"stage3_param_persistence_threshold": 1e3})
    fetch = next(t for t in res.schedule.tasks if t.name.startswith("it1.H2D.wf") and t.block == 2)
    broken = without(res.schedule, lambda t: t.name == fetch.name)
    with pytest.raises(ReplayError, match="weights of block b1 are not on the device"):
        replay(res, broken)


def test_unknown_actions_and_streams_are_refused():
    res = tiny("gpu-only")
    t0 = res.schedule.tasks[0]
    bad = dataclasses.replace(res.schedule, tasks=(dataclasses.replace(t0, action=Action.CHUNK_AG),))
    with pytest.raises(ReplayError, match=r"task it1.F.embed: no replay for action CHUNK_AG \(AG.c\); "
                                          "known: .*ADAM_CPU"):
        Executor(bad, res.context.workload, Device())
    bad = dataclasses.replace(res.schedule, tasks=(dataclasses.replace(t0, action=None, at=None),))
    with pytest.raises(ReplayError, match="task it1.F.embed: no action"):
        Executor(bad, res.context.workload, Device())
    bad = dataclasses.replace(res.schedule, tasks=(dataclasses.replace(t0, stream="gpu1.compute"),))
    with pytest.raises(ReplayError, match="stream gpu1.compute"):
        Executor(bad, res.context.workload, Device())


def test_measured_memory_has_the_model_states_it_must_hold():
    """fp32 gpu-only: weights (= master) 4 B + Adam m, v 8 B per parameter on the device, none on
    the host; fp32 ZeRO-Offload: 4 B weights on the device, and master 4 + m, v 8 + gradients 4 on
    the host (Rajbhandari et al. 2020 / Ren et al. 2021 accounting)."""
    gpu = tiny("gpu-only")
    params = gpu.context.workload.params
    peak = replay(gpu).timeline.peak
    assert peak["cpu"] == 0
    assert peak["gpu0"] >= 12 * params
    zo = tiny("zero-offload")
    peak = replay(zo).timeline.peak
    assert peak["cpu"] == 16 * params
    assert 4 * params <= peak["gpu0"] < replay(gpu).timeline.peak["gpu0"] - 8 * params + 1


@pytest.mark.parametrize("model", ["gpt-like-h768-l12", "llama3-8b", "opt-1.3b"])
def test_replay_blocks_have_exactly_the_workload_parameters(model):
    spec = dataclasses.replace(get_model(model), n_layers=2, hidden=64, n_heads=4,
                               n_kv_heads=4 if model != "llama3-8b" else 1, ffn_hidden=96, vocab=100)
    wl = build_workload(spec, 2, 16, "fp32")
    for b in wl.blocks:
        assert n_params(init_master(spec, b.name, b.index, 0)) == b.params, b.name



def test_replay_mlp_runs_the_gemms_the_workload_prices():
    # SwiGLU: separate gate and up projections, each (f, h), as the workload's GEMM (T, f, h) ×2;
    # GeLU: one fc1 (f, h)
    from simhete.opkinds import OpKind
    for model in ("llama3-8b", "gpt-like-h768-l12"):
        spec = dataclasses.replace(get_model(model), n_layers=1, hidden=64, n_heads=4,
                                   n_kv_heads=4, ffn_hidden=96, vocab=100)
        w = init_master(spec, "b0", 1, 0)
        fc1 = [op for op in build_workload(spec, 2, 16, "fp32").blocks[1].fwd_ops
               if op.kind is OpKind.GEMM and op.shape == (32, 96, 64)]
        names = ("gate.w", "up.w") if spec.mlp == "swiglu" else ("fc1.w",)
        assert [tuple(w[n].shape) for n in names] == [(96, 64)] * len(names)
        assert [op.count for op in fc1] == [len(names)]
        assert not any(n in w for n in ("gate.w", "up.w", "fc1.w") if n not in names)

def test_refuses_before_allocating_when_the_predicted_peak_does_not_fit():
    class Small(Device):
        def free_bytes(self):
            return {"gpu0": 3 * 2**30, "cpu": 3 * 2**30}

    with pytest.raises(ReplayError) as e:
        check_fits({"gpu0": 2 * 2**30, "cpu": 2 * 2**30}, Small())
    msg = str(e.value)
    assert "\n" not in msg
    assert "predicted peak (2.00 GiB device + 2.00 GiB host) exceeds the 3.00 GiB available" in msg
    check_fits({"gpu0": 2**30, "cpu": 2**30}, Small())   # fits: no error


def test_issue_order_is_topological_and_follows_predicted_starts():
    res = tiny("zero-offload")
    start = {r.name: r.start for r in res.timeline.records}
    order = issue_order(res.schedule, start)
    pos = {res.schedule.tasks[i].name: k for k, i in enumerate(order)}
    assert sorted(order) == list(range(len(res.schedule.tasks)))
    assert all(pos[d] < pos[t.name] for t in res.schedule.tasks for d in t.deps)
    starts = [start[res.schedule.tasks[i].name] for i in order]
    assert starts == sorted(starts)   # the simulated start order is itself topological here


def test_replay_shape_scales_the_model_and_keeps_its_ratios():
    s = scenario_from_dict({"model": "llama3-8b", "hardware": "h100-sxm", "train": {"micro_batch": 1, "seq_len": 8192},
                            "replay": {"n_layers": 2, "hidden": 256, "vocab": 1000, "seq_len": 64}})
    d = scaled_scenario(s, iterations=5).data
    # LLaMA-3-8B: 32 heads of 128, 8 K/V heads, ffn 14336 = 3.5 h (Dubey et al. 2024, Table 3)
    assert (d.model.n_layers, d.model.hidden, d.model.n_heads, d.model.n_kv_heads) == (2, 256, 2, 1)
    assert (d.model.ffn_hidden, d.model.vocab, d.train.seq_len, d.train.micro_batch) == (896, 1000, 64, 1)
    assert (d.train.dtype, d.iterations) == ("fp32", 5)


def test_bad_replay_sections_are_one_line_errors():
    base = {"model": "gpt-like-h768-l12", "hardware": "h100-sxm", "train": {"micro_batch": 1, "seq_len": 64}}
    with pytest.raises(ConfigError, match=r"replay\.hiden"):
        scaled_scenario(scenario_from_dict({**base, "replay": {"hiden": 64}}, "s.yaml"))
    with pytest.raises(ConfigError, match=r"s\.yaml: replay\.heads: bad value 5; allowed: a divisor of hidden=64"):
        scaled_scenario(scenario_from_dict({**base, "replay": {"hidden": 64, "heads": 5}}, "s.yaml"))


def test_the_replay_package_never_imports_simpy():
    for path in (ROOT / "simhete" / "replay").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("simpy"), path
                assert not n.startswith("simhete.engine") or n == "simhete.engine.timeline", (path, n)


def test_the_cpu_replay_runs_streams_on_single_threaded_workers():
    before = torch.get_num_threads()
    res = tiny("zero-offload")
    replay(res)
    assert torch.get_num_threads() == before   # restored after the run


# -- ZeRO-Offload's delayed parameter update (DPU) ------------------------------------------------

DPU_CASES = [
    ({"reduce_bucket_size": 2e4}, "gpt-like-h768-l12", "fp32", 1),
    ({"activations": ["swap", "recompute"]}, "llama3-8b", "bf16", 1),
    ({"reduce_bucket_size": 2e4}, "gpt-like-h768-l12", "fp32", 2),
]


def dpu_replay(res, schedule: Schedule | None = None, start: dict | None = None):
    """Replay and the executor (whose state holds the final master weights)."""
    ex = Executor(schedule or res.schedule, res.context.workload, Device(), seed=0, lr=TINY["lr"])
    return ex.run({r.name: r.start for r in res.timeline.records} if start is None else start), ex


def dpu_ref(res, iterations: int = 4):
    from simhete.replay.reference import reference_run
    return reference_run(res.context.workload, iterations, seed=0, lr=TINY["lr"], threads=1,
                         grad_accum=res.context.grad_accum,
                         delayed_update=res.schedule.meta.get("delayed_update") == "true")


@pytest.mark.parametrize("knobs,model,dtype,k", DPU_CASES)
def test_delayed_update_replays_match_the_delayed_reference_loop(knobs, model, dtype, k):
    """Iteration k computes with the weights of step k-2 (its first forward waits for iteration
    k-2's refresh only): the replay matches the reference loop that applies iteration k-1's step
    after iteration k's backward, in the predicted issue order and in plain index order; the final
    master weights are those after every iteration's step (the last one's included)."""
    res = tiny("zero-offload", {**knobs, "delayed_update": True}, model, dtype, iterations=4, grad_accum=k)
    assert res.schedule.meta["delayed_update"] == "true"
    names = {t.name for t in res.schedule.tasks}
    assert "it4.ADAM.cpu.b0" in names                           # the last step runs in the schedule;
    assert "it4.H2D.w.b0" not in names and "it3.H2D.w.b0" in names  # its refresh is after the window
    expect, master = dpu_ref(res)
    rtol = 1e-5 if dtype == "fp32" else 1e-3
    for start in (None, {}):
        out, ex = dpu_replay(res, start=start)
        assert out.losses == pytest.approx(expect, rel=rtol)
        for i, m in master.items():
            for name, v in m.items():
                torch.testing.assert_close(ex.state.blocks[i].master[name], v, rtol=rtol, atol=1e-7)
        st = ex.state   # every gradient and weight version consumed
        assert not st.host_grads and not st.w_snap and not st.w_staged
        assert all(v <= {4} for v in st.unsent.values())   # only the last step's weights unsent
    # the policy sends step k's weights after iteration k+1's backward of the block (its last use
    # of the old ones), so no refresh can land under a computation that still needs the old ones:
    # every refresh is written in place (the forced-reorder test exercises the kept-aside path)
    assert ex.refresh and not any(any(v.values()) for v in ex.refresh.values())
    deps = {t.name: t.deps for t in res.schedule.tasks}
    last_b = "it2.B.b0" if k == 1 else f"it2.m{k}.B.b0"      # the last micro-step's backward
    assert last_b in deps["it1.H2D.w.b0"] and "it1.H2D.w.b0" in deps["it2.ADAM.cpu.b0"]
    assert ex.need_w["it3.F.b0"] == {1: 1} and ex.need_w["it2.B.b0"] == {1: 0}
    # DPU is another run: iteration 1 alike, iteration 2 on computes with older weights
    plain = tiny("zero-offload", knobs, model, dtype, iterations=4, grad_accum=k)
    assert plain.schedule.meta["delayed_update"] == "false"
    without_dpu = dpu_ref(plain)[0]
    assert expect[0] == without_dpu[0]
    assert all(abs(a - b) > 1e-5 for a, b in zip(expect[1:], without_dpu[1:]))
    assert replay(plain).losses == pytest.approx(without_dpu, rel=rtol)


def test_delayed_update_each_step_reads_its_own_gradient_and_weights_in_any_order():
    """Force the orders DPU allows but the predicted timeline rarely shows: iteration 1's steps
    after iteration 2's gradients reached the host, and iteration 1's refreshes after iteration 2's
    steps rewrote the host weights. One host gradient or weight copy per block would feed step 1
    iteration 2's gradients and send step 2's weights; keyed by iteration, parity holds."""
    res = tiny("zero-offload", {"reduce_bucket_size": 2e4, "delayed_update": True}, iterations=4)
    s = res.schedule

    def deps(t):
        if t.name.startswith("it1.ADAM.cpu."):
            return t.deps + ("it2.STEP.grads",)
        if t.name.startswith("it1.H2D.w."):
            return t.deps + (t.name.replace("it1.H2D.w.", "it2.ADAM.cpu."),)
        if t.name.startswith("it2.ADAM.cpu."):     # the policy orders step 2 after refresh 1: undo
            return tuple(d for d in t.deps if not d.startswith("it1.H2D.w."))
        return t.deps

    forced = dataclasses.replace(s, tasks=tuple(dataclasses.replace(t, deps=deps(t)) for t in s.tasks))
    out, ex = dpu_replay(res, forced)
    end = {r.name: r.end for r in out.timeline.records}
    start = {r.name: r.start for r in out.timeline.records}
    assert end["it2.D2H.g.k1"] <= start["it1.ADAM.cpu.b0"]
    assert end["it2.ADAM.cpu.b0"] <= start["it1.H2D.w.b0"]
    expect, master = dpu_ref(res)
    assert out.losses == pytest.approx(expect, rel=1e-5)
    for i, m in master.items():
        for name, v in m.items():
            torch.testing.assert_close(ex.state.blocks[i].master[name], v, rtol=1e-5, atol=1e-7)


def test_delayed_update_a_missing_gradient_copy_is_reported_by_the_step():
    res = tiny("zero-offload", {"reduce_bucket_size": 2e4, "delayed_update": True})
    k1 = next(t for t in res.schedule.tasks if t.name == "it2.D2H.g.k1")
    assert k1.frees == ("it2.grad.b0",)
    broken = bypass(res.schedule, lambda t: t.name == "it2.D2H.g.k1")
    with pytest.raises(ReplayError, match=r"^it2\.ADAM\.cpu\.b0: no gradient of block b0 from iteration 2 "
                                          r"on the host \(a D2H is missing\)$"):
        replay(res, broken)


def test_delayed_update_a_dropped_weight_refresh_makes_the_losses_diverge():
    """Without iteration 1's refresh of b0, iteration 3 (the first to wait for it) computes with
    the initial weights of b0; iterations 1 and 2 used them anyway, iteration 4 gets step 2's
    weights from its own refresh (the host master is right), and iteration 5 computes with step 3,
    whose gradients iteration 3 computed with the stale weights."""
    res = tiny("zero-offload", {"reduce_bucket_size": 2e4, "delayed_update": True}, iterations=5)
    out = dpu_replay(res, without(res.schedule, lambda t: t.name == "it1.H2D.w.b0"))[0].losses
    expect = dpu_ref(res, 5)[0]
    assert out[:2] == pytest.approx(expect[:2], rel=1e-6) and out[3] == pytest.approx(expect[3], rel=1e-6)
    assert abs(out[2] - expect[2]) > 1e-5 and abs(out[4] - expect[4]) > 1e-5
