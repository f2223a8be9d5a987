"""simhete compare SCENARIO: every applicable policy side by side, and the largest model of the
scenario's family that fits under each.

The largest-model answer per policy is a model name, "none fits" (JSON ``null``: not even the
smallest of the family fits), or "n/a: <why>" (JSON ``{"not_applicable": "<why>"}``) when the
question cannot be asked — the scenario's knobs cannot be carried to another model of the family
(a per-block ``knobs.activations`` list is for one depth only), or the model is not a named one.

The searches of every policy together keep a wall-time budget (``--budget``, as ``plan``'s): each
policy's search gets an equal share, what one leaves unused goes to the next, and one that overran
its share does not shorten the next one's. A trial is not interrupted, and one that would, at the
seconds per layer its policy's deepest trial took, end after the share's deadline is not started;
AutoHete's solver gets at most what is left of the share. A search the budget stopped says what
it knows and what it did not search ("at least X (not searched: ...)", JSON ``{"at_least": X or
null, "not_searched": [...]}``): that answer depends on the machine's speed and load; every other
answer is the same on every machine.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from simhete.commands._common import add_engine_arg, add_set_arg, apply_sets, console, dump_json
from simhete.search.largest import SEARCH_ITERATIONS

HELP = ("Run a scenario under every applicable policy and print them side by side (fits, iteration "
        "time, throughput, peak GPU/CPU memory, PCIe bytes), plus the largest model of the same family "
        "that fits under each policy.")

SEARCH_BUDGET_S = 5.0   # default wall time of every policy's largest-model search together


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML (see docs/scenarios.md)")
    p.add_argument("--policies", metavar="P1,P2", help="only these policies (comma separated)")
    p.add_argument("--no-largest", action="store_true", help="skip the largest-model search")
    p.add_argument("--budget", type=float, default=SEARCH_BUDGET_S, metavar="S",
                   help=f"wall-time budget of the largest-model searches, every policy's together "
                        f"(default {SEARCH_BUDGET_S:g} s; a search it stops says what it did not search)")
    p.add_argument("--json", action="store_true", help="print summaries and largest models as JSON")
    add_set_arg(p)
    add_engine_arg(p)


def candidates(s: Any) -> tuple[str, list[str]] | None:
    """(family, model names in increasing size) to search, or None if the scenario's model is not
    a plain preset or gpt-like name. gpt-like is open-ended: the scenario's width at ¼× … 16× its depth."""
    from simhete.sim import resolve_model
    from simhete.workload import family_models, gpt_like

    m = s.data.model
    name = m if isinstance(m, str) else (m.preset if m.model_dump(exclude_none=True).keys() == {"preset"} else None)
    if name is None:
        return None
    spec = resolve_model(s)
    if spec.family == "gpt-like":
        depths = sorted({max(1, round(spec.n_layers * f)) for f in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16)})
        return spec.family, [gpt_like(spec.hidden, d, spec.n_heads, spec.max_seq).name for d in depths]
    return spec.family, [x.name for x in family_models(spec.family)]


@dataclass(frozen=True)
class NotApplicable:
    """The largest-model search cannot be run for this policy, and why (not "none fits")."""

    reason: str

    def __str__(self) -> str:
        return f"n/a: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"not_applicable": self.reason}


@dataclass(frozen=True)
class Unsearched:
    """The budget stopped the largest-model search for this policy: the largest model found to fit
    (``None``: none found yet) and the models it did not decide, smallest first."""

    fits: str | None
    unsearched: tuple[str, ...]
    budget_s: float

    def __str__(self) -> str:
        span = self.unsearched[0] if len(self.unsearched) == 1 else f"{self.unsearched[0]} .. {self.unsearched[-1]}"
        return (f"at least {self.fits}" if self.fits else "undecided") + \
            f" (not searched: {span}; the {self.budget_s:g} s search budget ran out)"

    def to_json(self) -> dict[str, Any]:
        return {"at_least": self.fits, "not_searched": list(self.unsearched)}


Answer = str | None | NotApplicable | Unsearched


def _why_not_applicable(err: Any) -> str:
    """A short reason from the ConfigError a candidate model raised, e.g. ``knobs.activations lists
    4 blocks`` for a per-block list that has one entry per block of the scenario's model."""
    m = re.fullmatch(r"(\d+) entries", str(err.value)) if err.key else None
    if m:
        return f"{err.key} lists {m.group(1)} blocks"
    if err.key:
        return f"{err.key}: {err.problem}" if err.problem else f"{err.key} = {err.value!r} does not apply"
    return str(err)


def largest_fitting(s: Any, policy: str, engine: str, deadline: float = float("inf"),
                    budget_s: float = SEARCH_BUDGET_S, cut: list[str] | None = None) -> Answer:
    """Binary search over the family (fitting is taken as monotone in size): the largest model that
    fits; None if none fits; :class:`NotApplicable` if the scenario's knobs cannot be applied to a
    model of another size (a ConfigError, e.g. a per-block list) or the model is not a named one;
    :class:`Unsearched` if ``deadline`` (``time.monotonic()``) came first (``budget_s`` is the
    budget it is a share of, for the message). ``cut`` collects what a solver time limit cut
    short in the trials (their answers then depend on the machine's speed)."""
    import time

    from simhete.errors import ConfigError
    from simhete.search.compare import knobs_for
    from simhete.search.trials import DepthPace, solver_within
    from simhete.sim import resolve_profile, run
    from simhete.workload import get_model

    fam = candidates(s)
    if fam is None:
        return NotApplicable("the scenario's model is not a named preset or gpt-like model")
    names = fam[1]
    prof = resolve_profile(s)
    knobs = knobs_for(s, policy)
    pace = DepthPace(deadline)

    def fits(name: str) -> bool | None:
        layers = get_model(name).n_layers
        if not pace.may_start(layers):
            return None
        now = time.monotonic()
        k = solver_within(policy, knobs, deadline - now) if deadline < float("inf") else knobs
        # a search trial, as plan's and a sweep's: no dry-run schedule check (every policy is
        # property-tested to build valid schedules; the checker's reachability sets are quadratic
        # in the tasks), prices and timelines reused across trials (the same results)
        t = s.with_changes(model=name, policy=policy, knobs=k, iterations=SEARCH_ITERATIONS)
        res = run(t, engine=engine, profile=prof, check=False, memo=True)
        if res.schedule.meta.get("time_limited") and cut is not None:
            cut.append(f"{policy} on {name}: {res.schedule.meta['time_limited']}")
        pace.took(layers, time.monotonic() - now)
        return res.summary.fits
    lo, hi, best = 0, len(names) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            ok = fits(names[mid])
        except ConfigError as e:   # a knob that cannot apply to another depth (per-block lists)
            return NotApplicable(_why_not_applicable(e))
        if ok is None:
            return Unsearched(best, tuple(names[lo:hi + 1]), budget_s)
        if ok:
            best, lo = names[mid], mid + 1
        else:
            hi = mid - 1
    return best


def _cell(answer: Answer) -> str:
    return answer if isinstance(answer, str) else "none fits" if answer is None else str(answer)


def run(args: argparse.Namespace) -> int:
    from simhete.scenario import load_scenario
    from simhete.search.compare import compare_policies
    from simhete.workload import get_model

    if not (0 < args.budget < 86400):
        from simhete.errors import SimheteError
        raise SimheteError(f"--budget {args.budget}: must be a number of seconds above 0 (and below a day)")
    s = apply_sets(load_scenario(args.scenario), args.set)
    policies = [p.strip() for p in args.policies.split(",")] if args.policies else None
    if policies:
        from simhete.policy import get_policy
        for p in policies:
            get_policy(p, args.scenario, "--policies")
    refused: dict[str, str] = {}
    results = compare_policies(s, engine=args.engine, policies=policies, refused=refused)
    largest: dict[str, Answer] = {}
    cut: list[str] = []
    if not args.no_largest:
        import time
        start, n = time.monotonic(), len(results)
        for i, p in enumerate(results):
            # equal shares: what a search leaves goes to the next, and a search that overran its
            # share (a trial is not interrupted) does not take the next one's
            deadline = max(start + args.budget * (i + 1) / n, time.monotonic() + args.budget / n)
            largest[p] = largest_fitting(s, p, args.engine, deadline, args.budget, cut)
    from simhete.published import suite_error_for
    from simhete.sim import resolve_profile
    suite = suite_error_for(next(iter(results.values())).context.profile if results else resolve_profile(s))
    if args.json:
        print(dump_json({"summaries": {p: r.summary.to_dict() for p, r in results.items()},
                         "largest_fitting": {p: a.to_json() if isinstance(a, (NotApplicable, Unsearched)) else a
                                             for p, a in largest.items()},
                         "time_limited": cut,
                         "refused": refused, "published_suite": suite}), end="")
        return 0
    from rich.table import Table

    from simhete.report.table import render_comparison
    con = console()
    title = s.name
    if results and {i.partition("=")[0].strip().split(".")[0] for i in args.set} & {"model", "hardware"}:
        ctx = next(iter(results.values())).context      # what the name describes changed: say what ran
        gpus = ctx.profile.gpu.count
        title = f"{ctx.spec.name} on {ctx.profile.name}{f' x{gpus}' if gpus > 1 else ''}"
    con.print(render_comparison({p: r.summary for p, r in results.items()}, title=title))
    for p, why in refused.items():      # one line per policy that refuses this setup
        con.print(f"{p}: n/a — {why}", style="yellow", markup=False, highlight=False)
    con.print(suite["line"], style="cyan")
    fam = candidates(s)
    if largest and fam is not None:
        t = Table(title=f"largest {fam[0]} model that fits (micro-batch {s.data.train.micro_batch}, "
                        f"sequence {s.data.train.seq_len})", title_justify="left",
                  caption=f"searched: {', '.join(fam[1])}", caption_justify="left")
        t.add_column("policy")
        t.add_column("model")
        t.add_column("parameters", justify="right")
        for p, answer in largest.items():
            t.add_row(p, _cell(answer),
                      f"{get_model(answer).n_params() / 1e9:.2f} B" if isinstance(answer, str) else "—")
        con.print(t)
        if cut or any(isinstance(a, Unsearched) for a in largest.values()):
            con.print("Answers the search budget or AutoHete's solver_time_limit cut short depend on this "
                      "machine's speed and load (a larger --budget searches further)"
                      + ("; cut short: " + "; ".join(cut) if cut else ""), style="yellow", markup=False)
    return 0
