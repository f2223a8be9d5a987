"""Digests of everything the simulator outputs, to show a speed change leaves results identical.

For every shipped scenario (``scenarios/*.yaml``): the schedule's text form, the durations, the
summary JSON, and the records, memory events, peaks and OOM report of both engines (``fast.compiled``:
the script sets ``SIMHETE_LOOP=compiled``, so it stops where the compiled loop is not built rather
than digest the SimPy fallback under that name); and every row of the 120-point sweep of
``benchmarks/sweep_speed.py`` (its ``id`` apart: it hashes the base scenario's absolute path). Prints one ``name sha256`` line per item.

Compare two trees (e.g. your working tree and a clean ``git worktree`` of HEAD):

    .venv/bin/python benchmarks/digests.py > new.txt
    (cd /tmp/head && /work/main/.venv/bin/python benchmarks/digests.py) > old.txt
    diff old.txt new.txt

The script imports ``simhete`` from the tree it lives in (not an installed copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def h(x: object) -> str:
    return hashlib.sha256(repr(x).encode()).hexdigest()[:24]


def timeline_key(tl) -> tuple:
    return (tl.records, tl.mem_events, sorted(tl.peak.items()),
            sorted((p, sorted(c.items())) for p, c in tl.peak_by_class.items()), tl.oom, tl.makespan)


def main() -> None:
    from simhete.engine import simulate_fast, simulate_simpy
    from simhete.scenario import load_scenario
    from simhete.schedule.text import format_schedule
    from simhete.sim import run

    assert Path(sys.modules["simhete"].__file__).resolve().is_relative_to(ROOT), "wrong simhete imported"
    os.environ["SIMHETE_LOOP"] = "compiled"          # digest the compiled loop, not a fallback
    for f in sorted((ROOT / "scenarios").glob("*.yaml")):
        s = load_scenario(f)
        res = run(s)
        sched, ctx = res.schedule, res.context
        durs = ctx.cost.durations(sched)
        rules = ctx.cost.interference()
        print(f"{f.stem}.schedule {h(format_schedule(sched))}")
        print(f"{f.stem}.durations {h([float(d).hex() for d in durs])}")
        print(f"{f.stem}.summary {h(json.dumps(res.summary.to_dict(), sort_keys=True))}")
        print(f"{f.stem}.simpy {h(timeline_key(simulate_simpy(sched, durs, rules)))}")
        print(f"{f.stem}.fast.compiled {h(timeline_key(simulate_fast(sched, durs, rules)))}")

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sweep_speed import SWEEP
    from simhete.search.backends import LocalBackend
    from simhete.search.runner import Runner
    from simhete.search.space import sweep_from_dict
    from simhete.search.store import ResultStore

    sweep = sweep_from_dict(dict(SWEEP), str(ROOT / "benchmarks" / "sweep_speed.yaml"))
    with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "x.sqlite") as st:
        rows = Runner(sweep, st, LocalBackend(1)).run().rows
    # a row's id hashes the resolved configuration, which names the base scenario by its absolute
    # path: it differs between checkouts, so it is digested apart (compare it within one checkout)
    plain = [{k: v for k, v in r.as_dict().items() if k != "id"} for r in rows]
    for r, d in zip(rows, plain):
        print(f"sweep.{r.idx} {h(d)}")
    print(f"sweep.all {h(plain)}")
    print(f"sweep.ids {h([r.id for r in rows])} (depends on the checkout's path)")


if __name__ == "__main__":
    main()
