"""simhete sweep SWEEP.yaml: run a policy/scenario sweep into a resumable results store."""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from simhete.commands._common import add_engine_arg, check_writable, console
from simhete.errors import SimheteError
from simhete.version import code_fingerprint

MAX_POINTS = 100_000   # a sweep keeps one row per point for its report (~6 KB each with its caches)

HELP = ("Run a sweep (axes over scenario keys and policy knobs; grid, random or optimize) on a local "
        "process pool or Ray, storing each point as it finishes; report the best configurations and "
        "Pareto fronts.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML (see docs/sweeps.md)")
    p.add_argument("--out", metavar="PATH", help="results store (SQLite; default results/<sweep>.sqlite)")
    p.add_argument("--resume", action="store_true",
                   help="continue into an existing --out: points whose resolved configuration is stored are "
                        "reused (also after the sweep file changed), the others run")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (local) or CPUs of a local Ray instance (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local process pool (default) or ray")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local one)")
    p.add_argument("--resume-stale", action="store_true",
                   help="resume even though the stored results come from another simhete version")
    p.add_argument("--deepspeed", metavar="JSON", help="apply a DeepSpeed config to the base scenario")
    p.add_argument("--csv", metavar="PATH", help="also export the results as CSV")
    p.add_argument("--parquet", metavar="PATH", help="also export the results as Parquet (needs pyarrow)")
    p.add_argument("--plot", metavar="PATH", help="PNG of the Pareto fronts (default <out>.pareto.png)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="best configurations to list (default 10)")
    p.add_argument("--max-points", type=int, default=MAX_POINTS, metavar="N",
                   help=f"refuse a sweep that would evaluate more than N points (default {MAX_POINTS:,})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arg(p)


def run(args: argparse.Namespace) -> int:
    from simhete.search import analysis
    from simhete.search.backends import Stopped, make_backend
    from simhete.search.runner import Runner, planned_points
    from simhete.search.space import load_sweep
    from simhete.search.store import ResultStore

    if args.workers < 1:
        raise SimheteError(f"--workers {args.workers}: must be at least 1")
    cores = os.cpu_count() or 1
    if args.backend == "local" and args.workers > 4 * cores:
        # each worker is a process simulating flat out: beyond the cores they only share them
        raise SimheteError(f"--workers {args.workers}: bad value; allowed: 1 to {4 * cores} (4 per core "
                           f"of this machine's {cores}) with --backend local")
    hook = None
    if args.deepspeed:
        from simhete.search.deepspeed import import_deepspeed

        def hook(base):  # type: ignore[no-untyped-def]
            imp = import_deepspeed(base, args.deepspeed)
            imp.print_notes()
            return imp.scenario
    if args.max_points < 1:
        raise SimheteError(f"--max-points {args.max_points}: must be at least 1")
    if args.top < 0:
        raise SimheteError(f"--top {args.top}: must be 0 or more")
    sweep = load_sweep(args.sweep, hook)
    if planned_points(sweep) > args.max_points:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in sweep.axes)
        raise SimheteError(f"{args.sweep}: {planned_points(sweep):,} points to evaluate ({sweep.strategy.name} over "
                           f"{sizes}), over the limit of {args.max_points:,}; narrow the axes, use strategy "
                           "random or optimize, or raise it with --max-points N")
    out = check_writable(args.out or f"results/{Path(args.sweep).stem}.sqlite", "--out")
    plot = check_writable(args.plot or str(out.with_suffix(".pareto.png")), "--plot")
    csv = check_writable(args.csv, "--csv")
    parquet = check_writable(args.parquet, "--parquet")
    if parquet is not None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SimheteError("--parquet needs pyarrow, which is not installed (pip install pyarrow); "
                               "use --csv instead") from None
    code = code_fingerprint()
    con = console()
    total = planned_points(sweep)
    try:
        store = ResultStore(out)        # the one-writer lock; an existing file checked read-only first
    except SimheteError as e:
        raise SimheteError(f"--out {e}") from None
    stopped: int | None = None
    try:
        n, before = store.count(), store.meta().get("code")
        if n and not (args.resume or args.resume_stale):
            raise SimheteError(f"--out {out}: holds {n} results already; pass --resume to continue "
                               "that sweep, or give a new --out")
        if n and before not in (None, code) and not args.resume_stale:
            raise SimheteError(f"--out {out}: its {n} results come from simhete {before}, this is {code}; "
                               "results of two versions would mix: give a new --out, or pass "
                               "--resume-stale to continue anyway")
        con.print(f"[bold]{sweep.name}[/]: {sweep.strategy.name} over {sweep.grid_size} grid points "
                  f"({len(sweep.axes)} axes: {', '.join(sweep.keys)}); {total} to evaluate with "
                  f"{args.workers} {args.backend} worker(s) → {out}")
        t0 = time.perf_counter()
        with _stop_on_signals() as stop:
            # no more local worker processes than points to evaluate
            workers = min(args.workers, max(1, total)) if args.backend == "local" else args.workers
            backend = make_backend(args.backend, workers, args.ray_address)
            try:
                store.set_meta(sweep=sweep.name, file=str(sweep.file), keys=list(sweep.keys), code=code)
                with _progress(con, total, args.quiet) as progress:
                    outcome = Runner(sweep, store, backend, args.engine, progress).run()
            except (KeyboardInterrupt, Stopped) as e:
                stopped = 143 if isinstance(e, Stopped) and e.signum == signal.SIGTERM else 130
            finally:
                stop.hold()            # a second signal while the pool shuts down changes nothing
                backend.close()
            if stopped is not None:
                print(f"simhete: stopped: {store.count_members()} of {total} points stored in {out}; "
                      "--resume continues", file=sys.stderr)
                return stopped
        if csv is not None:
            store.to_csv(csv)
        if parquet is not None:
            store.to_parquet(parquet)
        others = store.count() - len({r.id for r in outcome.rows})
    except sqlite3.DatabaseError as e:
        raise SimheteError(f"--out {out}: {' '.join(str(e).split())}") from None
    finally:
        store.close()
    dt = time.perf_counter() - t0
    rows = outcome.rows
    counts = analysis.status_counts(rows)
    con.print(f"{len(rows)} points ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
              f"{outcome.ran} simulated, {outcome.skipped} already in the store; {dt:.1f} s"
              + (f"; {others} stored results of points not in this sweep kept, not reported" if others else ""))
    keys = list(sweep.keys)
    top = analysis.best(rows, sweep.limits, args.top)
    if top:
        con.print(analysis.rows_table(top, keys, f"Best {len(top)} by throughput (fits"
                                      + (", within the sweep's limits" if _has_limits(sweep) else "") + ")"))
        for col, (_, label) in analysis.FRONTS.items():
            front = analysis.pareto(rows, sweep.limits, analysis.FRONTS[col][0])
            con.print(analysis.rows_table(front, keys, f"Pareto front: throughput vs {label}"))
        analysis.plot_fronts(rows, sweep.limits, plot, title=sweep.name)
        con.print(f"Pareto plot: {plot}")
    else:
        con.print("[bold red]No configuration fits[/]" + (" within the sweep's limits" if _has_limits(sweep) else ""))
    for line in _rests_on(top, sweep):
        con.print(line, style="yellow" if line.startswith("The best") else "cyan")
    fails = analysis.failures_table(rows)
    if fails is not None:
        con.print(fails)
    if csv is not None:
        con.print(f"CSV: {csv}")
    if parquet is not None:
        con.print(f"Parquet: {parquet}")
    return 1 if counts.get("error") else 0


def _rests_on(top, sweep) -> list[str]:  # type: ignore[no-untyped-def]
    """What the best point rests on (its uncalibrated numbers) and, for every hardware class among
    the best points (the base scenario's when none fits), the published suite's measured error."""
    import json

    from simhete.errors import SimheteError
    from simhete.hw.profile import load_profile
    from simhete.published import suite_error_for
    from simhete.sim import resolve_profile

    out = []
    if top:
        flags = json.loads(top[0].uncalibrated or "[]")
        out.append("The best point rests on uncalibrated numbers: " + ", ".join(flags) if flags else
                   "The best point rests only on calibrated (measured) numbers: no number behind it is flagged.")
    profiles = {}
    for r in top:
        name = json.loads(r.summary).get("meta", {}).get("hardware") if r.summary else None
        if name and name not in profiles:
            try:
                profiles[name] = load_profile(name)
            except SimheteError:     # a profile given by a path relative to the sweep file
                pass
    if not profiles:
        profiles[""] = resolve_profile(sweep.base)
    lines = dict.fromkeys(suite_error_for(p)["line"] for p in profiles.values())
    return out + list(lines)


def _has_limits(sweep) -> bool:  # type: ignore[no-untyped-def]
    return sweep.limits.gpu_memory is not None or sweep.limits.host_memory is not None


def _stop_on_signals() -> "StopOnSignals":
    """While a sweep runs, SIGTERM raises :class:`Stopped` so the sweep stops where it is: the
    transaction in progress rolls back, what is committed stays (see ``StopOnSignals``)."""
    from simhete.commands._common import StopOnSignals
    from simhete.search.backends import Stopped
    return StopOnSignals(Stopped)


class _progress:
    """A rich progress bar (points done / total, rate, ETA) wired to the runner's Progress."""

    def __init__(self, con, total: int, quiet: bool) -> None:  # type: ignore[no-untyped-def]
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from simhete.search.runner import Progress

        self.bar = None if quiet else Bar(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} points/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=con, transient=False)
        self.task = None
        self.t0 = time.perf_counter()
        self.ran = 0
        self.progress = Progress(total, self._advance)
        if self.bar is not None:
            self.task = self.bar.add_task("sweep", total=total, rate="-")

    def _advance(self, ran: int, skipped: int) -> None:
        self.ran += ran
        if self.bar is not None and self.task is not None:
            dt = time.perf_counter() - self.t0
            rate = f"{self.ran / dt:,.0f}" if dt > 0 and self.ran else "-"
            self.bar.update(self.task, advance=ran + skipped, rate=rate)

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.bar is not None:
            self.bar.start()
        return self.progress

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        if self.bar is not None:
            self.bar.stop()
