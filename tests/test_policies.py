"""Policies with known answers: degenerate knobs reproduce gpu-only, schedules are well formed,
memory stays within capacity, and data-parallel offload traffic splits 1/N over the GPUs."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from simhete.engine import simulate
from simhete.errors import ConfigError
from simhete.opkinds import COPY_KINDS, MemClass, OpKind
from simhete.policy import list_policies
from simhete.scenario import scenario_from_dict
from simhete.policy.base import host_fp32_bytes
from simhete.schedule import Op, check_schedule
from simhete.search.candidates import choose_schedule
from simhete.sim import resolve

PROFILE = "a100-40gb-pcie-epyc7713"
FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scenario(policy: str, knobs: dict | None = None, *, layers: int = 4, hidden: int = 256, batch: int = 2,
             seq: int = 128, gpus: int = 1, iterations: int = 3, **hw):
    return scenario_from_dict(dict(
        model=f"gpt-like-h{hidden}-l{layers}", hardware=dict(profile=PROFILE, gpus=gpus, **hw),
        train=dict(micro_batch=batch, seq_len=seq), iterations=iterations, policy=policy, knobs=knobs or {}))


def build(s):
    """The schedule the pipeline runs (simhete.sim.run): ``build``, or the best of a policy's
    candidates (AutoHete with ``verify``)."""
    ctx, pol = resolve(s)
    sched = choose_schedule(pol, ctx)
    assert check_schedule(sched, capacity=False) == []
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
def test_stronghold_window_holding_every_block_moves_nothing(layers, extra, checkpointing):
    """w ≥ L: nothing moves and the GPU runs exactly gpu-only's compute tasks (same durations), but
    b1 … b{L−1} each step on the GPU as soon as the backward that follows theirs is done (their own
    optimizers in the artifact) instead of after the whole backward: the same work on one stream,
    so the same iteration time."""
    kn = {"checkpointing": checkpointing}
    _, ref = timeline(scenario("gpu-only", kn, layers=layers))
    sched, got = timeline(scenario("stronghold", {**kn, "window_size": layers + extra}, layers=layers))
    assert not any(op.kind in COPY_KINDS for t in sched.tasks for op in t.ops)
    durs = lambda tl: sorted(round(e - s, 15) for s, e in compute_spans(tl))
    assert durs(got) == durs(ref)
    assert got.steady_iteration_time() == pytest.approx(ref.steady_iteration_time(), rel=1e-12)
    deps = {t.name: set(t.deps) for t in sched.tasks}
    for q in range(1, layers):
        assert deps[f"it2.ADAM.gpu.b{q}"] == {f"it2.B.b{q - 1}"}


def test_stronghold_window_moves_exactly_the_blocks_outside_it():
    """w = 2 of 4 blocks: b2, b3 are fetched in the forward and b0, b1 in the backward (H2D); every
    eviction copies the weights home (D2H.w in the forward for b0, b1; D2H.w2 in the backward for
    b2, b3, with their gradients D2H to the CPU Adam), as the artifact's ``cpu()`` does."""
    ctx, sched = build(scenario("stronghold", {"window_size": 2}, iterations=2))
    it2 = sorted(t.name for t in sched.tasks if t.it == 2 and t.stream in ("gpu0.h2d", "gpu0.d2h"))
    assert it2 == ["it2.D2H.g.b2", "it2.D2H.g.b3", "it2.D2H.w.b0", "it2.D2H.w.b1", "it2.D2H.w2.b2",
                   "it2.D2H.w2.b3", "it2.H2D.wb.b0", "it2.H2D.wb.b1", "it2.H2D.wf.b2", "it2.H2D.wf.b3"]
    adam = sorted(t.name for t in sched.tasks if t.it == 2 and t.stream == "cpu.optim")
    assert adam == ["it2.ADAM.cpu.b2", "it2.ADAM.cpu.b3"]


@pytest.mark.parametrize("w,layers,units", [(2, 6, 4), (3, 5, 5), (1, 4, 2)])
def test_stronghold_gpu_weights_are_the_cache_units(w, layers, units):
    """The artifact preallocates min(2w, L) cache units on the GPU (SHv0 model/transformer.py): the
    GPU's weights are those units' weights plus the embedding/head, exactly, at every point
    (the window's own buffers are 0-byte markers of which block holds a unit)."""
    ctx, _ = build(scenario("stronghold", {"window_size": w}, layers=layers))
    sched, tl = timeline(scenario("stronghold", {"window_size": w}, layers=layers))
    W = max(blk.weight_bytes for blk in ctx.blocks if blk.name.startswith("b"))
    ends = sum(blk.weight_bytes for blk in ctx.blocks if not blk.name.startswith("b"))
    assert [a.bytes for a in sched.initial if a.buf == "cache.g0"] == [units * W]
    assert tl.peak_by_class["gpu0"]["weights"] == units * W + ends
    assert all(a.bytes == 0 for t in sched.tasks if t.stream == "gpu0.h2d" for a in t.allocs)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("w,layers,units", [(2, 6, 4), (3, 8, 6), (1, 4, 2)])
def test_stronghold_cache_units_hold_a_gradient_slot_each(dtype, w, layers, units):
    """Each of the min(2w, L) cache units is a copy of a block's parameters and of its ``.grad``
    (GL_ParallelTransformerLayer.__init__ gives every parameter a pinned gradient of its dtype;
    ParallelTransformer.__init__ copies both into each unit on the GPU), allocated for the whole run.
    At the GPU peak (the head's backward, before any block's backward allocates a fresh gradient)
    the gradients on the GPU are exactly those slots plus the head's own gradient."""
    s = scenario_from_dict(dict(
        model=f"gpt-like-h256-l{layers}", hardware=dict(profile=PROFILE, gpus=1), iterations=3,
        train=dict(micro_batch=2, seq_len=128, dtype=dtype), policy="stronghold",
        knobs={"window_size": w, "checkpointing": "full"}))
    ctx, sched = build(s)
    G = max(blk.grad_bytes for blk in ctx.blocks if blk.name.startswith("b"))
    assert G == {"fp32": 4, "bf16": 2}[dtype] * max(blk.params for blk in ctx.blocks if blk.name.startswith("b"))
    assert [a.bytes for a in sched.initial if a.buf == "cache_grads.g0"] == [units * G]
    _, tl = timeline(s)
    head = next(blk for blk in ctx.blocks if blk.name == "head")
    assert tl.peak_by_class["gpu0"]["grads"] == units * G + head.grad_bytes


def test_stronghold_window_blocks_step_on_the_gpu_right_after_the_next_backward():
    """b1 … b{w−1} have their own GPU optimizers (gl_get_megatron_optimizer): b{q}'s hook on
    b{q−1} submits its step and zero_grad(set_to_none), which frees the fresh gradient B of b{q}
    allocated (G bytes) as soon as b{q−1}'s backward is done; b0, embedding and head share the
    default optimizer, stepped after the whole backward. w = 3 of 6."""
    ctx, sched = build(scenario("stronghold", {"window_size": 3}, layers=6))
    task = {t.name: t for t in sched.tasks}
    G = max(blk.grad_bytes for blk in ctx.blocks if blk.name.startswith("b"))
    for it in (1, 2, 3):
        for q in (1, 2):
            adam = task[f"it{it}.ADAM.gpu.b{q}"]
            assert set(adam.deps) == {f"it{it}.B.b{q - 1}"}
            (grad,) = [a for a in task[f"it{it}.B.b{q}"].allocs if a.cls is MemClass.GRADS]
            assert adam.frees == (grad.buf,) and grad.bytes == G
        for blk in ("b0", "embed", "head"):
            assert set(task[f"it{it}.ADAM.gpu.{blk}"].deps) == {f"it{it}.B.embed"}
    assert not any(f"ADAM.gpu.b{p}" in n for n in task for p in (3, 4, 5))


def after(p: int, w: int) -> str:
    """The block whose backward follows b{p−w}'s (the embedding after b0)."""
    return f"b{p - w - 1}" if p - w > 0 else "embed"


@pytest.mark.parametrize("checkpointing,first", [("none", "B"), ("full", "R")])
def test_stronghold_backward_after_block_p_minus_w_waits_for_block_ps_cpu_update(checkpointing, first):
    """StrongHold's artifact (SHv0/megatron/training.py): the full-backward hook registered on
    b{p−1} is b{p}'s post hook; it submits one thread-pool task that copies b{p}'s weights and
    gradients home and runs its CPU Adam, and attaches that future to b{p−w}, whose
    _backward_pre_hook (a full backward hook too: it runs once b{p−w}'s backward is done) waits
    for it. So (w = 2 of 5) both copies of b{p} wait for B of b{p−1}, ADAM.cpu of b{p} for both
    copies, the first task of the backward after b{p−2}'s waits for ADAM.cpu of b{p}, and the next
    forward's fetch of b{p} waits for it too."""
    ctx, sched = build(scenario("stronghold", {"window_size": 2, "checkpointing": checkpointing}, layers=5))
    deps = {t.name: set(t.deps) for t in sched.tasks}
    for it in (1, 2, 3):
        for p in (2, 3, 4):
            nxt = after(p, 2)   # (the embedding is never recomputed)
            assert f"it{it}.ADAM.cpu.b{p}" in deps[f"it{it}.{'B' if nxt == 'embed' else first}.{nxt}"]
            assert deps[f"it{it}.ADAM.cpu.b{p}"] == {f"it{it}.D2H.g.b{p}", f"it{it}.D2H.w2.b{p}"}
            assert deps[f"it{it}.D2H.w2.b{p}"] == deps[f"it{it}.D2H.g.b{p}"] == {f"it{it}.B.b{p - 1}"}
        for blk in ("b4", "b3", "b2"):
            assert not any("ADAM.cpu" in d for d in deps[f"it{it}.{first}.{blk}"])
        if it > 1:
            assert f"it{it - 1}.ADAM.cpu.b4" in deps[f"it{it}.H2D.wf.b4"]


def test_stronghold_forward_fetch_starts_with_the_forward_w_blocks_earlier():
    """_forward_pre_hook of b{p−w} waits for its futures (the copy home of b{p−2w}) and submits
    b{p}'s cuda(): with w = 2 of 6 the fetch of b{p} waits for the forward before b{p−2}'s (the
    embedding's for b2) and, from b4 on, for the copy home of b{p−4}."""
    ctx, sched = build(scenario("stronghold", {"window_size": 2}, layers=6))
    deps = {t.name: set(t.deps) for t in sched.tasks}
    assert deps["it1.H2D.wf.b2"] == {"it1.F.embed"}
    assert deps["it1.H2D.wf.b3"] == {"it1.F.b0"}
    assert deps["it1.H2D.wf.b4"] == {"it1.F.b1", "it1.D2H.w.b0"}
    assert deps["it2.H2D.wf.b5"] == {"it2.F.b2", "it2.D2H.w.b1", "it1.ADAM.cpu.b5"}


def test_stronghold_cpu_updates_end_inside_their_own_backward():
    """Simulated, the event order the dependencies imply: every iteration's CPU Adam ends before
    that iteration's backward does (no CPU update runs into the next forward), and the backward
    after b{p−w}'s starts only after ADAM.cpu of b{p} has ended."""
    sched, tl = timeline(scenario("stronghold", {"window_size": 2}, layers=6))
    at = {r.name: r for r in tl.records}
    for it in (1, 2, 3):
        adam_end = max(r.end for r in tl.records if r.it == it and r.stream == "cpu.optim")
        assert adam_end <= at[f"it{it}.B.embed"].start
        if it < 3:
            assert adam_end <= at[f"it{it + 1}.F.embed"].start
        for p in range(2, 6):
            assert at[f"it{it}.ADAM.cpu.b{p}"].end <= at[f"it{it}.B.{after(p, 2)}"].start


def test_stronghold_accumulating_backward_waits_for_copies_then_for_the_update():
    """grad_accum 2: in micro-step 1 the backward after b{p−w}'s waits for b{p}'s gradient and
    weight copies of that micro-step (no update yet); in micro-step 2 for b{p}'s CPU Adam."""
    ctx, sched = build(scenario_from_dict(dict(
        model="gpt-like-h256-l4", hardware=dict(profile=PROFILE, gpus=1), iterations=3, policy="stronghold",
        train=dict(micro_batch=2, seq_len=128, grad_accum=2), knobs={"window_size": 2})))
    deps = {t.name: set(t.deps) for t in sched.tasks}
    for p in (2, 3):
        nxt = after(p, 2)
        assert {f"it1.D2H.g.b{p}", f"it1.D2H.w2.b{p}"} <= deps[f"it1.B.{nxt}"]
        assert not any("ADAM" in d for d in deps[f"it1.B.{nxt}"])
        assert f"it1.ADAM.cpu.b{p}" in deps[f"it1.m2.B.{nxt}"]
        assert f"it1.m2.D2H.w2.b{p}" in deps[f"it1.ADAM.cpu.b{p}"]


@pytest.mark.parametrize("policy", ["zero-infinity", "stronghold"])
@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_schedules_are_well_formed(policy, gpus):
    for kn in ({}, {"checkpointing": "full"}, {"activations": ["swap", "recompute", "keep", "swap"]}):
        build(scenario(policy, kn, gpus=gpus))


# ------------------------------------------------------------------------------- chunked ----

@pytest.mark.parametrize("gpus,chunk_size", [(1, 32 * 2**20), (1, 100_000), (2, 100_000)])
def test_chunked_budget_holding_everything_moves_no_chunk_after_warmup(gpus, chunk_size):
    """All optimizer chunks fit the GPU margin (gpu_margin_mem_ratio 1 on a 40 GB GPU for a 16M
    parameter model): the warm-up iteration brings every chunk in once, later iterations move
    nothing over PCIe."""
    kn = {"gpu_margin_mem_ratio": 1.0, "chunk_size": chunk_size}
    sched, tl = timeline(scenario("chunked", kn, gpus=gpus))
    assert int(sched.meta["os_chunks_on_gpu"]) == int(sched.meta["chunks"])
    moved = {it: sum(op.n for t in sched.tasks if t.it == it and t.stream.endswith((".h2d", ".d2h"))
                     for op in t.ops) for it in (1, 2, 3)}
    assert moved[1] > 0 and moved[2] == moved[3] == 0
    assert tl.oom is None


def test_chunked_moves_every_cpu_updated_chunk_in_and_out_once_per_iteration():
    """Optimizer on the CPU (Gemini default margin 0) and room for the whole model: each chunk comes
    in once for the forward, stays for the backward, and goes home once with its gradients."""
    ctx, sched = build(scenario("chunked", {"chunk_size": 100_000}))
    model_bytes = sum(blk.weight_bytes for blk in ctx.blocks)
    for it in (2, 3):
        h2d = sum(op.n for t in sched.tasks if t.it == it and t.stream == "gpu0.h2d" for op in t.ops)
        d2h = sum(op.n for t in sched.tasks if t.it == it and t.stream == "gpu0.d2h" for op in t.ops)
        assert h2d == d2h == model_bytes


def test_chunked_tight_budget_evicts_furthest_next_use():
    """A GPU whose chunk budget (0.9 × capacity − non-model peak) holds a few 1 MB chunks of the
    32 MB model: chunks are moved out (D2H.cK) to make room every steady iteration, and the run
    still fits."""
    s = scenario("chunked", {"chunk_size": 500_000, "checkpointing": "full"}, gpu_memory="1716MiB")
    ctx, sched = build(s)
    evictions = [t for t in sched.tasks if ".D2H.c" in t.name and t.it == 2]
    assert evictions
    _, tl = timeline(s)
    assert tl.oom is None


def test_chunked_warmup_budget_is_a_fixed_share_of_capacity():
    """The warm-up iteration has no memory trace, so chunks get a fixed warmup_cuda_cap_ratio ×
    capacity (Gemini: 1 − warmup_non_model_data_ratio); a share that holds ten 200 kB chunks forces
    evictions in iteration 1 only, as the steady budget (0.9 × 40 GB − traced peak) holds all."""
    ctx, _ = build(scenario("chunked", {"chunk_size": 100_000}))
    ratio = 10.5 * 100_000 * 2 / ctx.gpu_capacity
    _, sched = build(scenario("chunked", {"chunk_size": 100_000, "warmup_cuda_cap_ratio": ratio}))
    evictions = {it: sum(1 for t in sched.tasks if ".D2H.c" in t.name and t.it == it) for it in (1, 2, 3)}
    assert evictions[1] > 0 and evictions[2] == evictions[3] == 0


def _initial(sched, pool: str, *classes: MemClass) -> int:
    return sum(a.bytes for a in sched.initial if a.pool == pool and (not classes or a.cls in classes))


MODEL = (MemClass.WEIGHTS, MemClass.MASTER, MemClass.OPTIM)
# model states (the process-memory classes, e.g. the process baseline and the CUDA context, are
# booked by every policy and tested in test_process_memory.py)
STATE = (*MODEL, MemClass.GRADS, MemClass.GRADS32)


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_chunked_static_without_offload_shards_14_bytes_per_param_and_keeps_nothing_on_the_host(gpus):
    """Gemini's default (static, nothing offloaded): a rank holds its 1/N of the 16-bit chunks
    (2 B/param, gradients written into them) and of the fp32 master + Adam m, v chunks (12 B/param),
    all on its GPU; host memory holds no model data and nothing crosses PCIe. While a chunk group
    is used its other shards are gathered: the most at the tied LM head's step, which reads every
    group of the token embedding (13,127,936 params: ⌈E / (100,000 N)⌉ groups) and its own."""
    s = scenario("chunked", {"placement_policy": "static", "chunk_size": 100_000}, gpus=gpus)
    ctx, sched = build(s)
    P = sum(b.params for b in ctx.blocks)
    nchunks = int(sched.meta["chunks"])
    assert _initial(sched, "cpu", *STATE) == 0
    per_gpu = [_initial(sched, f"gpu{g}", *MODEL) for g in range(gpus)]
    assert sum(per_gpu) == 14 * P
    assert all(abs(x - 14 * P / gpus) <= 3 * nchunks for x in per_gpu)
    assert not any(t.stream.endswith((".h2d", ".d2h")) for t in sched.tasks)
    _, tl = timeline(s)
    assert tl.oom is None and not any(tl.peak_by_class["cpu"].get(c.value) for c in STATE)
    shards = _initial(sched, "gpu0", MemClass.WEIGHTS)
    extra = (gpus - 1) * 100_000 * 2
    assert shards == sum(a.bytes for a in sched.initial if a.buf.startswith("chunk.g0."))
    E = next(b.params for b in ctx.blocks if b.name == "embed")
    assert tl.peak_by_class["gpu0"]["weights"] == shards + (math.ceil(E / (100_000 * gpus)) + 1) * extra
    assert "grads32" not in tl.peak_by_class["gpu0"]


def test_chunked_llama2_13b_on_8_gpus_static_holds_one_eighth_of_14_bytes_per_param():
    """LLaMA-2-13B (13,015,864,320 parameters) on 8 GPUs with Gemini's static placement and no
    offload: 14 × P / 8 = 22,777,762,560 B of model data per GPU (±1 B per chunk and tensor kind
    from uneven shards), none in host memory."""
    s = scenario_from_dict(dict(model="llama2-13b", hardware=dict(profile="a100-80gb-sxm", gpus=8),
                                train=dict(micro_batch=1, seq_len=2048), iterations=2, policy="chunked",
                                knobs={"placement_policy": "static", "checkpointing": "full"}))
    ctx, sched = build(s)
    P = sum(b.params for b in ctx.blocks)
    assert P == 13_015_864_320
    nchunks = int(sched.meta["chunks"])
    assert _initial(sched, "cpu", *STATE) == 0
    for g in range(8):
        assert abs(_initial(sched, f"gpu{g}", *MODEL) - 22_777_762_560) <= 3 * nchunks


@pytest.mark.parametrize("gpus", [1, 4])
def test_chunked_auto_keeps_14_bytes_per_param_of_every_rank_on_the_host(gpus):
    """PatrickStar's scheme with the optimizer on the CPU (margin 0): the 16-bit chunks start in
    host memory and every OS chunk stays there: 2 + 4 + 8 = 14 B/param for the node (14 / N per
    rank), no fp32 gradient copy (CPU Adam reads the 16-bit gradient)."""
    ctx, sched = build(scenario("chunked", {"chunk_size": 100_000}, gpus=gpus))
    P = sum(b.params for b in ctx.blocks)
    assert _initial(sched, "cpu", MemClass.WEIGHTS) == 2 * P
    assert _initial(sched, "cpu", MemClass.MASTER) == 4 * P
    assert _initial(sched, "cpu", MemClass.OPTIM) == 8 * P
    assert _initial(sched, "cpu", *STATE) == 14 * P
    assert all(_initial(sched, f"gpu{g}", *STATE) == 0 for g in range(gpus))


@pytest.mark.parametrize("gpus", [1, 2])
def test_chunked_static_optimizer_offload_moves_the_16_bit_shard_each_way_once(gpus):
    """offload_optim_frac 1: the 16-bit shards stay on the GPUs (2 B/param / N), the OS chunks and a
    host copy of the shards (which carries the gradients) are in host memory (14 B/param); each
    iteration a GPU sends its shard of gradients D2H once and receives its updated shard once."""
    ctx, sched = build(scenario("chunked", {"placement_policy": "static", "offload_optim_frac": 1.0,
                                            "chunk_size": 100_000}, gpus=gpus))
    P = sum(b.params for b in ctx.blocks)
    assert _initial(sched, "cpu", *STATE) == 14 * P
    assert sum(_initial(sched, f"gpu{g}", *STATE) for g in range(gpus)) == 2 * P
    for g in range(gpus):
        h2d = sum(op.n for t in sched.tasks if t.it == 2 and t.stream == f"gpu{g}.h2d" for op in t.ops)
        d2h = sum(op.n for t in sched.tasks if t.it == 2 and t.stream == f"gpu{g}.d2h" for op in t.ops)
        assert h2d == d2h == _initial(sched, f"gpu{g}", *STATE)


def test_chunked_static_unsharded_chunks_stay_gathered():
    """shard_param_frac 0 on 2 GPUs: every chunk group is gathered once (iteration 1) and stays on
    both GPUs (Gemini keep_gathered), so later iterations gather nothing and all-reduce gradients."""
    s = scenario("chunked", {"placement_policy": "static", "shard_param_frac": 0.0, "chunk_size": 100_000}, gpus=2)
    ctx, sched = build(s)
    nchunks = int(sched.meta["chunks"])
    assert int(sched.meta["gathered_chunks"]) == nchunks
    ag = [t for t in sched.tasks if ".AG.c" in t.name and t.stream == "gpu0.comm"]
    assert len(ag) == nchunks and {t.it for t in ag} == {1}
    assert all(t.ops[0].kind is OpKind.ALLREDUCE for t in sched.tasks if ".RS.g." in t.name)
    _, tl = timeline(s)
    assert tl.peak_by_class["gpu0"]["weights"] == _initial(sched, "gpu0", MemClass.WEIGHTS) + nchunks * 100_000 * 2


def test_chunked_synchronous_reduce_serialises_the_iteration():
    """async_reduce false (Gemini before ColossalAI PR #5713): each chunk's reduce-scatter is
    issued from the backward hook and the backward waits for it; gathers are on demand
    (max_prefetch 0), so on 2 symmetric GPUs nothing overlaps and an iteration lasts exactly the
    sum of one GPU's task durations. With the asynchronous reduce the reduce-scatters hide behind
    the backward: the iteration is shorter, by at most their summed durations."""
    def run(async_reduce):
        s = scenario("chunked", {"placement_policy": "static", "chunk_size": 100_000,
                                 "async_reduce": async_reduce}, gpus=2)
        _, tl = timeline(s)
        recs = [r for r in tl.records if r.stream.startswith("gpu0.") and r.it == 2]
        rs = sum(r.end - r.start for r in recs if ".RS.g." in r.name)
        return tl, recs, rs

    tl, recs, rs = run(False)
    spans = sorted((r.start, r.end) for r in recs)
    assert all(b[0] >= a[1] - 1e-15 for a, b in zip(spans, spans[1:]))
    assert tl.steady_iteration_time() == pytest.approx(sum(r.end - r.start for r in recs), rel=1e-12)
    assert rs > 0
    tl_async, _, _ = run(True)
    assert tl.steady_iteration_time() - rs - 1e-12 <= tl_async.steady_iteration_time() < tl.steady_iteration_time()


def test_chunked_static_param_offload_needs_full_sharding_and_optimizer_offload():
    with pytest.raises(ConfigError, match="offload_param_frac"):
        build(scenario("chunked", {"placement_policy": "static", "offload_param_frac": 0.5}))
    ctx, sched = build(scenario("chunked", {"placement_policy": "static", "offload_param_frac": 1.0,
                                            "offload_optim_frac": 1.0, "chunk_size": 100_000}, gpus=2))
    assert sched.meta["gpu_home_chunks"] == "0"
    assert all(_initial(sched, f"gpu{g}", *STATE) == 0 for g in range(2))


# ------------------------------------------------------------------------------- autohete ----

# (ZeRO-Offload's placement, with 1e6-element buckets: AutoHete's plans hold no DeepSpeed ipg buffer,
# whose default 5e8 elements would not fit these small GPUs)
SPECIAL = [("gpu-only", {}), ("gpu-only", {"checkpointing": "full"}),
           ("zero-offload", {"reduce_bucket_size": 1e6}),
           ("zero-offload", {"checkpointing": "full", "reduce_bucket_size": 1e6})]


@pytest.mark.parametrize("layers,hidden,batch,seq,mem", [
    (4, 256, 2, 128, "40GiB"), (4, 256, 2, 128, "1.7GiB"), (8, 1024, 4, 512, "40GiB"),
    (8, 1024, 4, 512, "3GiB")])
def test_autohete_never_slower_than_its_special_cases(layers, hidden, batch, seq, mem):
    """Everything on the GPU and ZeRO-Offload (with and without checkpointing) are points of
    AutoHete's plan space; the plan it runs is at least as fast as the best of them that fits."""
    def t(policy, kn):
        _, tl = timeline(scenario(policy, kn, layers=layers, hidden=hidden, batch=batch, seq=seq,
                                  gpu_memory=mem))
        return None if tl.oom else tl.steady_iteration_time()
    special = [x for x in (t(p, kn) for p, kn in SPECIAL) if x is not None]
    got = t("autohete", {})
    assert got is not None
    assert got <= min(special)


@pytest.mark.parametrize("layers,hidden,batch,seq,mem", [
    (4, 256, 2, 128, "40GiB"), (4, 256, 2, 128, "1.7GiB"), (12, 2048, 4, 1024, "40GiB"),
    (8, 1024, 4, 512, "3GiB"), (12, 2048, 4, 1024, "10GiB")])
def test_autohete_milp_prediction_vs_engine(layers, hidden, batch, seq, mem):
    """The MILP predicts the iteration as its busiest stream (or the end-of-iteration chain of a
    CPU-updated block). That is a lower bound of what the engine simulates up to the steady
    window's edge effects (≤ 1 %); the engine is slower by what the MILP leaves out — a CPU step
    cannot start before its block's backward, fetched weights queue behind each other and behind
    the in-flight copies of other blocks — measured here at 0–34 % (docs/policies.md; the CPU
    chains it leaves out grow with the CPU Adam time, priced since the profile change at 0.7 x DRAM
    / 28 B; equally priced plans differ in the engine, and which one HiGHS returns is arbitrary)."""
    sched, tl = timeline(scenario("autohete", {"verify": False}, layers=layers, hidden=hidden, batch=batch,
                                  seq=seq, gpu_memory=mem))
    assert tl.oom is None
    pred, sim = float(sched.meta["predicted_iter_s"]), tl.steady_iteration_time()
    assert pred <= sim * 1.01
    assert sim <= pred * 1.40


def test_autohete_pins_are_respected_and_lists_checked():
    ctx, sched = build(scenario("autohete", {"offload_param": [True, False, True, False],
                                             "offload_optimizer": True, "checkpointing": "full"}))
    assert sched.meta["offload_param"] == "010100"        # embed, b0..b3, head
    assert sched.meta["offload_optimizer"] == "111111"
    assert sched.meta["checkpoint"] == "011110"
    from simhete.errors import ConfigError
    with pytest.raises(ConfigError, match=r"knobs\.offload_param: bad value '3 entries'"):
        build(scenario("autohete", {"offload_param": [True, False, True]}))


# --------------------------------------------------------------------------- every policy ----

POLICIES = ["zero-infinity", "stronghold", "chunked", "autohete"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(POLICIES + ["gpu-only", "zero-offload"]),
       mem_mib=st.integers(1560, 2400), checkpointing=ckpt, batch=st.integers(1, 4))
def test_memory_never_exceeds_capacity(policy, mem_mib, checkpointing, batch):
    """Whatever the GPU size, a run either fits with every pool's peak within its capacity or
    reports an out-of-memory; it never overdraws a pool."""
    kn = {} if policy == "autohete" else {"checkpointing": checkpointing}
    sched, tl = timeline(scenario(policy, kn, batch=batch, seq=256, gpu_memory=f"{mem_mib}MiB"))
    for pool, cap in sched.pools.items():
        assert tl.peak[pool] <= cap
        assert all(used <= cap for _, used in tl.mem_events[pool])


PINNED_PLANS = {"zero-infinity": {}, "stronghold": {"window_size": 2},
                "chunked": {"chunk_size": 100_000, "checkpointing": "full"},
                "autohete": {"offload_param": True, "offload_optimizer": True, "checkpointing": "full",
                             "verify": False}}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("gpus", [2, 4])
def test_per_gpu_offload_traffic_is_one_nth(policy, gpus):
    """ZeRO-style sharding: with N GPUs each GPU moves 1/N of what one GPU moves over PCIe
    (bytes are split exactly: shards differ by at most one byte per tensor)."""
    def per_gpu(n):
        _, sched = build(scenario(policy, PINNED_PLANS[policy], gpus=n))
        out = {}
        for t in sched.tasks:
            if t.it == 3 and t.stream.endswith((".h2d", ".d2h")):
                g = int(t.stream[3:t.stream.index(".")])
                out[g] = out.get(g, 0) + sum(op.n for op in t.ops)
        return out, sum(1 for t in sched.tasks if t.it == 3 and t.stream == "gpu0.h2d")
    (one, _), (many, tasks) = per_gpu(1), per_gpu(gpus)
    assert sum(many.values()) == one[0]
    for g in range(gpus):
        assert abs(many[g] - one[0] / gpus) <= 2 * tasks


@pytest.mark.parametrize("policy", POLICIES)
def test_data_parallel_collectives_span_all_gpus(policy):
    """Every collective is one task per GPU on gpu{g}.comm, each waiting for all GPUs' inputs."""
    _, sched = build(scenario(policy, PINNED_PLANS[policy], gpus=4))
    comm = [t for t in sched.tasks if t.stream.endswith(".comm")]
    assert comm
    by_name: dict[str, list] = {}
    for t in comm:
        by_name.setdefault(t.name.rsplit("@", 1)[0], []).append(t)
        assert t.ops[0].shape == (4,)
    assert all(len(v) == 4 and len({x.deps for x in v}) == 1 for v in by_name.values())


def test_too_small_chunks_are_refused_not_simulated_for_minutes():
    from simhete.errors import ConfigError
    from simhete.scenario import scenario_from_dict
    from simhete.sim import run
    s = scenario_from_dict({"model": "gpt-like-h256-l4", "hardware": {"profile": "a100-40gb-pcie-epyc7713"},
                            "train": {"micro_batch": 1, "seq_len": 128}, "policy": "chunked",
                            "knobs": {"chunk_size": 1000}})
    with pytest.raises(ConfigError, match=r"knobs\.chunk_size: bad value 1000; allowed: at least \d+ elements"):
        run(s)


@pytest.mark.parametrize("policy", ["zero-offload", "zero-infinity", "chunked"])
def test_cpu_step_waits_on_one_join_not_on_every_gradient_copy(policy):
    """M CPU Adam tasks after N gradient copies: M + N dependency edges through a join, not M × N."""
    from simhete.scenario import scenario_from_dict
    from simhete.sim import resolve
    ctx, pol = resolve(scenario_from_dict({
        "model": "gpt-like-h256-l6", "hardware": {"profile": "h100-sxm", "gpus": 2},
        "train": {"micro_batch": 1, "seq_len": 128}, "iterations": 2, "policy": policy,
        "knobs": {"chunk_size": 200_000} if policy == "chunked" else {}}))
    sched = pol.build(ctx)
    joins = [t for t in sched.tasks if ".STEP.grads" in t.name]
    # zero-offload's join is DeepSpeed's unscale_and_clip_grads pass over the fp32 gradients
    ops = [() if policy != "zero-offload" else (Op(OpKind.MEMCPY_CPU, n=sum(host_fp32_bytes(b) for b in ctx.blocks)),)]
    assert len(joins) == 2 and all([t.ops] == ops and len(t.deps) > 1 for t in joins)
    for t in sched.tasks:
        if t.stream == "cpu.optim" and t.cat.value == "optim_cpu" and ".STEP.grads" not in t.name:
            assert not any(".D2H." in d or ".RS." in d for d in t.deps), t.name


@pytest.mark.parametrize("ratio,groups,on_gpu", [(0.5, 3, 1), (0.9, 10, 0), (0.0, 4, 4), (1.0, 4, 0)])
def test_zero_infinity_ratio_splits_sub_groups_as_deepspeed(ratio, groups, on_gpu):
    """DeepSpeed stage3.py: sub-group i steps on the CPU iff i >= int((1 - ratio) * n_groups)."""
    from simhete.scenario import scenario_from_dict
    from simhete.sim import resolve
    blk_params = None
    ctx, pol = resolve(scenario_from_dict({
        "model": f"gpt-like-h256-l{groups}", "hardware": {"profile": "h100-sxm", "gpus": 1},
        "train": {"micro_batch": 1, "seq_len": 128}, "iterations": 1, "policy": "zero-infinity",
        "knobs": {"ratio": ratio, "offload_param": "none"}}))
    blk_params = max(b.params for b in ctx.blocks if b.name.startswith("b"))
    pol.k = pol.k.model_copy(update={"sub_group_size": blk_params})   # one transformer block per group
    sched = pol.build(ctx)
    gpu_steps = {t.block for t in sched.tasks if t.cat.value == "optim_gpu"}
    cpu_steps = {t.block for t in sched.tasks if t.cat.value == "optim_cpu"}
    n_groups = len(gpu_steps) + len(cpu_steps)
    assert len(gpu_steps) == int((1 - ratio) * n_groups)
    assert not gpu_steps or not cpu_steps or max(gpu_steps) < min(cpu_steps)   # the first ones stay


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_chunked_farthest_next_use_heap_picks_what_a_scan_of_the_resident_chunks_picks(data):
    """The eviction choice, a lazy heap, against the scan it replaced — the resident chunk
    outside this step's needs and the fixed ones with the farthest next use, ties to the higher
    chunk — over drawn traces, budgets, fixed chunks and chunks sent home at their last use,
    for three iterations (the heap restarts each)."""
    from bisect import bisect_right

    from simhete.policy.chunked import FarthestNextUse

    nchunks = data.draw(st.integers(2, 9))
    steps = data.draw(st.integers(2, 14))
    need = [sorted(data.draw(st.sets(st.integers(0, nchunks - 1), min_size=1, max_size=3))) for _ in range(steps)]
    used_at = {}
    for u, cs in enumerate(need):
        for c in cs:
            used_at.setdefault(c, []).append(u)
    chunks = sorted(used_at)
    fixed = set(data.draw(st.sets(st.sampled_from(chunks), max_size=2)))
    low = max(len(c) for c in need) + len(fixed)
    cap = data.draw(st.integers(low, low + 2))
    drop = set(data.draw(st.sets(st.sampled_from(chunks))))        # sent home at their last use
    last_use = {c: at[-1] for c, at in used_at.items()}

    def next_use(c, u):
        at = used_at[c]
        i = bisect_right(at, u)
        return at[i] if i < len(at) else steps + at[0]

    resident = {c: None for c in fixed}
    heap = FarthestNextUse(next_use, fixed)
    evictions = 0
    for _ in range(3):
        heap.reset(resident)
        for u in range(steps):
            need_u = set(need[u])
            for c in need[u]:
                if c not in resident:
                    while len(resident) + 1 > cap:
                        cand = [r for r in resident if r not in need_u and r not in fixed]
                        want = max(cand, key=lambda r: (next_use(r, u), r)) if cand else None
                        assert heap.victim(u, need_u, resident) == want
                        if want is None:
                            break
                        del resident[want]
                        evictions += 1
                    resident[c] = None
                heap.used(c, u)
            for c in need[u]:
                if last_use[c] == u and c in drop and c not in fixed:
                    del resident[c]
    event(f"evictions: {min(evictions, 5)}{'+' if evictions > 5 else ''}")
