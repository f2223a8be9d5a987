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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel, shard
from simhete.policy.layout import group, owners, uses
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.training import (PRIO_IT, ActivationKnobs, accum_steps, act_modes, bwd_prio,
                                     forward_backward, fwd_prio, grad_prio, tname)
from simhete.schedule import Alloc, Op, Schedule


class ZeroInfinityKnobs(ActivationKnobs):
    offload_param: Literal["cpu", "none"] = "cpu"
    """DeepSpeed ``offload_param.device``: where the 16-bit weights are homed."""
    offload_optimizer: Literal["cpu", "none"] = "cpu"
    """DeepSpeed ``offload_optimizer.device``: where fp32 master weights and Adam states live."""
    ratio: float = Field(1.0, ge=0, le=1)
    """DeepSpeed ``offload_optimizer.ratio``: fraction of the optimizer sub-groups (the last ones)
    offloaded to the CPU; the first ``1 - ratio`` stay on the GPU and step there."""
    stage3_prefetch_bucket_size: float = Field(5e7, ge=0)
    """Elements prefetched ahead of the running block (0: fetch on demand only)."""
    stage3_max_live_parameters: float = Field(1e9, ge=0)
    """Cap on fetched parameters resident on the GPU for prefetching."""
    stage3_max_reuse_distance: float = Field(1e9, ge=0)
    """Keep fetched weights if they are used again within this many elements of other parameters."""
    stage3_param_persistence_threshold: float = Field(1e5, ge=0)
    """Blocks with fewer parameters than this stay on the GPU (never fetched or released)."""
    sub_group_size: float = Field(1e9, gt=0)
    """Elements per optimizer step tile (whole blocks here)."""
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket reduced and copied D2H during backward."""


@dataclass
class FetchPlan:
    """Static prefetch/release decisions for one iteration's use trace (identical every iteration)."""

    fetches: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (hook use, target use, owners)
    holder: dict[tuple[int, int], int] = field(default_factory=dict)        # (use, owner) -> fetch id
    release: dict[int, list[int]] = field(default_factory=dict)             # use -> owners released after it


def plan_fetches(needs: list[list[int]], numel: dict[int, int], k: ZeroInfinityKnobs) -> FetchPlan:
    """Replay the partitioned-parameter coordinator over the use trace ``needs`` (owners per use)."""
    plan = FetchPlan()
    live: dict[int, int] = {}      # owner -> fetch id holding it

    def fetch(hook: int, target: int, miss: list[int]) -> None:
        plan.fetches.append((hook, target, miss))
        for o in miss:
            live[o] = len(plan.fetches) - 1

    for u, need in enumerate(needs):
        miss = [o for o in need if o not in live]
        if miss:
            fetch(u, u, miss)
        prefetched = 0
        for w in range(u + 1, len(needs)):
            if prefetched >= k.stage3_prefetch_bucket_size:
                break
            miss = [o for o in needs[w] if o not in live]
            n = sum(numel[o] for o in miss)
            if not miss:
                continue
            if sum(numel[o] for o in live) + n > k.stage3_max_live_parameters:
                break
            fetch(u, w, miss)
            prefetched += n
        for o in need:
            plan.holder[(u, o)] = live[o]
        for o in need:
            nxt = next((w for w in range(u + 1, len(needs)) if o in needs[w]), None)
            between = {p for w in range(u + 1, nxt) for p in needs[w]} - {o} if nxt is not None else set()
            if nxt is None or sum(numel[p] for p in between) > k.stage3_max_reuse_distance:
                plan.release.setdefault(u, []).append(o)
                del live[o]
    return plan


@register("zero-infinity")
class ZeroInfinity(Policy):
    Knobs = ZeroInfinityKnobs
    multi_gpu = True

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder()
        dp = DataParallel(b, ctx, k.pin_memory)
        n, nb = ctx.n_gpus, len(ctx.blocks)
        modes = act_modes(ctx, k)
        by = {blk.index: blk for blk in ctx.blocks}
        homed = {i for i, blk in by.items() if k.offload_param == "cpu" and blk.params
                 and blk.params >= k.stage3_param_persistence_threshold}
        groups = group(((blk.index, blk.params) for blk in ctx.blocks if blk.params), k.sub_group_size)
        n_gpu_groups = len(groups) if k.offload_optimizer == "none" else int((1 - k.ratio) * len(groups))
        cpu_opt = {i for gi, grp in enumerate(groups) if gi >= n_gpu_groups for i in grp}

        initial = model_states(ctx, {MemClass.WEIGHTS: "cpu"}, blocks=homed)
        for g in dp.gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g, blocks=set(by) - homed)
        initial += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"},
                                blocks=cpu_opt)
        for g in dp.gpus:   # ZeRO-3 partitions GPU optimizer states: 1/N on each GPU
            for i in sorted(set(by) - cpu_opt):
                blk = by[i]
                for cls, nbytes in ((MemClass.MASTER, blk.master_bytes), (MemClass.OPTIM, blk.optim_bytes)):
                    if nbytes:
                        initial.append(Alloc(f"{cls.value}.g{g}.{blk.name}", f"gpu{g}", shard(nbytes, n, g), cls))

        trace = uses(ctx.blocks)
        needs = [[o for o in owners(blk) if o in homed] for _, blk in trace]
        plan = plan_fetches(needs, {i: by[i].params for i in by}, k)
        buckets = group(((blk.index, blk.params) for blk in reversed(ctx.blocks) if blk.params), k.reduce_bucket_size)
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
                    return tname(it, phase, blk.name, g, n, m)

                fwd_deps: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                bwd_deps: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                fwd_frees: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                bwd_frees: dict[int, dict[int, list[str]]] = {g: {} for g in dp.gpus}
                ready: list[dict[int, str]] = []
                bufs: list[dict[int, dict[int, str]]] = []
                for f, (hook, target, miss) in enumerate(plan.fetches):
                    phase, blk = trace[target]
                    what = "H2D.wf" if phase == "F" else "H2D.wb"
                    if sum(1 for x in plan.fetches[:f] if x[1] == target):
                        what += str(sum(1 for x in plan.fetches[:f] if x[1] == target) + 1)
                    names = {g: dp.name(it, what, blk.name, g) for g in dp.gpus}
                    bufs.append({g: {o: f"{names[g]}.{by[o].name}" for o in miss} for g in dp.gpus})
                    trigger = {g: [compute(hook - 1, g)] if hook else start[g] for g in dp.gpus}
                    prio = fwd_prio(it, blk.index, m, nb) if phase == "F" else bwd_prio(it, blk.index, nb, m)
                    ready.append(dp.to_gpu(it, what, blk.name, sum(by[o].weight_bytes for o in miss), trigger, prio,
                                           blk.index, allocs={g: [Alloc(bufs[f][g][o], f"gpu{g}", by[o].weight_bytes,
                                                                        MemClass.WEIGHTS) for o in miss]
                                                              for g in dp.gpus}))
                for u, (phase, blk) in enumerate(trace):
                    deps, frees = (fwd_deps, fwd_frees) if phase == "F" else (bwd_deps, bwd_frees)
                    for g in dp.gpus:
                        held = sorted({plan.holder[(u, o)] for o in needs[u]})
                        deps[g].setdefault(blk.index, []).extend(ready[f][g] for f in held)
                        for o in plan.release.get(u, []):
                            frees[g].setdefault(blk.index, []).append(bufs[plan.holder[(u, o)]][g][o])

                t = {g: forward_backward(b, ctx, it, modes, gpu=g,
                                         start_deps=start[g], m=m,
                                         grad_buffers=True if m == 1 else cpu_opt,
                                         fwd_weight_deps=fwd_deps[g], bwd_weight_deps=bwd_deps[g],
                                         fwd_frees=fwd_frees[g], bwd_frees=bwd_frees[g], pinned=k.pin_memory)
                     for g in dp.gpus}
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                d2h, reduced = self._grads(ctx, dp, it, m, t, buckets, cpu_opt, prev)
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            step_done = self._step(b, ctx, dp, it, t, grads, d2h, reduced, groups, cpu_opt, homed)
        meta = {"policy": self.name, "gpu_subgroups": str(n_gpu_groups), "subgroups": str(len(groups))}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

    def _grads(self, ctx: Context, dp: DataParallel, it: int, m: int, t: dict, buckets: list[list[int]],
               cpu_opt: set[int], prev: dict[int, dict[int, str]]) -> tuple[list[str], dict[int, dict[int, str]]]:
        """Micro-step m's gradient buckets during its backward: offloaded blocks' (reduce-scatter +)
        D2H (after micro-step 1: accumulated through the GPU, :meth:`DataParallel.accumulate`),
        GPU-optimised blocks' reduce-scatter. Returns the D2H tasks and, per GPU-optimised block and
        GPU, the collective after which its gradients are reduced. ``prev`` (bucket -> gpu -> D2H)
        is updated in place."""
        by = {blk.index: blk for blk in ctx.blocks}
        nb = len(ctx.blocks)
        reduced: dict[int, dict[int, str]] = {}    # block -> gpu -> task after which its grads are reduced
        d2h: list[str] = []
        for j, bucket in enumerate(buckets):
            off = [i for i in bucket if i in cpu_opt]
            kept = [i for i in bucket if i not in cpu_opt]
            deps = {g: [t[g].B[i] for i in bucket] for g in dp.gpus}
            prio = grad_prio(it, j, nb, m)
            if off:
                nbytes = sum(by[i].grad_bytes for i in off)
                frees = {g: [t[g].grads[i] for i in off] for g in dp.gpus}
                prev[j] = dp.from_gpu(it, "D2H.g", f"k{j}", nbytes, deps, prio, off[0], frees=frees) if m == 1 \
                    else dp.accumulate(it, "D2H.g", f"k{j}", nbytes, deps, prev[j], prio, off[0], frees=frees)
                d2h += prev[j].values()
            if kept:
                rs = dp.collective(OpKind.REDUCE_SCATTER, it, "RS.g", f"k{j}",
                                   sum(by[i].grad_bytes for i in kept), deps, prio, kept[0])
                for i in kept:
                    reduced[i] = {g: rs[g] for g in rs}
        return d2h, reduced

    def _step(self, b: Builder, ctx: Context, dp: DataParallel, it: int, t: dict, grads: dict,
              d2h: list[str], reduced: dict[int, dict[int, str]], groups: list[list[int]], cpu_opt: set[int],
              homed: set[int]) -> list[str]:
        """The optimizer step after the last micro-step's backward, sub-group by sub-group; returns
        the tasks the next forward waits for. ``grads``: micro-step 1's gradient buffers (GPU Adam
        frees the GPU-optimised blocks' ones)."""
        by = {blk.index: blk for blk in ctx.blocks}
        n = ctx.n_gpus
        done: list[str] = []
        if any(grp[0] in cpu_opt for grp in groups):   # every CPU sub-group waits for all gradients
            d2h = b.join(tname(it, "STEP", "grads"), "cpu.optim", sorted(d2h), fwd_prio(it + 1, 0) - 2, it)
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
                a = b.add(tname(it, "ADAM.cpu", f"s{s}"), "cpu.optim", TaskCat.OPTIM_CPU, tuple(ops),
                          deps=d2h, prio=prio, it=it, block=first)
                done.append(a)
                if resident:
                    done += dp.to_gpu(it, "H2D.w", f"s{s}", sum(by[i].weight_bytes for i in resident), [a], prio,
                                      first).values()
                continue
            adam = {}
            for g in dp.gpus:
                deps = [t[g].last_B] + [reduced[i][g] for i in grp if i in reduced and g in reduced[i]]
                adam[g] = b.add(tname(it, "ADAM.gpu", f"s{s}", g, n), f"gpu{g}.compute", TaskCat.OPTIM_GPU,
                                (Op(OpKind.ADAM_GPU, n=shard(params, n, g), dtype="fp32"),), deps=deps,
                                prio=it * PRIO_IT + PRIO_IT // 2 + first,
                                frees=[grads[g][i] for i in grp if i in grads[g]], it=it, block=first)
            done += adam.values()
            if home:
                done += dp.shard_d2h(it, "D2H.w", f"s{s}", sum(by[i].weight_bytes for i in home),
                                     {g: [adam[g]] for g in dp.gpus}, prio, first).values()
            if resident and n > 1:
                done += dp.collective(OpKind.ALLGATHER, it, "AG.w", f"s{s}", sum(by[i].weight_bytes for i in resident),
                                      {g: [adam[g]] for g in dp.gpus}, prio, first).values()
        return sorted(done)
