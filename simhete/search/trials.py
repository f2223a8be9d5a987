"""The trials of capacity planning: one simulated configuration (:class:`Trial`), the planning
knobs tried per policy, and the runner that simulates and caches trials of one base scenario
(which policies can run it, with which knob combinations, which of them fits best). The searches
that ask it for trials are in :mod:`simhete.search.plan`.

Trials skip the dry-run schedule checker (as sweeps do: every policy is property-tested to build
valid schedules), whose reachability sets are quadratic in the tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from simhete.errors import ConfigError
from simhete.scenario import Scenario

# Knob values tried per policy, where the policy has a knob of that name (others keep defaults).
PLAN_KNOBS: dict[str, tuple[Any, ...]] = {
    "checkpointing": ("none", "full"),
    "delayed_update": (False, True),
    # only for the policies whose DeepSpeed host buffers it pins (pins_host_buffers): pinned
    # blocks are rounded up to a power of two (policy/process_memory.py); pageable ones are slower
    # but fit a smaller host
    "pin_memory": (True, False),
}
# The leanest value of each planning knob (least GPU memory), for "does anything fit" questions.
LEAN_KNOBS: dict[str, Any] = {"checkpointing": "full", "delayed_update": False,  # DPU adds 4 B/param on the host
                               "pin_memory": False}                              # no power-of-two rounding
# AutoHete's solver_time_limit in plan's trials (all MILPs of one trial together) unless the
# scenario sets it: HiGHS took 2-3 s per MILP on tight fits of 40 blocks, five per trial
PLAN_SOLVER_S = 1.0


def pins_host_buffers(policy: str) -> bool:
    """Whether ``pin_memory`` pins host buffers of ``policy`` that the caching host allocator
    rounds up: the DeepSpeed buffers that policy/process_memory.py models (its HOST_BUFFERS)."""
    from simhete.policy.process_memory import HOST_BUFFERS
    return policy in HOST_BUFFERS


class DepthPace:
    """When a search under a wall-time ``deadline`` (``time.monotonic()``) may start a trial of a
    model of a given depth: a trial is not interrupted, so one that would, at the seconds per layer
    of the deepest trial so far, end after the deadline is not started. A trial's time grows about
    linearly with the depth, and the deepest has the least of a trial's fixed cost in it (the most
    per layer, a shallow depth's, would refuse a depth that takes a fraction of the budget)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.layers, self.per_layer = 0, 0.0

    def may_start(self, layers: int) -> bool:
        import time
        return time.monotonic() + self.per_layer * layers <= self.deadline

    def took(self, layers: int, seconds: float) -> None:
        """A trial of ``layers`` layers took ``seconds``."""
        if layers >= self.layers:
            self.layers, self.per_layer = layers, seconds / layers


def solver_within(policy: str, knobs: dict[str, Any], left: float) -> dict[str, Any]:
    """``knobs`` with AutoHete's ``solver_time_limit`` (where ``policy`` has it) at most ``left``
    seconds, what is left of a search's budget (at least 1 ms: the knob must be positive)."""
    from simhete.policy import get_policy

    if "solver_time_limit" not in get_policy(policy).Knobs.model_fields:
        return knobs
    return {**knobs, "solver_time_limit": min(float(knobs.get("solver_time_limit", left)), max(left, 1e-3))}


@dataclass(frozen=True)
class Trial:
    """One simulated configuration."""

    policy: str
    knobs: dict[str, Any]
    fits: bool
    tokens_per_s: float | None
    peak_gpu_bytes: int
    peak_host_bytes: int
    reason: str                       # OOM message or why the combination is invalid
    uncalibrated: tuple[str, ...]
    dtype: str = ""                   # working precision the trial ran in
    cut: str = ""                     # what a solver time limit cut short in this trial's plan
                                      # (its answer then depends on the machine's speed), else ""
    seconds: float = field(default=0.0, compare=False)   # wall time the trial took (for budgets)


@dataclass
class TrialRunner:
    """Runs trials for one base scenario; caches profiles and trial results."""

    base: Scenario
    engine: str = "fast"
    policies: tuple[str, ...] | None = None
    fixed_knobs: dict[str, Any] | None = None        # from --deepspeed: evaluate exactly these
    _profiles: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Trial] = field(default_factory=dict)

    def _key(self, s: Scenario) -> str:
        import json

        return json.dumps(s.data.model_dump(mode="json", exclude_none=True), sort_keys=True)

    def trial(self, s: Scenario) -> Trial:
        import json
        import time

        from simhete.sim import resolve_profile, run

        key = self._key(s)
        if key in self._cache:
            return self._cache[key]
        pol, knobs = s.data.policy, dict(s.data.knobs)
        hkey = json.dumps(s.data.model_dump(mode="json")["hardware"], sort_keys=True)
        t0 = time.monotonic()
        try:
            if hkey not in self._profiles:
                self._profiles[hkey] = resolve_profile(s)
            # check=False: a search's trials skip the dry-run checker, as a sweep's points do
            res = run(s, engine=self.engine, profile=self._profiles[hkey], check=False)
        except ConfigError as e:
            t = Trial(pol, knobs, False, None, 0, 0, str(e), (), s.data.train.dtype,
                      seconds=time.monotonic() - t0)
        else:
            sm = res.summary
            gpu = max((m.peak_bytes for p, m in sm.memory.items() if p.startswith("gpu")), default=0)
            host = sm.memory["cpu"].peak_bytes if "cpu" in sm.memory else 0
            t = Trial(pol, knobs, sm.fits, sm.tokens_per_s, gpu, host, sm.oom or "", sm.uncalibrated,
                      s.data.train.dtype, res.schedule.meta.get("time_limited", ""),
                      seconds=time.monotonic() - t0)
        self._cache[key] = t
        return t

    def trials(self) -> list[Trial]:
        """Every trial run so far, in the order they ran."""
        return list(self._cache.values())

    # -- policies ---------------------------------------------------------------------------------

    def variants(self, policy: str, lean: bool = False) -> list[dict[str, Any]]:
        """Knob combinations tried for ``policy`` (the scenario's own knobs the policy has kept)."""
        from simhete.policy import get_policy

        fields = get_policy(policy).Knobs.model_fields
        if self.fixed_knobs is not None:
            return [dict(self.fixed_knobs)]
        own = {k: v for k, v in self.base.data.knobs.items() if k in fields and k not in PLAN_KNOBS}
        if "activations" in own:      # a per-block list fixes the activation policy
            own.pop("activations")
        names = [k for k in PLAN_KNOBS if k in fields and (k != "pin_memory" or pins_host_buffers(policy))]
        if "solver_time_limit" in fields and "solver_time_limit" not in own:
            own["solver_time_limit"] = PLAN_SOLVER_S
        if lean:
            return [{**own, **{k: LEAN_KNOBS[k] for k in names if k in LEAN_KNOBS}}]
        out = []
        for combo in itertools.product(*(PLAN_KNOBS[k] for k in names)):
            out.append({**own, **dict(zip(names, combo))})
        return out

    def policy_names(self, s: Scenario) -> list[str]:
        from simhete.policy import get_policy, list_policies

        names = list(self.policies or list_policies())
        prof = self._profile(s)
        accum = s.data.train.grad_accum > 1
        pure = s.data.train.precision == "pure" and s.data.train.dtype != "fp32"
        return [p for p in names if (prof.gpu.count == 1 or get_policy(p).multi_gpu)
                and not (accum and not get_policy(p).accumulates)
                and not (pure and get_policy(p).pure_precision)]

    def _profile(self, s: Scenario) -> Any:
        import json

        from simhete.sim import resolve_profile

        hkey = json.dumps(s.data.model_dump(mode="json")["hardware"], sort_keys=True)
        if hkey not in self._profiles:
            self._profiles[hkey] = resolve_profile(s)
        return self._profiles[hkey]

    def by_policy(self, s: Scenario | None = None, lean: bool = False) -> dict[str, list[Trial]]:
        s = s or self.base
        return {p: [self.trial(s.with_changes(policy=p, knobs=k)) for k in self.variants(p, lean)]
                for p in self.policy_names(s)}

    def best(self, s: Scenario | None = None) -> Trial | None:
        trials = [t for ts in self.by_policy(s).values() for t in ts if t.fits and t.tokens_per_s]
        return max(trials, key=lambda t: t.tokens_per_s or 0.0, default=None)

    def fits_anywhere(self, s: Scenario, deadline: float | None = None) -> bool | None:
        """Whether ``s`` fits under some policy with its leanest knobs; None if ``deadline``
        (``time.monotonic()``) passed before that was known."""
        import time

        from simhete.policy.registry import SHIPPED

        names = self.policy_names(s)
        order = list(SHIPPED)    # the registry's order: the most memory-frugal and cheapest first
        names.sort(key=lambda p: order.index(p) if p in order else len(order))
        for p in names:
            for k in self.variants(p, lean=True):
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    k = solver_within(p, k, left)
                if self.trial(s.with_changes(policy=p, knobs=k)).fits:
                    return True
        return False

    def lean(self, policy: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """``knobs`` with the planning knobs set to their leanest value where the policy has them."""
        from simhete.policy import get_policy

        if self.fixed_knobs is not None:
            return dict(knobs)
        fields = get_policy(policy).Knobs.model_fields
        return {**knobs, **{k: v for k, v in LEAN_KNOBS.items()
                            if k in fields and (k != "pin_memory" or pins_host_buffers(policy))}}
