"""Capacity planning: does a model fit, under which policy, how fast, how big can it get.

Every answer is a simulation verdict (the engine's out-of-memory check on the policy's schedule),
not a separate formula, so ``plan`` and ``simulate`` never disagree. Searches:

- *policies*: each registered policy that can run on the hardware (and the scenario's gradient
  accumulation), with each combination of the
  planning knobs it has (:data:`simhete.search.trials.PLAN_KNOBS`); the best is the highest
  throughput that fits.
- *largest micro-batch*: for a fixed policy and knobs, memory in use at every instant grows with
  the micro-batch (activations and workspaces scale with batch × sequence; model states do not
  depend on it), so fit/no-fit is monotone in the batch: doubling finds a bracket, bisection the
  edge.
- *largest model of the family*: the family's presets ordered by size, bisected (every member is
  at least as wide and as deep as the one before, so what it holds grows along the list and
  fit/no-fit is monotone in it), the largest that fits under any policy (its leanest knobs); for
  the open-ended ``gpt-like`` family, the most layers at the same width (state and activations
  grow with depth: doubling, then bisection), up to the model-size limit
  (:data:`simhete.workload.spec.MAX_LAYERS`). Policies are tried cheapest and leanest first,
  stopping at the first that fits; AutoHete's solver gets what is left of the budget.
- *smallest hardware for a target throughput*: every shipped profile (with the requested GPU
  count), ordered smallest first by (GPUs, GPU memory, dense bf16 peak, host memory).

The two searches share one wall-time budget (``budget_s``; the micro-batch search may use half of
it, the model search the rest): a trial is not interrupted; the micro-batch and depth searches
do not start one that would end past the deadline at the rate trials have taken so far, and the
preset-family search starts none after it. What a search did not decide
when its time ran out is said (``mb_unsearched``, ``unsearched``) — such an answer depends on the
machine's speed and load; every other answer is the same on every machine. Trials skip the dry-run
schedule checker (:mod:`simhete.search.trials`).

Each answer carries the provenance of the numbers behind it: the capacities it was decided
against, and the uncalibrated (datasheet/assumed) numbers the throughput rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from simhete.search.trials import DepthPace, Trial, TrialRunner

MAX_MICRO_BATCH = 4096      # scenario.TrainShape's bound
SEARCH_BUDGET_S = 5.0       # default wall time of the micro-batch and largest-model searches together


def largest_fitting(fits: Callable[[int], bool | None], cap: int) -> tuple[int, int, bool]:
    """The largest n in 1..cap with ``fits(n)``, for ``fits`` true up to some n and false beyond:
    doubling from 1 (capped at ``cap``), then bisection. ``fits`` returns None when the search
    budget has run out. Returns ``(lo, hi, complete)``: ``lo`` the largest n known to fit (0:
    none), ``hi`` the smallest known not to (``cap + 1``: none known), ``complete`` False when the
    budget ran out before ``hi == lo + 1``."""
    first = fits(1)
    if first is None:
        return 0, cap + 1, False
    if not first:
        return 0, 1, True
    lo, hi = 1, 2                      # invariant: lo fits; hi does not, or is unknown
    while hi <= cap:
        ok = fits(hi)
        if ok is None:
            return lo, cap + 1, False
        if not ok:
            break
        lo, hi = hi, min(hi * 2, cap) if hi < cap else cap + 1
    if hi > cap:
        return lo, cap + 1, True
    while hi - lo > 1:                 # now hi does not fit
        mid = (lo + hi) // 2
        ok = fits(mid)
        if ok is None:
            return lo, hi, False
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, hi, True


@dataclass
class Planner(TrialRunner):
    """The searches of capacity planning over the trials of one base scenario, within one wall-time
    budget (``budget_s``)."""

    budget_s: float = SEARCH_BUDGET_S                # wall time of the two searches together
    unsearched: str | None = None                    # what the last largest_model() left unsearched
    mb_unsearched: str | None = None                 # what largest_micro_batch() left unsearched
    _start: float | None = None                      # when the first search began (time.monotonic)

    def _deadline(self, share: float = 1.0) -> float:
        """The searches' deadline: ``share`` of ``budget_s`` after the first search began."""
        import time

        if self._start is None:
            self._start = time.monotonic()
        return self._start + share * self.budget_s

    # -- largest micro-batch ------------------------------------------------------------------------

    def largest_micro_batch(self, policy: str, knobs: dict[str, Any]) -> tuple[int, int]:
        """(largest micro-batch found to fit, or 0, number of trials) for a fixed policy and knobs,
        within half the search budget; what that left undecided is in ``self.mb_unsearched``
        (None if nothing)."""
        import time

        self.mb_unsearched = None
        deadline = self._deadline(0.5)
        probes = []
        slowest = [0.0]       # the longest trial so far (one schedule structure at every batch)

        def fits(b: int) -> bool | None:
            s = self.base.with_changes(policy=policy, knobs=knobs, **{"train.micro_batch": b})
            if self._key(s) not in self._cache and time.monotonic() + slowest[0] > deadline:
                return None
            probes.append(b)
            t = self.trial(s)
            slowest[0] = max(slowest[0], t.seconds)
            return t.fits

        def out_of_time(lo: int, hi: int) -> tuple[int, int]:
            top = hi - 1 if hi <= MAX_MICRO_BATCH else MAX_MICRO_BATCH
            known = ([f"{lo} fits"] if lo else []) + ([f"{hi} does not"] if hi <= MAX_MICRO_BATCH else [])
            self.mb_unsearched = (f"micro-batches {lo + 1}..{top} (the {self.budget_s:g} s search budget "
                                  "ran out" + "".join("; " + k for k in [", ".join(known)] if k) + ")")
            return lo, len(probes)
        lo, hi, complete = largest_fitting(fits, MAX_MICRO_BATCH)
        return (lo, len(probes)) if complete else out_of_time(lo, hi)

    # -- largest model of the family ------------------------------------------------------------------

    def largest_model(self) -> tuple[str | None, str]:
        """(name of the largest family member found to fit, family description). Within
        ``budget_s`` seconds; what that left unsearched is in ``self.unsearched`` (None if all)."""
        from simhete.sim import resolve_model
        from simhete.workload import family_models, list_families

        self.unsearched = None
        deadline = self._deadline()
        spec = resolve_model(self.base)
        fam = spec.family
        if fam == "gpt-like":
            return (self._largest_gpt_like(spec.hidden, spec.n_heads, deadline),
                    f"gpt-like (hidden {spec.hidden}, by depth)")
        ref = self.base.data.model
        if not isinstance(ref, str) and ref.hf_config is not None:
            # a config.json model: its own architecture at every depth (all other dims as read)
            over = ref.model_dump(exclude_none=True)

            def hf_at(layers: int) -> tuple[Any, str]:
                return over | {"n_layers": layers}, f"{spec.name} with {layers} layers"
            return (self._largest_gpt_like(spec.hidden, spec.n_heads, deadline, hf_at),
                    f"{spec.name} (its config.json architecture, by depth)")
        if fam not in list_families():
            return None, f"{fam} (not a preset family)"
        members = family_models(fam)          # smallest first: each at least as wide and deep
        lo, hi = -1, len(members)             # invariant: members[lo] fits (or lo = -1), members[hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok = self.fits_anywhere(self.base.with_changes(model=members[mid].name), deadline)
            if ok is None:
                self.unsearched = (f"{', '.join(x.name for x in reversed(members[lo + 1:hi]))} (the "
                                   f"{self.budget_s:g} s search budget ran out"
                                   + (f"; {members[lo].name} fits" if lo >= 0 else "") + ")")
                return (members[lo].name if lo >= 0 else None), fam
            lo, hi = (mid, hi) if ok else (lo, mid)
        return (members[lo].name if lo >= 0 else None), fam

    def _largest_gpt_like(self, hidden: int, heads: int, deadline: float,
                          model_at: Any = None) -> str | None:
        """The deepest fitting gpt-like model of this width, or with ``model_at(layers)`` giving
        (scenario model, display name) the deepest fitting variant of another model."""
        import time

        from simhete.workload.spec import MAX_LAYERS

        def name(layers: int) -> str:
            return model_at(layers)[1] if model_at else f"gpt-like-h{hidden}-l{layers}-a{heads}"

        def model(layers: int) -> Any:
            return model_at(layers)[0] if model_at else name(layers)

        pace = DepthPace(deadline)

        def fits(layers: int) -> bool | None:
            if not pace.may_start(layers):
                return None
            t = time.monotonic()
            ok = self.fits_anywhere(self.base.with_changes(model=model(layers)), deadline)
            pace.took(layers, time.monotonic() - t)
            return ok

        def out_of_time(lo: int, hi: int) -> str | None:
            known = ([f"{lo} fits"] if lo else []) + ([f"{hi} does not"] if hi <= MAX_LAYERS else [])
            self.unsearched = (f"depths {lo + 1}..{hi - 1 if hi <= MAX_LAYERS else MAX_LAYERS} (the {self.budget_s:g} s "
                               "search budget ran out" + "".join("; " + k for k in [", ".join(known)] if k) + ")")
            return name(lo) if lo else None
        lo, hi, complete = largest_fitting(fits, MAX_LAYERS)
        if not complete:
            return out_of_time(lo, hi)
        if lo == MAX_LAYERS:
            self.unsearched = (f"deeper than {MAX_LAYERS} layers (the model-size limit; "
                               f"{MAX_LAYERS} layers fit)")
        return name(lo) if lo else None

    # -- smallest hardware --------------------------------------------------------------------------

    def smallest_hardware(self, target: float, gpus: int) -> tuple[str | None, list[tuple[str, Trial | None]]]:
        """(smallest shipped profile whose best throughput ≥ target, [(profile, best trial)])."""
        from simhete.hw import list_profiles

        rows: list[tuple[tuple[Any, ...], str, Trial | None]] = []
        for name in list_profiles():
            s = self.base.with_changes(hardware={"profile": name, "gpus": gpus})
            prof = self._profile(s)
            if prof.device_type == "cpu":       # a CPU acting as the device is for validation, not planning
                continue
            dtype = self.base.data.train.dtype
            if dtype not in prof.gpu.peak_tflops.available():
                # e.g. bf16 on a V100 or T4: such a GPU trains in fp16, so ask that question
                alt = next((d for d in ("fp16", "bf16") if d in prof.gpu.peak_tflops.available()), None)
                if alt is None:
                    continue
                s = s.with_changes(**{"train.dtype": alt})
            size = (prof.gpu.count, prof.gpu.memory_bytes,
                    getattr(prof.gpu.peak_tflops, "bf16", None).value
                    if getattr(prof.gpu.peak_tflops, "bf16", None) else 0.0,
                    prof.host.memory_bytes, name)
            rows.append((size, name, self.best(s)))
        rows.sort(key=lambda r: r[0])
        table = [(name, t) for _, name, t in rows]
        hit = next((name for _, name, t in rows if t is not None and (t.tokens_per_s or 0) >= target), None)
        return hit, table


def capacity_provenance(profile: Any, what_if: dict[str, str] | None = None) -> list[str]:
    """Where the capacities behind a fit verdict come from; ``what_if`` maps ``gpu.memory_bytes`` /
    ``host.memory_bytes`` to the command-line override that replaced the profile's value."""
    g, h = profile.gpu, profile.host
    w = what_if or {}
    gpu = w.get("gpu.memory_bytes", f"spec: {g.ref}")
    host = w.get("host.memory_bytes", f"spec: {h.ref}")
    return [f"gpu.memory_bytes = {g.memory_bytes} ({gpu})",
            f"gpu.reserved_bytes = {int(g.reserved_bytes.value)} ({g.reserved_bytes.source}: {g.reserved_bytes.ref})",
            f"host.memory_bytes = {h.memory_bytes} ({host})"]


def dedupe(flags: Iterable[str]) -> list[str]:
    return sorted(set(flags))
