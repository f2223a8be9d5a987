"""``autohete``: AutoHete (Zeng et al., "AutoHete: An Automatic and Efficient Heterogeneous Training
System for LLMs", arXiv 2503.01890).

Plan: per transformer block, checkpoint or not and 16-bit weights offloaded or not; per block with
parameters, optimizer offloaded or not — chosen by the MILP of :mod:`simhete.policy.autohete_milp`
(minimum predicted iteration time under the GPU memory limit, priced by the same cost model).
Any decision can be pinned with a knob (``checkpointing``/``activations`` as in every policy;
``offload_param``/``offload_optimizer`` a bool for every block, or a list); pinning all of them
gives AutoHete's special cases (everything on the GPU; ZeRO-Offload-like: weights on the GPU,
optimizer on the CPU).

Schedule: an offloaded block's weights are fetched H2D one block ahead of its forward and again
one block ahead of its backward, and released after use. After a block's backward its gradients
go D2H at once (optimizer offloaded: the CPU steps it and, if its weights live on the GPU, copies
them back H2D) or wait on the GPU for the GPU Adam that follows the backward. Priority
scheduling across iterations: there is no global step barrier — the next iteration's forward of
block i waits only for block i's own update, and the CPU Adam and the H2D copies of updated
weights are served in the order the next forward needs them (priority = position of that
forward), so block 0 (whose gradient arrives last) is updated first while later blocks' updates
overlap the next forward.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simhete.errors import ConfigError
from simhete.opkinds import Action, At, MemClass, OpKind, at
from simhete.policy.autohete_memory import host_homes
from simhete.policy.autohete_milp import Milp, Plan, SolveLog, predict
from simhete.policy.base import Builder, Candidates, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel
from simhete.policy.layout import uses
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.structures import keyed_schedule
from simhete.policy.training import (PHASE, PRIO_IT, ActivationKnobs, accum_steps, act_modes, bwd_prio,
                                     forward_backward, fwd_prio, grad_prio)
from simhete.schedule import Alloc, Op, Schedule

Choice = bool | list[bool] | None


class AutoHeteKnobs(ActivationKnobs):
    checkpointing: Literal["auto", "none", "full", "every"] = "auto"
    """``auto``: the MILP decides per block; any other value (or a per-block ``activations`` list
    of keep/recompute) pins the checkpoint decisions as in the other policies."""
    offload_param: Choice = None
    """Pin weight offloading: a bool for every transformer block or one per block."""
    offload_optimizer: Choice = None
    """Pin optimizer offloading: a bool for every block with parameters (embed, b0 …, head) or a list."""
    headroom: float = Field(0.05, ge=0, lt=1)
    """Fraction of GPU memory the planner leaves free (allocator fragmentation, transients)."""
    solver_time_limit: float = Field(30.0, gt=0, allow_inf_nan=False)
    """Seconds HiGHS may spend on the MILPs of one plan, all solves together (the plan's and, with
    ``verify``, those of the special cases)."""
    verify: bool = True
    """Offer as candidates (:meth:`AutoHete.candidates`, simulated by simhete.search) the MILP's
    plan, the MILP's placement solved again under full checkpointing, and the special cases it
    generalises (everything on the GPU; ZeRO-Offload-like), each with the MILP's checkpointing and
    with full checkpointing; the fastest that fits is kept — the MILP's busiest-stream model can
    be optimistic (docs/policies.md)."""

    @model_validator(mode="after")
    def _consistent(self) -> "AutoHeteKnobs":   # replaces ActivationKnobs' check: "auto" is unset
        if self.activations is not None and self.checkpointing not in ("auto", "none"):
            raise ValueError("give either checkpointing or a per-block activations list, not both")
        return self


def pinned_decisions(ctx: Context, k: AutoHeteKnobs) -> dict[str, dict[int, bool]]:
    trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
    withp = [blk for blk in ctx.blocks if blk.params]
    out: dict[str, dict[int, bool]] = {}
    if k.checkpointing != "auto" or k.activations is not None:
        modes = act_modes(ctx, k.model_copy(update={"checkpointing": "none"}) if k.checkpointing == "auto" else k)
        out["checkpoint"] = {blk.index: modes[blk.index] == "recompute" for blk in trans}
    for var, blocks in (("offload_param", trans), ("offload_optimizer", withp)):
        v = getattr(k, var)
        if v is None:
            continue
        if isinstance(v, bool):
            v = [v] * len(blocks)
        if len(v) != len(blocks):
            raise ConfigError(ctx.scenario.file, f"knobs.{var}", f"{len(v)} entries",
                              allowed=f"a bool or one per block ({len(blocks)})")
        out[var] = {blk.index: bool(x) for blk, x in zip(blocks, v)}
    return out


@register("autohete")
class AutoHete(Policy):
    Knobs = AutoHeteKnobs
    multi_gpu = True

    def plan(self, ctx: Context) -> tuple[Plan, bool]:
        """The MILP's plan and whether it was feasible; if no plan fits, the most memory-frugal
        one (everything offloaded and checkpointed), so the simulation reports what overflows."""
        fixed = pinned_decisions(ctx, self.k)
        swap = self.swapped(ctx)
        plan = self._solve(ctx, fixed)
        if plan is not None:
            return plan, True
        trans = {blk.index for blk in ctx.blocks if blk.name.startswith("b")}
        ck = {blk.index: fixed.get("checkpoint", {}).get(blk.index, blk.index in trans) for blk in ctx.blocks}
        op = {blk.index: fixed.get("offload_param", {}).get(blk.index, blk.index in trans) for blk in ctx.blocks}
        oo = {blk.index: fixed.get("offload_optimizer", {}).get(blk.index, bool(blk.params)) for blk in ctx.blocks}
        ck = {i: ck[i] and i not in swap for i in ck}
        loads = predict(ctx, self._milp(ctx).costs, ck, op, oo, swap)
        return Plan(ck, op, oo, max(loads.values()), loads), False

    def swapped(self, ctx: Context) -> frozenset[int]:
        """Blocks whose activations the user's ``activations`` list swaps to the host."""
        if self.k.activations is None:
            return frozenset()
        return frozenset(i for i, m in act_modes(ctx, self.k).items() if m == "swap")

    def _left(self) -> float:
        """Seconds left of ``solver_time_limit``, which bounds the time one build spends inside
        HiGHS, all its solves together (setting up the MILPs, building and simulating schedules
        between solves are not counted)."""
        return self.k.solver_time_limit - (self._log.seconds if self._log else 0.0)

    def _solve(self, ctx: Context, fixed: dict[str, dict[int, bool]]) -> Plan | None:
        return self._milp(ctx).solve(fixed, self._left(), self._log)

    def _milp(self, ctx: Context) -> Milp:
        """The MILP of ``ctx``, built once per build: every solve of it (the plan, the special
        cases) pins other decisions of the same problem."""
        if self._read is None or self._read[0] is not ctx:
            self._read = (ctx, Milp(ctx, pinned=self.k.pin_memory, headroom=self.k.headroom, swap=self.swapped(ctx)))
        return self._read[1]

    _read: tuple | None = None       # (ctx, its Milp) during one build
    _log: SolveLog | None = None      # this build's time in HiGHS and what its limit cut short

    def build(self, ctx: Context) -> Schedule:
        """The MILP's plan: what ``verify: false`` runs, and what :meth:`candidates` falls back on."""
        self._log = SolveLog()
        try:
            plan, feasible, meta = self._planned(ctx)
            return self.schedule(ctx, plan, dict(meta, chosen="milp"), self._limited())
        finally:
            self._read = None
            self._log = None

    def candidates(self, ctx: Context) -> Candidates | None:
        """With ``verify``: the MILP's plan (if feasible) and the special cases it generalises, for
        simhete.search to simulate; if none fits, the MILP's plan (or the most frugal one)."""
        if not self.k.verify:
            return None
        self._log = SolveLog()
        try:
            plan, feasible, meta = self._planned(ctx)
            user = pinned_decisions(ctx, self.k)
            cands = [("milp", plan)] if feasible else []
            # the special cases: the MILP's own placement under full checkpointing (what the user gets
            # by pinning checkpointing: full), everything on the GPU, ZeRO-Offload-like
            for name, w, o in (("milp", None, None), ("all-gpu", False, False), ("zero-offload-like", False, True)):
                for full in (False, True):
                    if name == "milp" and not full:
                        continue                # the plan above
                    fixed = {} if w is None else {
                        "offload_param": {blk.index: w for blk in ctx.blocks if blk.name.startswith("b")},
                        "offload_optimizer": {blk.index: o for blk in ctx.blocks if blk.params}}
                    if full:
                        fixed["checkpoint"] = {blk.index: True for blk in ctx.blocks if blk.name.startswith("b")}
                    fixed = {v: {**fixed.get(v, {}), **user.get(v, {})} for v in sorted(set(fixed) | set(user))}
                    if self._left() <= 0:       # solver_time_limit spent: the candidates so far compete
                        meta["verify"] = "solver_time_limit reached before every special case was solved"
                        self._log.cut.append("AutoHete's solver_time_limit ran out before every special "
                                             "case was solved")
                        continue
                    p = self._solve(ctx, fixed)
                    if p is not None and all(p != c for _, c in cands):
                        cands.append((name + ("-full-checkpointing" if full else ""), p))
            limited = self._limited()
        finally:
            self._read = None
            self._log = None
        return Candidates((self.schedule(ctx, p, dict(meta, chosen=name), limited) for name, p in cands),
                          lambda: self.schedule(ctx, plan, dict(meta, chosen="milp"), limited))

    def _planned(self, ctx: Context) -> tuple[Plan, bool, dict[str, str]]:
        """:meth:`plan` and the schedule metadata that says what the MILP gave."""
        plan, feasible = self.plan(ctx)
        return plan, feasible, {"milp": "optimal" if feasible else "infeasible",
                                "milp_predicted_s": f"{plan.predicted_s:.6g}"}

    def _limited(self) -> str:
        """What this build's solver_time_limit cut short ("" if nothing): the plan then depends on
        the machine's speed, which the schedule says."""
        return "; ".join(dict.fromkeys(self._log.cut)) if self._log and self._log.cut else ""

    def schedule(self, ctx: Context, plan: Plan, meta: dict[str, str], time_limited: str = "") -> Schedule:
        """The schedule of ``plan``. Its structure follows from the plan's decisions (and the
        knobs and model), not from the sizes that led to them: a point whose plan was seen before
        gets that structure bound to its own sizes (simhete/policy/structures.py)."""
        if time_limited:   # the plan then depends on the machine's speed: say so
            meta = dict(meta, time_limited=time_limited)
        meta = dict(meta, policy=self.name, predicted_iter_s=f"{plan.predicted_s:.6g}",
                    checkpoint=_bits(plan.checkpoint), offload_param=_bits(plan.offload_param),
                    offload_optimizer=_bits(plan.offload_optimizer))
        decided = ("plan", meta["checkpoint"], meta["offload_param"], meta["offload_optimizer"],
                   tuple(sorted(self.swapped(ctx))))
        return keyed_schedule(self, ctx, self.key_with(ctx, decided), lambda: self._build(ctx, plan, meta), meta)

    def _build(self, ctx: Context, plan: Plan, meta: dict[str, str]) -> Schedule:
        k = self.k
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, k.pin_memory)
        n, nb = ctx.n_gpus, len(ctx.blocks)
        by = {blk.index: blk for blk in ctx.blocks}
        ck, op, oo = plan.checkpoint, plan.offload_param, plan.offload_optimizer
        swap = self.swapped(ctx)
        modes = {i: "swap" if i in swap else "recompute" if ck[i] else "keep" for i in by}
        gpu_w = {i for i in by if not op[i]}
        gpu_opt = {i for i in by if by[i].params and not oo[i]}
        cpu_opt = {i for i in by if by[i].params and oo[i]}
        initial = host_homes(ctx, op, oo)    # the MILP's host row is derived from the same list
        for g in dp.gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g, blocks=gpu_w)
            initial += model_states(ctx, {MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"}, gpu=g, blocks=gpu_opt)

        trace = uses(ctx.blocks)
        ga = accum_steps(ctx)
        update: dict[int, dict[int, str]] = {}    # block -> gpu -> task after which its new weights are usable
        last_B: dict[int, str] = {}
        for it in range(1, ctx.iterations + 1):
            out: dict[int, dict[int, str]] = {}    # block -> gpu -> its gradients' latest D2H
            for m in range(1, ga + 1):
                dp.m = m
                t = self._micro(b, ctx, dp, it, m, trace, op, modes, update if m == 1 else {}, last_B,
                                True if m == 1 else cpu_opt)
                for blk in reversed(ctx.blocks):        # in the order the gradients appear
                    i = blk.index
                    if i not in cpu_opt:
                        continue
                    deps = {g: [t[g].B[i]] for g in dp.gpus}
                    frees = {g: [t[g].grads[i]] for g in dp.gpus}
                    prio = grad_prio(it, nb - i, nb, m)
                    out[i] = dp.from_gpu(it, blk.name, blk.grad_bytes, deps, prio, i, frees=frees) \
                        if m == 1 else dp.accumulate(it, blk.name, blk.grad_bytes, deps, out[i], prio, i,
                                                     frees=frees)
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            update = {}
            for blk in reversed(ctx.blocks):            # in the order the gradients appear
                i = blk.index
                if i not in cpu_opt:
                    continue
                a = b.add(Action.ADAM_CPU, At(it, blk.name), "cpu.optim",
                          (Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32"),), deps=sorted(out[i].values()),
                          prio=fwd_prio(it + 1, i), it=it, block=i)
                if op[i]:
                    update[i] = {g: a for g in dp.gpus}
                else:
                    update[i] = dp.to_gpu(it, Action.WEIGHTS_H2D, blk.name, blk.weight_bytes, [a], fwd_prio(it + 1, i), i)
            for blk in ctx.blocks:                       # GPU Adam after the backward, forward order
                i = blk.index
                if i not in gpu_opt:
                    continue
                ar = dp.collective(OpKind.ALLREDUCE, Action.GRADS_ALLREDUCE, it, blk.name, blk.grad_bytes,
                                   {g: [t[g].B[i]] for g in dp.gpus}, grad_prio(it, nb - i, nb), i)
                adam = {g: b.add(Action.ADAM_GPU, at(it, blk.name, g, n), f"gpu{g}.compute",
                                 (Op(OpKind.ADAM_GPU, n=blk.params, dtype="fp32"),),
                                 deps=[t[g].last_B] + ([ar[g]] if ar else []),
                                 prio=it * PRIO_IT + PRIO_IT // 2 + i, frees=[grads[g][i]], it=it, block=i)
                        for g in dp.gpus}
                update[i] = adam if not op[i] else dp.shard_d2h(it, blk.name, blk.weight_bytes,
                                                                {g: [adam[g]] for g in dp.gpus},
                                                                fwd_prio(it + 1, i), i)
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

    def _micro(self, b: Builder, ctx: Context, dp: DataParallel, it: int, m: int, trace: list, op: dict[int, bool],
               modes: dict, update: dict[int, dict[int, str]], last_B: dict[int, str],
               grad_buffers: bool | set[int]) -> dict:
        """One micro-step: weight fetches one block ahead and forward/backward on every GPU; the
        forward of a block waits for ``update`` (the previous step's, micro-step 1 only)."""
        k = self.k
        n, nb = ctx.n_gpus, len(ctx.blocks)
        fdeps = {g: {} for g in dp.gpus}
        bdeps = {g: {} for g in dp.gpus}
        ffrees = {g: {} for g in dp.gpus}
        bfrees = {g: {} for g in dp.gpus}
        for u, (phase, blk) in enumerate(trace):
            i = blk.index
            if phase == "F" and not op[i]:
                for g in dp.gpus:
                    if i in update:
                        fdeps[g].setdefault(i, []).append(update[i][g])
            if not op[i]:
                continue
            if u >= 2:   # one block ahead: issued when the use before the previous one ends
                p2, b2 = trace[u - 2]
                trig = {g: [PHASE[p2].task_name(at(it, b2.name, g, n, m))] for g in dp.gpus}
            else:
                trig = {g: [last_B[g]] if g in last_B else [] for g in dp.gpus}
            if phase == "F" and i in update:
                for g in dp.gpus:
                    trig[g].append(update[i][g])
            fetch = Action.WEIGHTS_H2D_FWD if phase == "F" else Action.WEIGHTS_H2D_BWD
            # the buffer is named after the fetch less its "H2D" (``it1..wf.b3``: names are stable)
            buf = {g: dp.buffer(it, fetch.what()[3:], blk.name, g) for g in dp.gpus}
            prio = fwd_prio(it, i, m, nb) if phase == "F" else bwd_prio(it, i, nb, m)
            ready = dp.to_gpu(it, fetch, blk.name, blk.weight_bytes, trig, prio, i,
                              allocs={g: [Alloc(buf[g], f"gpu{g}", blk.weight_bytes, MemClass.WEIGHTS)]
                                      for g in dp.gpus})
            deps, frees = (fdeps, ffrees) if phase == "F" else (bdeps, bfrees)
            for g in dp.gpus:
                deps[g].setdefault(i, []).append(ready[g])
                frees[g].setdefault(i, []).append(buf[g])
        return {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=[last_B[g]] if g in last_B else [],
                                    fwd_weight_deps=fdeps[g], bwd_weight_deps=bdeps[g], fwd_frees=ffrees[g],
                                    bwd_frees=bfrees[g], pinned=k.pin_memory, m=m, grad_buffers=grad_buffers)
                for g in dp.gpus}


def _bits(d: dict[int, bool]) -> str:
    return "".join("1" if d[i] else "0" for i in sorted(d))
