"""simhete compare SCENARIO: every applicable policy side by side, and the largest model of the
scenario's family that fits under each."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from simhete.commands._common import add_engine_arg, console, dump_json

HELP = ("Run a scenario under every applicable policy and print them side by side (fits, iteration "
        "time, throughput, peak GPU/CPU memory, PCIe bytes), plus the largest model of the same family "
        "that fits under each policy.")

SEARCH_ITERATIONS = 2   # whether a model fits is decided by the warm-up and one steady iteration


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML (see docs/scenarios.md)")
    p.add_argument("--policies", metavar="P1,P2", help="only these policies (comma separated)")
    p.add_argument("--no-largest", action="store_true", help="skip the largest-model search")
    p.add_argument("--json", action="store_true", help="print summaries and largest models as JSON")
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


def largest_fitting(s: Any, policy: str, engine: str) -> str | None:
    """Binary search over the family (fitting is taken as monotone in size); None if none fits."""
    from simhete.compare import knobs_for
    from simhete.errors import ConfigError
    from simhete.sim import run

    fam = candidates(s)
    if fam is None:
        return None
    names = fam[1]

    def fits(name: str) -> bool:
        t = s.with_changes(model=name, policy=policy, knobs=knobs_for(s, policy), iterations=SEARCH_ITERATIONS)
        try:
            return run(t, engine=engine).summary.fits
        except ConfigError:   # a knob that cannot apply to another depth (per-block lists)
            return False
    lo, hi, best = 0, len(names) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(names[mid]):
            best, lo = names[mid], mid + 1
        else:
            hi = mid - 1
    return best


def run(args: argparse.Namespace) -> int:
    from simhete.compare import compare_policies
    from simhete.report.table import render_comparison
    from simhete.scenario import load_scenario
    from simhete.workload import get_model

    s = load_scenario(args.scenario)
    policies = [p.strip() for p in args.policies.split(",")] if args.policies else None
    if policies:
        from simhete.policy import get_policy
        for p in policies:
            get_policy(p, args.scenario, "--policies")
    results = compare_policies(s, engine=args.engine, policies=policies)
    largest = {} if args.no_largest else {p: largest_fitting(s, p, args.engine) for p in results}
    if args.json:
        print(dump_json({"summaries": {p: r.summary.to_dict() for p, r in results.items()},
                         "largest_fitting": largest}), end="")
        return 0
    con = console()
    con.print(render_comparison({p: r.summary for p, r in results.items()}, title=s.name))
    fam = candidates(s)
    if largest and fam is not None:
        t = Table(title=f"largest {fam[0]} model that fits (micro-batch {s.data.train.micro_batch}, "
                        f"sequence {s.data.train.seq_len})", title_justify="left",
                  caption=f"searched: {', '.join(fam[1])}", caption_justify="left")
        t.add_column("policy")
        t.add_column("model")
        t.add_column("parameters", justify="right")
        for p, name in largest.items():
            t.add_row(p, name or "none fits", f"{get_model(name).n_params() / 1e9:.2f} B" if name else "—")
        con.print(t)
    return 0
