"""``zero-infinity``: DeepSpeed ZeRO stage 3 with CPU offload (ZeRO-Infinity's CPU tier).

Sources: Rajbhandari et al., "ZeRO-Infinity: Breaking the GPU Memory Wall for Extreme Scale Deep
Learning" (SC'21), §5–6; DeepSpeed config docs (``zero_optimization`` stage 3, ``offload_param``,
``offload_optimizer``); the partitioned-parameter coordinator's documented prefetch/release rules.

Placement: 16-bit weights are homed in host memory (``offload_param: cpu``); fp32 master weights,
Adam m, v and fp32 gradients live in host memory for the sub-groups the optimizer offloads
(``offload_optimizer: cpu``, the last ``ratio`` of the ``sub_group_size`` tiles), on the GPU for
the rest. Blocks with fewer than ``stage3_param_persistence_threshold`` parameters stay on the
GPU (persistent).

Per iteration, with the use trace recorded in the first step (forward blocks, then backward in
reverse): before block u runs its weights are fetched H2D if not resident; at the same hook the
coordinator prefetches the weights of the next uses while fewer than
``stage3_prefetch_bucket_size`` elements are being prefetched and the live parameters stay within
``stage3_max_live_parameters``; after a use the weights are released unless they are used again
within ``stage3_max_reuse_distance`` elements of other parameters. Backward gradients go D2H in
``reduce_bucket_size`` buckets; the optimizer step runs after the backward, sub-group by sub-group
(CPU Adam for offloaded sub-groups, whose updated 16-bit weights are written into their host home;
GPU Adam for the others, whose updated 16-bit shard is copied D2H to its home). ``step()`` is
synchronous: the next forward starts when the whole step is done.

Granularity: a block is the unit of fetch and release (DeepSpeed works per parameter, so a
prefetch bucket smaller than a block still prefetches one whole block here).
With N GPUs each GPU fetches its 1/N shard over its own link and all-gathers over NVLink, and
reduce-scatters gradients before copying its shard D2H (see :mod:`simhete.policy.dataparallel`).

Without parameter offload on N > 1 GPUs (``offload_param: none``) the 16-bit parameters are
partitioned on the GPUs (:class:`~simhete.policy.zero3_params.Partition`): each GPU holds 1/N of
every tensor, persistent tensors whole; a block's fetch is an all-gather of the shards into
full-size buffers, released by the same rules. Gradient buckets are reduce-scattered into each
GPU's gradient partition and the full gradients freed, GPU-optimised or not. ``overlap_comm:
false`` puts the fetches, collectives and gradient copies on the compute stream, each bucket
reduced from the backward hook.
"""

from __future__ import annotations

from typing import ClassVar

from simhete.opkinds import Action, At, MemClass, OpKind, at, owned_buffer, state_buffer
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel, ipg_buffer, shard
from simhete.policy.layout import group, owners, uses
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.training import (PHASE, PRIO_IT, accum_steps, act_modes, bwd_prio, forward_backward, fwd_prio,
                                     grad_prio, hook_reduce_waits, tname)
from simhete.policy.zero3_params import Partition, ZeroInfinityKnobs, plan_fetches
from simhete.schedule import Alloc, Op, Schedule
from simhete.workload.tensors import param_tensors


@register("zero-infinity")
class ZeroInfinity(Policy):
    Knobs = ZeroInfinityKnobs
    multi_gpu = True
    stage: ClassVar[int] = 3
    """DeepSpeed ZeRO stage: 3 partitions the 16-bit parameters on the GPUs (without parameter
    offload); 2 (:mod:`simhete.policy.zero2`) keeps them whole on every GPU."""
    reduce: ClassVar[tuple[OpKind, Action]] = (OpKind.REDUCE_SCATTER, Action.GRADS_REDUCE_SCATTER)
    """The collective that reduces a gradient bucket kept on the GPUs (stage3.py
    ``__reduce_and_partition_ipg_grads``: a reduce-scatter into each rank's partition)."""
    ipg: ClassVar[bool] = False
    """Gradients live in stage 1/2's contiguous ipg bucket buffer and the rank's gradient partition
    (:func:`~simhete.policy.dataparallel.ipg_buffer`), also on one GPU."""
    # DeepSpeed ZeRO clones each partition to fp32 master weights (stage_1_and_2.py
    # single_partition_of_fp32_groups, stage3.py fp32_partitioned_groups_flat: .float() unless
    # master_weights_and_grads_dtype says otherwise) and DeepSpeedCPUAdam creates m and v in fp32
    # (cpu_adam.py: fp32_optimizer_states=True by default), also for a bf16 model.
    pure_precision = ("DeepSpeed ZeRO keeps fp32 master partitions and DeepSpeedCPUAdam fp32 m and v, "
                      "also for a bf16 model")

    def bucket_passes(self, ctx: Context, buckets: list[list[int]]) -> list[dict[int, tuple[Op, ...]]]:
        """Per bucket, per GPU: the kernels that rank runs with its reduction of a bucket kept on
        the GPUs, on the reduction's stream (priced in its task). Stage 3's are not modelled."""
        return [{} for _ in buckets]

    def step_passes(self, ctx: Context, grp: list[int]) -> dict[int, tuple[tuple[Op, ...], tuple[Op, ...]]]:
        """Per GPU: the kernels before and after its Adam over GPU sub-group ``grp`` (priced in the
        Adam task). Stage 3's are not modelled."""
        return {}

    def decisions(self, ctx: Context) -> tuple:
        """Nothing from sizes: buckets, sub-groups, partitions and persistence follow the model and
        the knobs."""
        return ()

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, k.pin_memory)
        n, nb = ctx.n_gpus, len(ctx.blocks)
        modes = act_modes(ctx, k)
        by = {blk.index: blk for blk in ctx.blocks}
        homed = {i for i, blk in by.items() if k.offload_param == "cpu" and blk.params
                 and blk.params >= k.stage3_param_persistence_threshold}
        groups = group(((blk.index, blk.params) for blk in ctx.blocks if blk.params), k.sub_group_size)
        n_gpu_groups = len(groups) if k.offload_optimizer == "none" else int((1 - k.ratio) * len(groups))
        cpu_opt = {i for gi, grp in enumerate(groups) if gi >= n_gpu_groups for i in grp}

        # ZeRO-3 without parameter offload on several GPUs: each GPU holds its 1/N shard of every
        # 16-bit tensor and gathers a block's tensors over NVLink before use (Partition). With
        # one GPU the shard is the whole tensor, kept resident here (the gathered copy DeepSpeed
        # makes of it while a block runs is not modelled).
        sharded = self.stage == 3 and k.offload_param == "none" and n > 1
        parts = {i: Partition.of(param_tensors(ctx.spec, blk), n, k.stage3_param_persistence_threshold)
                 for i, blk in by.items() if blk.params} if sharded else {}
        esz = {i: by[i].weight_bytes // by[i].params for i in parts}    # bytes per 16-bit element
        initial = model_states(ctx, {MemClass.WEIGHTS: "cpu"}, blocks=homed)
        for g in dp.gpus:
            if not sharded:
                initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g, blocks=set(by) - homed)
                continue
            for i, pt in parts.items():
                initial.append(Alloc(state_buffer(MemClass.WEIGHTS, by[i].name, g), f"gpu{g}", esz[i] * pt.shard,
                                     MemClass.WEIGHTS))
                if pt.persist:
                    initial.append(Alloc(f"weights.g{g}.{by[i].name}.persist", f"gpu{g}", esz[i] * pt.persist,
                                         MemClass.WEIGHTS))
        initial += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"},
                                blocks=cpu_opt)
        for g in dp.gpus:   # ZeRO-3 partitions GPU optimizer states: 1/N on each GPU
            for i in sorted(set(by) - cpu_opt):
                blk = by[i]
                for cls, nbytes in ((MemClass.MASTER, blk.master_bytes), (MemClass.OPTIM, blk.optim_bytes)):
                    if nbytes:
                        initial.append(Alloc(f"{cls.value}.g{g}.{blk.name}", f"gpu{g}", shard(nbytes, n, g), cls))
                # stage3.py ``grad_partitions_flat_buffer``: the rank's reduced gradient partition,
                # in gradient_accumulation_dtype (engine.py get_data_types: the model dtype unless
                # set), on the GPU when the optimizer is (the full gradients are freed after the
                # reduce-scatter, ``partition_grads``)
                if (n > 1 or self.ipg) and blk.grad_bytes:
                    initial.append(Alloc(f"{MemClass.GRADS.value}.g{g}.{blk.name}.part", f"gpu{g}",
                                         self._part_bytes(blk, parts, n, g), MemClass.GRADS))
            if self.ipg:
                initial.append(ipg_buffer(ctx, k.reduce_bucket_size, k.overlap_comm, g))

        trace = uses(ctx.blocks)
        if sharded:
            needs = [[o for o in owners(blk) if o in parts and parts[o].live] for _, blk in trace]
            plan = plan_fetches(needs, {i: pt.live for i, pt in parts.items()}, k)
        else:
            needs = [[o for o in owners(blk) if o in homed] for _, blk in trace]
            plan = plan_fetches(needs, {i: by[i].params for i in by}, k)
        buckets = group(((blk.index, blk.params) for blk in reversed(ctx.blocks) if blk.params), k.reduce_bucket_size)
        # Without overlap_comm, bucket j is reduced on the compute stream from the backward hook of
        # the first gradient of bucket j+1 (stage3.py ``reduce_independent_p_g_buckets_and_remove_grads``
        # → ``__reduce_and_partition_ipg_grads``); the backward goes on after it.
        sync = not k.overlap_comm
        # bucket j -> the block whose recompute/backward waits for bucket j's reduction
        after_first = hook_reduce_waits(ctx.blocks, buckets) if sync else {}
        passes = self.bucket_passes(ctx, buckets) if n > 1 else [{} for _ in buckets]
        around = [self.step_passes(ctx, grp) if grp[0] not in cpu_opt else {} for grp in groups]
        # what every micro-step repeats: a target's second, third, ... fetch is numbered 2, 3, ...;
        # the fetches whose buffers each use reads
        seen: dict[int, int] = {}
        variants = []
        for _, target, _ in plan.fetches:
            seen[target] = nth = seen.get(target, 0) + 1
            variants.append(str(nth) if nth > 1 else "")
        held_by = [sorted({plan.holder[(u, o)] for o in needs[u]}) for u in range(len(trace))]
        step_done: list[str] = []
        last_B: dict[int, str] = {}
        ga = accum_steps(ctx)
        if ga > 1:   # DeepSpeed stage 3's grad partition buffer, on the host when offloading
            initial += [Alloc(f"gacc.{by[i].name}", "cpu", by[i].grad_bytes, MemClass.GRADS)
                        for i in sorted(cpu_opt) if by[i].grad_bytes]
        for it in range(1, ctx.iterations + 1):
            prev: dict[int, dict[int, str]] = {}
            for m in range(1, ga + 1):
                dp.m = m
                start = {g: ([last_B[g]] if g in last_B else []) + (step_done if m == 1 else []) for g in dp.gpus}

                def compute(u: int, g: int) -> str:
                    phase, blk = trace[u]
                    return PHASE[phase].task_name(at(it, blk.name, g, n, m))

                fwd_deps: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                bwd_deps: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                fwd_frees: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                bwd_frees: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                ready: list[dict[int, str]] = []
                bufs: list[dict[int, dict[int, str]]] = []
                for f, (hook, target, miss) in enumerate(plan.fetches):
                    phase, blk = trace[target]
                    fetch = ((Action.WEIGHTS_AG_FWD if phase == "F" else Action.WEIGHTS_AG_BWD) if sharded else
                             (Action.WEIGHTS_H2D_FWD if phase == "F" else Action.WEIGHTS_H2D_BWD))
                    variant = variants[f]
                    names = {g: dp.task(fetch, it, blk.name, g, variant) for g in dp.gpus}
                    bufs.append({g: {o: owned_buffer(names[g], by[o].name) for o in miss} for g in dp.gpus})
                    trigger = {g: [compute(hook - 1, g)] if hook else start[g] for g in dp.gpus}
                    prio = fwd_prio(it, blk.index, m, nb) if phase == "F" else bwd_prio(it, blk.index, nb, m)
                    if sharded:   # all-gather of the shards into full-size buffers (NVLink / PCIe P2P)
                        ready.append(dp.collective(
                            OpKind.ALLGATHER, fetch, it, blk.name, sum(esz[o] * parts[o].gathered for o in miss),
                            trigger, prio, blk.index,
                            allocs={g: [Alloc(bufs[f][g][o], f"gpu{g}", esz[o] * parts[o].gathered, MemClass.WEIGHTS)
                                        for o in miss] for g in dp.gpus}, sync=sync, variant=variant))
                        continue
                    ready.append(dp.to_gpu(it, fetch, blk.name, sum(by[o].weight_bytes for o in miss), trigger, prio,
                                           blk.index, allocs={g: [Alloc(bufs[f][g][o], f"gpu{g}", by[o].weight_bytes,
                                                                        MemClass.WEIGHTS) for o in miss]
                                                              for g in dp.gpus}, sync=sync))
                for u, (phase, blk) in enumerate(trace):
                    deps, frees = (fwd_deps, fwd_frees) if phase == "F" else (bwd_deps, bwd_frees)
                    held = held_by[u]
                    for g in dp.gpus:
                        deps[g].setdefault(blk.index, []).extend(ready[f][g] for f in held)
                        for o in plan.release.get(u, []):
                            frees[g].setdefault(blk.index, []).append(bufs[plan.holder[(u, o)]][g][o])

                for j, i in after_first.items():   # the backward hook waits for bucket j's reduction
                    for g in dp.gpus:
                        bwd_deps[g].setdefault(i, []).extend(
                            ([dp.task(Action.GRADS_D2H, it, f"k{j}", g)] if any(x in cpu_opt for x in buckets[j]) else [])
                            + ([dp.task(self.reduce[1], it, f"k{j}", g)]
                               if n > 1 and any(x not in cpu_opt for x in buckets[j])
                               else []))
                t = {g: forward_backward(b, ctx, it, modes, gpu=g,
                                         start_deps=start[g], m=m,
                                         grad_buffers=True if m == 1 or n > 1 else cpu_opt,
                                         fwd_weight_deps=fwd_deps[g], bwd_weight_deps=bwd_deps[g],
                                         fwd_frees=fwd_frees[g], bwd_frees=bwd_frees[g], pinned=k.pin_memory,
                                         grad_views=self.ipg)
                     for g in dp.gpus}
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                d2h, reduced = self._grads(ctx, dp, it, m, t, buckets, cpu_opt, prev, sync, passes)
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            step_done = self._step(b, ctx, dp, it, t, grads, d2h, reduced, groups, cpu_opt, homed, parts, around)
        meta = {"policy": self.name, "gpu_subgroups": str(n_gpu_groups), "subgroups": str(len(groups)),
                "param_partitioned": str(sharded).lower()}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

    def _grads(self, ctx: Context, dp: DataParallel, it: int, m: int, t: dict, buckets: list[list[int]],
               cpu_opt: set[int], prev: dict[int, dict[int, str]], sync: bool,
               passes: list[dict[int, tuple[Op, ...]]]) -> tuple[list[str], dict[int, dict[int, str]]]:
        """Micro-step m's gradient buckets during its backward: offloaded blocks' (reduce-scatter +)
        D2H (after micro-step 1: accumulated through the GPU, :meth:`DataParallel.accumulate`),
        GPU-optimised blocks' reduce-scatter. Returns the D2H tasks and, per GPU-optimised block and
        GPU, the collective after which its gradients are reduced. ``prev`` (bucket -> gpu -> D2H)
        is updated in place; ``passes``: :meth:`bucket_passes`."""
        by = {blk.index: blk for blk in ctx.blocks}
        nb = len(ctx.blocks)
        reduced: dict[int, dict[int, str]] = {}    # block -> gpu -> task after which its grads are reduced
        d2h: list[str] = []
        for j, bucket in enumerate(buckets):
            off = [i for i in bucket if i in cpu_opt]
            kept = [i for i in bucket if i not in cpu_opt]
            deps = {g: [t[g].B[i] for i in bucket] for g in dp.gpus}
            if sync and j + 1 < len(buckets):    # the hook of bucket j+1's first gradient
                for g in dp.gpus:
                    deps[g].append(t[g].B[buckets[j + 1][0]])
            prio = grad_prio(it, j, nb, m)
            if off:
                nbytes = sum(by[i].grad_bytes for i in off)
                frees = {g: [t[g].grads[i] for i in off] for g in dp.gpus}
                prev[j] = dp.from_gpu(it, f"k{j}", nbytes, deps, prio, off[0], frees=frees, sync=sync) \
                    if m == 1 else dp.accumulate(it, f"k{j}", nbytes, deps, prev[j], prio, off[0],
                                                 frees=frees, sync=sync)
                d2h += prev[j].values()
            if kept:
                # stage3.py ``__reduce_and_partition_ipg_grads`` → ``partition_grads``: the bucket is
                # reduce-scattered into each rank's gradient partition and the full gradients freed
                rs = dp.collective(*self.reduce, it, f"k{j}",
                                   sum(by[i].grad_bytes for i in kept), deps, prio, kept[0],
                                   frees={g: [t[g].grads[i] for i in kept if i in t[g].grads] for g in dp.gpus},
                                   sync=sync, passes=passes[j])
                for i in kept:
                    reduced[i] = {g: rs[g] for g in rs}
        return d2h, reduced

    def _step(self, b: Builder, ctx: Context, dp: DataParallel, it: int, t: dict, grads: dict,
              d2h: list[str], reduced: dict[int, dict[int, str]], groups: list[list[int]], cpu_opt: set[int],
              homed: set[int], parts: dict[int, Partition],
              around: list[dict[int, tuple[tuple[Op, ...], tuple[Op, ...]]]]) -> list[str]:
        """The optimizer step after the last micro-step's backward, sub-group by sub-group; returns
        the tasks the next forward waits for. ``grads``: micro-step 1's gradient buffers (GPU Adam
        frees the GPU-optimised blocks' ones on one GPU; on several the reduce-scatter did).
        ``parts``: the blocks' partitions when the 16-bit parameters are partitioned on the GPUs;
        ``around``: per sub-group, :meth:`step_passes` (GPU sub-groups)."""
        by = {blk.index: blk for blk in ctx.blocks}
        n = ctx.n_gpus
        done: list[str] = []
        if any(grp[0] in cpu_opt for grp in groups):   # every CPU sub-group waits for all gradients
            d2h = b.join(Action.STEP_JOIN, At(it, "grads"), "cpu.optim", sorted(d2h), fwd_prio(it + 1, 0) - 2, it)
        for s, grp in enumerate(groups):
            first = grp[0]
            prio = fwd_prio(it + 1, first) - 1
            params = sum(by[i].params for i in grp)
            home = [i for i in grp if i in homed]
            resident = [i for i in grp if i not in homed]
            if grp[0] in cpu_opt:
                ops = [Op(OpKind.ADAM_CPU, n=params, dtype="fp32")]
                if home:   # fp32 → 16-bit into the host home of the weights
                    ops.append(Op(OpKind.MEMCPY_CPU, n=sum(by[i].weight_bytes for i in home)))
                a = b.add(Action.ADAM_CPU, At(it, f"s{s}"), "cpu.optim", tuple(ops),
                          deps=d2h, prio=prio, it=it, block=first)
                done.append(a)
                if resident and parts:
                    # stage3.py ``_reassign_or_swap_out_partitioned_parameters``: the updated fp32
                    # partition is copied into the rank's 16-bit shard on its GPU (no gather: the
                    # next use gathers it); persistent tensors are re-gathered (``_post_step``)
                    h2d = dp.shard_h2d(it, f"s{s}", n * sum(self._esz(by[i]) * parts[i].shard for i in resident),
                                       {g: [a] for g in dp.gpus}, prio, first)
                    done += h2d.values()
                    done += self._persistent_ag(dp, it, s, [by[i] for i in resident], parts, h2d, prio, first)
                elif resident:
                    done += dp.to_gpu(it, Action.WEIGHTS_H2D, f"s{s}", sum(by[i].weight_bytes for i in resident), [a], prio,
                                      first).values()
                continue
            adam = {}
            g32 = sum(by[i].grad32_bytes for i in grp)
            for g in dp.gpus:
                deps = [t[g].last_B] + [reduced[i][g] for i in grp if i in reduced and g in reduced[i]]
                frees = [grads[g][i] for i in grp if i in grads[g]] if n == 1 else []
                allocs = []
                if n > 1 and g32:
                    # stage3.py ``_prepare_fp32_grad_for_sub_group``: the sub-group's gradient
                    # partition converted to fp32 for the step, dropped after it
                    buf = tname(it, "grads32", f"s{s}", g, n)
                    allocs, frees = [Alloc(buf, f"gpu{g}", shard(g32, n, g), MemClass.GRADS32)], [buf]
                before, after = around[s].get(g, ((), ()))
                adam[g] = b.add(Action.ADAM_GPU, at(it, f"s{s}", g, n), f"gpu{g}.compute",
                                before + (Op(OpKind.ADAM_GPU, n=shard(params, n, g), dtype="fp32"),) + after,
                                deps=deps,
                                prio=it * PRIO_IT + PRIO_IT // 2 + first, allocs=allocs,
                                frees=frees, it=it, block=first)
            done += adam.values()
            if home:
                done += dp.shard_d2h(it, f"s{s}", sum(by[i].weight_bytes for i in home),
                                     {g: [adam[g]] for g in dp.gpus}, prio, first).values()
            if resident and parts:   # the step updated the 16-bit shards in place on the GPU
                done += self._persistent_ag(dp, it, s, [by[i] for i in resident], parts, adam, prio, first)
            elif resident and n > 1:
                done += dp.collective(OpKind.ALLGATHER, Action.WEIGHTS_ALLGATHER, it, f"s{s}",
                                      sum(by[i].weight_bytes for i in resident),
                                      {g: [adam[g]] for g in dp.gpus}, prio, first).values()
        return sorted(done)

    @staticmethod
    def _esz(blk) -> int:
        """Bytes per 16-bit (working-precision) element of a block."""
        return blk.weight_bytes // blk.params

    def _part_bytes(self, blk, parts: dict[int, Partition], n: int, g: int) -> int:
        """Bytes of GPU g's gradient partition of ``blk`` (padded per tensor when partitioned)."""
        return self._esz(blk) * parts[blk.index].shard if blk.index in parts else shard(blk.grad_bytes, n, g)

    def _persistent_ag(self, dp: DataParallel, it: int, s: int, blocks: list, parts: dict[int, Partition],
                       after: dict[int, str], prio: int, first: int) -> list[str]:
        """stage3.py ``_post_step``: persistent tensors are all-gathered after the step."""
        nbytes = sum(self._esz(blk) * parts[blk.index].persist for blk in blocks)
        if not nbytes:
            return []
        return list(dp.collective(OpKind.ALLGATHER, Action.WEIGHTS_ALLGATHER, it, f"s{s}", nbytes,
                                  {g: [after[g]] for g in dp.gpus},
                                  prio, first).values())
