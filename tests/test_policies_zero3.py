"""ZeRO-3 as DeepSpeed runs it without parameter offload, and ZeRO-Offload's gradient copies
without ``overlap_comm``: exact bytes and orders worked out from DeepSpeed's rules
(partition_parameters.py, partitioned_param_coordinator.py, stage3.py, stage_1_and_2.py)."""

from __future__ import annotations

import pytest

from simhete.opkinds import MemClass, OpKind
from simhete.workload.tensors import param_tensors
from simhete.scenario import scenario_from_dict
from simhete.sim import run
from simhete.workload.presets import get_model

# LLaMA-2-7B: h 4096, f 11008, V 32000, 32 layers, RMSNorm (weight only), no biases, untied head
H, F, V, L = 4096, 11008, 32000, 32
BLOCK = 4 * H * H + 3 * H * F + 2 * H          # q, k, v, o; gate, up, down; two RMSNorm weights
PARAMS = V * H + L * BLOCK + H + V * H         # embed, blocks, final norm + LM head
PERSIST = (2 * L + 1) * H                      # every RMSNorm weight: 4096 <= 1e5 elements
BLOCK_PART = BLOCK - 2 * H                     # a block's tensors above the persistence threshold
HEAD_PART = V * H


def llama7b_8gpu(knobs, its=2):
    return run(scenario_from_dict({
        "model": "llama2-7b", "hardware": {"profile": "a100-80gb-sxm", "gpus": 8},
        "train": {"micro_batch": 1, "seq_len": 4096, "dtype": "bf16"}, "iterations": its,
        "policy": "zero-infinity", "knobs": {"checkpointing": "full"} | knobs}))


def class_peak(res, pool, cls):
    """The most bytes of one memory class live in ``pool`` at any moment: allocations at a task's
    start, frees at its end (ends before starts at the same instant, as a dependent task sees)."""
    sched = res.schedule
    live = sum(a.bytes for a in sched.initial if a.pool == pool and a.cls == cls)
    size = {a.buf: a.bytes for a in sched.initial if a.pool == pool and a.cls == cls}
    size |= {a.buf: a.bytes for t in sched.tasks for a in t.allocs if a.pool == pool and a.cls == cls}
    tasks = {t.name: t for t in sched.tasks}
    events = []
    for r in res.timeline.records:
        t = tasks[r.name]
        events.append((r.start, 1, sum(a.bytes for a in t.allocs if a.pool == pool and a.cls == cls)))
        events.append((r.end, 0, -sum(size.get(b, 0) for b in t.frees)))
    peak = live
    for _, _, d in sorted(events):
        live += d
        peak = max(peak, live)
    return peak


def test_llama2_7b_tensor_layout_adds_up():
    spec = get_model("llama2-7b")
    assert spec.n_params() == PARAMS
    res = llama7b_8gpu({"offload_param": "none", "offload_optimizer": "none"}, its=1)
    by = {b.name: b for b in res.context.blocks}
    assert param_tensors(spec, by["b0"]) == (H, H * H, H * H, H * H, H * H, H, H * F, H * F, F * H)
    assert param_tensors(spec, by["head"]) == (H, V * H) and param_tensors(spec, by["embed"]) == (V * H,)


@pytest.mark.parametrize("model", ["gpt3-1.3b", "llama3-8b", "opt-1.3b", "llama2-70b"])
def test_tensor_layout_matches_the_parameter_count(model):
    from simhete.workload import build_workload
    spec = get_model(model)
    for blk in build_workload(spec, 1, 128).blocks:
        ts = param_tensors(spec, blk)
        assert sum(ts) == blk.params and (len(ts) > 1 or blk.name == "embed" or blk.params == 0)


def test_zero3_without_offload_partitions_16bit_weights_over_8_gpus():
    """Each GPU holds ceil(numel/8) of every tensor (all divide by 8 here) plus the persistent
    RMSNorm weights whole, and at most the gathered blocks the coordinator keeps live.

    Which gathered blocks are live at once, by DeepSpeed's rules with the default knobs
    (prefetch bucket 5e7, max live 1e9, max reuse distance 1e9 elements):
    - released after its forward unless the walk of the trace that follows reaches its backward
      before 1e9 elements are traversed (a module used twice counts twice): before B(b30) the walk
      traverses F b31, F head, B head, B b31 = 2·BLOCK + 2·V·H = 667 M < 1e9, so b30, b31 and the
      head stay gathered; before B(b29) it has also passed F b30 and B b30 (> 1e9), so b29 goes;
    - prefetching skips live uses and stops when the live elements would pass 1e9: at F(head)'s
      hook it gathers b29 for its backward (b30, b31, head live: 2·BLOCK_PART + HEAD_PART + BLOCK_PART
      = 738 M <= 1e9); at B(head)'s hook the head is still live and b28 fits too (940 M); at
      B(b31)'s hook (head released) b27 would make 1,012 M > 1e9, so none is added.
    So the peak holds b28, b29, b30, b31 and the head gathered (940.6 M elements, 1.75 GiB)."""
    res = llama7b_8gpu({"offload_param": "none", "offload_optimizer": "none"})
    assert res.schedule.meta["param_partitioned"] == "true"
    shards = 2 * (PARAMS // 8 + PERSIST)
    gathered = 2 * (4 * BLOCK_PART + HEAD_PART)
    initial = sum(a.bytes for a in res.schedule.initial if a.pool == "gpu0" and a.cls == MemClass.WEIGHTS)
    assert initial == shards
    assert class_peak(res, "gpu0", MemClass.WEIGHTS) == shards + gathered
    # before: the whole 16-bit model on every GPU (12.55 GiB); now 1.57 GiB of shards + 1.75 GiB gathered
    assert 2 * PARAMS / 2**30 == pytest.approx(12.551, abs=1e-3)
    assert shards / 2**30 == pytest.approx(1.5694, abs=1e-4)
    # gradients: the GPU's reduced partition (model dtype) plus the buckets not yet reduce-scattered
    grads0 = sum(a.bytes for a in res.schedule.initial if a.pool == "gpu0" and a.cls == MemClass.GRADS)
    assert grads0 == 2 * PARAMS // 8
    assert class_peak(res, "gpu0", MemClass.GRADS) < grads0 + 2 * 2 * 5e8 + 2 * BLOCK


def test_zero3_collectives_per_iteration():
    """All-gathers: every partitioned tensor before its forward, again before its backward except
    the three blocks kept by the reuse distance (b30, b31, head), and the persistent tensors after
    the step (stage3.py _post_step); reduce-scatter: every 16-bit gradient once."""
    res = llama7b_8gpu({"offload_param": "none", "offload_optimizer": "none"})
    last = res.schedule.iterations

    def total(kind):
        return sum(op.n for t in res.schedule.tasks if t.it == last and t.stream == "gpu0.comm"
                   for op in t.ops if op.kind == kind)

    part = PARAMS - PERSIST
    assert total(OpKind.ALLGATHER) == 2 * part + 2 * (part - 2 * BLOCK_PART - HEAD_PART) + 2 * PERSIST
    assert total(OpKind.REDUCE_SCATTER) == 2 * PARAMS
    assert res.summary.pcie_bytes_per_iter == {"h2d": 0, "d2h": 0}


def test_zero3_optimizer_offload_moves_only_each_gpus_shard():
    """offload_optimizer cpu, offload_param none: each GPU copies its gradient shard D2H and its
    updated 16-bit shard H2D (stage3.py _reassign_or_swap_out_partitioned_parameters), so the 8
    GPUs together move one 16-bit model each way per step, and no full model is gathered after it."""
    res = llama7b_8gpu({"offload_param": "none", "offload_optimizer": "cpu"})
    assert res.summary.pcie_bytes_per_iter == {"h2d": 2 * PARAMS, "d2h": 2 * PARAMS}
    last = res.schedule.iterations
    h2d = [op.n for t in res.schedule.tasks if t.it == last and t.stream == "gpu0.h2d" for op in t.ops]
    assert sum(h2d) == 2 * PARAMS // 8
    initial = sum(a.bytes for a in res.schedule.initial if a.pool == "gpu0" and a.cls == MemClass.WEIGHTS)
    assert initial == 2 * (PARAMS // 8 + PERSIST)


def test_zero3_one_gpu_keeps_the_whole_model():
    res = run(scenario_from_dict({
        "model": "gpt-like-h256-l2", "hardware": {"profile": "h100-sxm", "gpus": 1},
        "train": {"micro_batch": 1, "seq_len": 128}, "iterations": 1, "policy": "zero-infinity",
        "knobs": {"offload_param": "none", "offload_optimizer": "none"}}))
    assert res.schedule.meta["param_partitioned"] == "false"
    w = sum(a.bytes for a in res.schedule.initial if a.cls == MemClass.WEIGHTS)
    assert w == 2 * res.context.workload.params


def test_persistence_is_decided_per_tensor():
    """gpt-like-h256 (Megatron's fused query_key_value, one tensor): the output projection's
    65,536 elements are under the 1e5 threshold, persistent (held whole on every GPU, never
    gathered), and so are the biases and norms; the fused QKV (196,608) and the 256×1024 MLP
    matrices are gathered."""
    res = run(scenario_from_dict({
        "model": "gpt-like-h256-l2", "hardware": {"profile": "h100-sxm", "gpus": 2},
        "train": {"micro_batch": 1, "seq_len": 128}, "iterations": 1, "policy": "zero-infinity",
        "knobs": {"offload_param": "none", "offload_optimizer": "none"}}))
    h, f = 256, 1024
    persist = h * h + 3 * h + h + 2 * h + f + h + 2 * h        # out proj, QKV and out biases, LN1, MLP biases, LN2
    init = {a.buf: a.bytes for a in res.schedule.initial}
    assert init["weights.g0.b0.persist"] == 2 * persist
    assert init["weights.g1.b0"] == 2 * (res.context.blocks[1].params // 2)
    ag = [t for t in res.schedule.tasks if t.name.startswith("it1.AG.wf.b0@g0")]
    assert [op.n for t in ag for op in t.ops] == [2 * (3 * h * h + 2 * h * f)]


def offload(overlap, its=1):
    return run(scenario_from_dict({
        "model": "gpt-like-h256-l4", "hardware": {"profile": "h100-sxm", "gpus": 1},
        "train": {"micro_batch": 2, "seq_len": 128, "dtype": "bf16"}, "iterations": its,
        "policy": "zero-offload", "knobs": {"overlap_comm": overlap, "reduce_bucket_size": 1}}))


def test_no_overlap_comm_copies_each_bucket_from_the_backward_hook():
    """Bucket size 1 element: each block with parameters is its own bucket (head = the final
    LayerNorm, b3 … b0, embed). Without overlap_comm, bucket j is reduced and copied on the compute
    stream when bucket j+1's first gradient arrives (stage_1_and_2.py reduce_ipg_grads from
    reduce_independent_p_g_buckets_and_remove_grads), so the backward alternates with the copies;
    the last bucket goes in the epilogue."""
    res = offload(False)
    order = [r.name for r in sorted(res.timeline.records, key=lambda r: r.start)
             if r.stream == "gpu0.compute" and ".F." not in r.name]
    assert order == ["it1.B.head", "it1.B.b3", "it1.D2H.g.k0", "it1.B.b2", "it1.D2H.g.k1", "it1.B.b1",
                     "it1.D2H.g.k2", "it1.B.b0", "it1.D2H.g.k3", "it1.B.embed", "it1.D2H.g.k4",
                     "it1.D2H.g.k5"]
    # the gradients live in the one ipg bucket buffer (1 element of bf16 here: no overlap, one
    # buffer), so no block holds gradient bytes of its own
    assert class_peak(res, "gpu0", MemClass.GRADS) == 0
    assert [a.bytes for a in res.schedule.initial if a.buf.startswith("ipg_buffer")] == [2]
    # every copy is on the critical path: compute-stream busy time = the iteration's makespan
    busy = sum(r.end - r.start for r in res.timeline.records if r.stream == "gpu0.compute")
    d2h = sum(r.end - r.start for r in res.timeline.records if r.name.startswith("it1.D2H.g"))
    overlapped = offload(True)
    busy_ov = sum(r.end - r.start for r in overlapped.timeline.records if r.stream == "gpu0.compute")
    assert busy == pytest.approx(busy_ov + d2h, rel=1e-12)


def test_zero3_without_overlap_comm_runs_gathers_and_reductions_on_the_compute_stream():
    """stage3.py: ``reduce_and_partition_stream`` is the default stream without overlap_comm, and so
    is parameter_offload.py's all-gather stream. gpt-like-h256-l2 on 2 GPUs, bucket size 1 element
    (every block with parameters its own bucket: head = final LayerNorm, b1, b0, embed): each
    block's gather runs before its forward, and bucket j's reduce-scatter runs after the backward
    that produced bucket j+1's first gradient, in the compute stream's order; the head's LayerNorm
    and the attention matrices (65,536 elements) are persistent, the tied embedding is gathered
    once and kept (reuse distance)."""
    res = run(scenario_from_dict({
        "model": "gpt-like-h256-l2", "hardware": {"profile": "h100-sxm", "gpus": 2},
        "train": {"micro_batch": 2, "seq_len": 128, "dtype": "bf16"}, "iterations": 1, "policy": "zero-infinity",
        "knobs": {"overlap_comm": False, "reduce_bucket_size": 1, "offload_param": "none",
                  "offload_optimizer": "none"}}))
    recs = sorted(res.timeline.records, key=lambda r: r.start)
    assert [r.name for r in recs if r.stream == "gpu0.compute"] == [
        "it1.AG.wf.embed@g0", "it1.F.embed@g0", "it1.AG.wf.b0@g0", "it1.F.b0@g0", "it1.AG.wf.b1@g0",
        "it1.F.b1@g0", "it1.F.head@g0", "it1.B.head@g0", "it1.B.b1@g0", "it1.RS.g.k0@g0", "it1.B.b0@g0",
        "it1.RS.g.k1@g0", "it1.B.embed@g0", "it1.RS.g.k2@g0", "it1.RS.g.k3@g0", "it1.ADAM.gpu.s0@g0"]
    # only the persistent tensors' gather after the step stays on the collectives' stream
    assert [r.name for r in recs if r.stream == "gpu0.comm"] == ["it1.AG.w.s0@g0"]


def test_zero_infinity_schedules_are_well_formed_on_any_placement():
    """Every placement × GPU count × accumulation × overlap_comm × checkpointing builds a schedule
    the checker accepts and the engine runs to the end (buffers freed once, dependencies exist)."""
    import itertools

    from simhete.engine import simulate
    from simhete.schedule import check_schedule
    from simhete.sim import resolve
    for n, par, opt, ratio, ga, ov, ck in itertools.product(
            [1, 2, 4], ["cpu", "none"], ["cpu", "none"], [1.0, 0.5], [1, 2], [True, False], ["none", "full"]):
        ctx, pol = resolve(scenario_from_dict({
            "model": "gpt-like-h256-l3", "hardware": {"profile": "h100-sxm", "gpus": n},
            "train": {"micro_batch": 1, "seq_len": 128, "grad_accum": ga}, "iterations": 2,
            "policy": "zero-infinity",
            "knobs": {"offload_param": par, "offload_optimizer": opt, "ratio": ratio, "overlap_comm": ov,
                      "checkpointing": ck, "reduce_bucket_size": 3e5, "sub_group_size": 4e5,
                      "stage3_param_persistence_threshold": 1e4}}))
        sched = pol.build(ctx)
        assert check_schedule(sched) == [], (n, par, opt, ratio, ga, ov, ck)
        tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
        assert tl.oom is None and len(tl.records) == len(sched.tasks)
