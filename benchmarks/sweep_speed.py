"""Sweep throughput: configurations per second per core for a 13B-class model sweep (issue 7).

Runs a grid over LLaMA-2-13B (seq 4096) on one H100 PCIe — ZeRO-Offload, micro-batch ×
checkpointing × delayed update × bucket size, 3 iterations per point — through the real sweep path
(point resolution and hashing, policy build, schedule check, cost model, fast engine, summary,
SQLite store) in ONE process, so the figure is per core. Then prints where the time goes
(cProfile, grouped by stage). Target: ≥ 500 configurations/s/core.

The fast engine's compiled loop is timed (``SIMHETE_LOOP=compiled``: the script stops where the
extension is not built rather than time the SimPy fallback); CPU time via ``time.process_time`` is
the headline on a shared machine, wall time alongside.

Sweeps are thousands of configurations, so a second grid of 1 080 points (``LARGE``: the same
axes with more values, and sequence length) runs in a fresh process and its figure is the
process's **whole** CPU time: interpreter start, imports and the sweep (with simhete's bytecode
cached, as an install leaves it: the script compiles it first, since a machine with
``PYTHONDONTWRITEBYTECODE`` set would otherwise compile ~50 modules in every process). Each such
run is followed by ``simhete sweep`` on the same grid, as a user runs it, timed whole (the CLI's
start-up, the sweep, the report and the Pareto PNG the command always writes).

    .venv/bin/python benchmarks/sweep_speed.py [--points N] [--repeats R] [--large-repeats L] [--no-profile]
    .venv/bin/python benchmarks/sweep_speed.py --stages     # CPU per point by stage, both grids
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simhete import cache
from simhete import sim
from simhete.workload import ops as workload_ops
from simhete.search.backends import LocalBackend
from simhete.search.runner import Runner
from simhete.search.space import sweep_from_dict
from simhete.search.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
TARGET = 500.0
TASKS_PER_POINT = 690       # about
SWEEP = {
    "name": "13B sweep-speed benchmark",
    "base": str(REPO / "scenarios" / "llama2-13b_h100-pcie_zero-offload.yaml"),
    "axes": {
        "train.micro_batch": [1, 2, 3, 4, 6, 8],
        "knobs.checkpointing": ["none", "full"],
        "knobs.delayed_update": [False, True],
        "knobs.reduce_bucket_size": [5e7, 1e8, 2e8, 5e8, 1e9],
    },
}
LARGE = {
    "name": "13B sweep-speed benchmark, 1080 points",
    "base": SWEEP["base"],
    "axes": {
        "train.micro_batch": [1, 2, 3, 4, 5, 6, 8, 10, 12, 16],
        "train.seq_len": [1024, 2048, 4096],
        "knobs.checkpointing": ["none", "full", "every"],
        "knobs.delayed_update": [False, True],
        "knobs.reduce_bucket_size": [5e7, 1e8, 2e8, 5e8, 1e9, 2e9],
    },
}
LARGE_RUN = """
import json, sys, time
sys.path.insert(0, {bench!r})
import sweep_speed
c0, w0 = time.process_time(), time.perf_counter()
n, dt = sweep_speed.run_once(None, sweep_speed.LARGE)
print(json.dumps({{"n": n, "sweep_cpu": time.process_time() - c0, "sweep_wall": dt,
                  "process_cpu": time.process_time()}}))
"""
# Stages of the per-point path, by the function that is their entry point.
STAGES = [
    ("point resolution + id hash (search/points.py)", "points.py", "point"),
    ("policy build (policy/*)", "", "build"),
    ("structure of a new build (schedule/structure.py)", "structure.py", "of_rows"),
    ("binding a size table (schedule/structure.py)", "structure.py", "bind"),
    ("schedule check (schedule/check.py)", "check.py", "check_schedule"),
    ("prices + PCIe bytes per ops tuple (sim.py)", "sim.py", "_memo_palette"),
    ("engine (engine/fast.py)", "fast.py", "simulate_fast"),
    ("summarize (report/metrics.py)", "metrics.py", "summarize"),
    ("PCIe bytes per task (report/pcie.py)", "pcie.py", "pcie_task_arrays"),
    ("row reduction (search/evaluate.py)", "evaluate.py", "summary_row"),
    ("results store (search/store.py)", "store.py", "put"),
]


def fresh_caches() -> None:
    """Forget what earlier sweeps in this process left: what ``simhete.cache`` holds (the
    policies' structures with the engine's index of each, shared ops, kept cost models on the loader's
    profiles) and built workloads with what builds keep on them (bucket partitions, model-state
    buffers, block plans; each timed sweep starts as a new sweep process would, imports aside).
    Prices, indexed forms and timelines live on schedules, which a new sweep makes afresh."""
    cache.clear()
    workload_ops._build.cache_clear()


def run_once(n_points: int | None, grid: dict | None = None) -> tuple[int, float]:
    fresh_caches()
    data = dict(grid or SWEEP)
    if n_points is not None:
        data["strategy"] = {"name": "random", "samples": n_points, "seed": 0}
    sweep = sweep_from_dict(data, str(REPO / "benchmarks" / "sweep_speed.yaml"))
    with tempfile.TemporaryDirectory() as d:
        backend = LocalBackend(1)
        with ResultStore(Path(d) / "bench.sqlite") as st:
            t0 = time.perf_counter()
            out = Runner(sweep, st, backend).run()
            dt = time.perf_counter() - t0
    return len(out.rows), dt


def stages(grid: dict) -> None:
    """CPU time per point by stage, the grid run twice in this process through ``evaluate`` (the
    worker's code path, no store), caches forgotten before each pass, the second pass reported;
    stages timed by wrapping their entry points (``--stages``; compiled loop)."""
    import gc

    from simhete.search import evaluate as ev
    from simhete.search.runner import Runner as R

    sweep = sweep_from_dict(dict(grid), str(REPO / "benchmarks" / "sweep_speed.yaml"))
    with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "x.sqlite") as st:
        r = R(sweep, st, LocalBackend(1))
        pts = [r.point(i) for i in range(sweep.grid_size)]
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapped(*a, **k):
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - c
        return wrapped

    saved = {n: getattr(sim, n) for n in ("resolve", "choose_schedule", "_memo_palette", "simulate",
                                          "pcie_task_arrays", "summarize")}
    saved_row = ev.summary_row
    for name, label in (("resolve", "resolve (workload, knobs, cost model)"), ("choose_schedule", "policy build / bind / pick"),
                        ("_memo_palette", "prices + PCIe bytes per ops tuple"), ("simulate", "engine"),
                        ("pcie_task_arrays", "PCIe bytes per task"), ("summarize", "summarize")):
        setattr(sim, name, timed(label, saved[name]))
    ev.summary_row = timed("row", saved_row)
    os.environ["SIMHETE_LOOP"] = "compiled"
    try:
        for _ in range(2):
            fresh_caches()
            spent.clear()
            gc.disable()
            c0 = time.process_time()
            for p in pts:
                ev.evaluate(p.id, p.idx, p.params, p.scenario)
            total = time.process_time() - c0
            gc.enable()
    finally:
        for n, f in saved.items():
            setattr(sim, n, f)
        ev.summary_row = saved_row
    print(f"\nper point by stage ({len(pts)} points, compiled loop, CPU): {total / len(pts) * 1e3:.2f} ms "
          f"({len(pts) / total:.0f}/s)")
    for k, v in spent.items():
        print(f"  {k:40s} {v / len(pts) * 1e3:6.3f} ms  {100 * v / total:5.1f} %")
    print(f"  {'the rest (sweep code, row assembly)':40s} {(total - sum(spent.values())) / len(pts) * 1e3:6.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=None, help="random subset of the 120-point grid")
    ap.add_argument("--repeats", type=int, default=3, help="timed sweeps (median)")
    ap.add_argument("--large-repeats", type=int, default=1,
                    help="fresh-process runs of the 1080-point grid (0: skip it)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--stages", action="store_true", help="only the per-stage breakdown of both grids")
    args = ap.parse_args()
    if args.stages:
        stages(SWEEP)
        stages(LARGE)
        return
    default = os.environ.get("SIMHETE_LOOP", "auto")
    os.environ["SIMHETE_LOOP"] = "compiled"
    run_once(4)                              # warm imports and profile files
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(args.repeats):
        c0 = time.process_time()
        n, dt = run_once(args.points)
        cpu.append(n / (time.process_time() - c0))
        wall.append(n / dt)
    os.environ["SIMHETE_LOOP"] = default
    print(f"sweep: {n} configurations of LLaMA-2-13B (seq 4096, 3 iterations, ~{TASKS_PER_POINT} tasks each) "
          f"on 1 core, {args.repeats} repeats, medians")
    rate = statistics.median(cpu)
    print(f"  compiled loop  {rate:6.1f} configurations/s/core CPU ({statistics.median(wall):6.1f} wall)")
    print(f"target {TARGET:.0f}/s/core: {'met' if rate >= TARGET else f'{TARGET / rate:.1f}x short'} "
          f"(in a process that has imported simhete)")
    if args.large_repeats > 0:
        # simhete's bytecode cached as an install (or any earlier run) leaves it: where
        # PYTHONDONTWRITEBYTECODE is set (this VM sets it) every fresh process would otherwise compile
        # its ~50 modules from source (~0.1 s CPU)
        compileall.compile_dir(str(REPO / "simhete"), quiet=1)
        compileall.compile_file(str(REPO / "benchmarks" / "sweep_speed.py"), quiet=1)
        runs, cli = [], []
        with tempfile.TemporaryDirectory() as d:
            spec = Path(d) / "large.yaml"
            spec.write_text(json.dumps(LARGE))           # JSON is YAML
            for k in range(args.large_repeats):          # the sweep, and the same sweep as a user runs it
                # single-threaded OpenBLAS, as the simhete command sets it (simhete/cli.py)
                env = dict(os.environ, SIMHETE_LOOP="auto", OPENBLAS_NUM_THREADS="1")
                out = subprocess.run([sys.executable, "-c", LARGE_RUN.format(bench=str(REPO / "benchmarks"))],
                                     env=env, check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([sys.executable, "-m", "simhete.cli", "sweep", str(spec), "--out",
                                str(Path(d) / f"cli{k}.sqlite"), "--quiet"], check=True, capture_output=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cli.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        n = runs[0]["n"]
        whole = statistics.median(r["n"] / r["process_cpu"] for r in runs)
        sweep_only = statistics.median(r["n"] / r["sweep_cpu"] for r in runs)
        wall = statistics.median(r["n"] / r["sweep_wall"] for r in runs)
        print(f"\nsweep: {n} configurations (grid LARGE: micro-batch x seq x checkpointing x delayed update x "
              f"bucket), one fresh process, compiled loop, {len(runs)} run(s), medians:")
        print(f"  {whole:6.1f} configurations/s/core: the process's whole CPU time "
              f"({statistics.median(r['process_cpu'] for r in runs):.2f} s: interpreter, imports, the sweep)")
        print(f"  {sweep_only:6.1f} configurations/s/core: the sweep alone (CPU; {wall:.1f}/s wall)")
        print(f"  {n / statistics.median(cli):6.1f} configurations/s/core: `simhete sweep` on this grid, the whole "
              f"command ({statistics.median(cli):.2f} s CPU: start-up, the sweep and its store, the report "
              f"and the Pareto PNG, whose matplotlib is ~1 s of it)")
        print(f"target {TARGET:.0f}/s/core: {'met' if whole >= TARGET else f'{TARGET / whole:.1f}x short'}")
    if args.no_profile:
        return
    import cProfile           # here, not at the top: the fresh 1 080-point processes import this module
    import pstats

    os.environ["SIMHETE_LOOP"] = "compiled"          # profile what a sweep runs
    pr = cProfile.Profile()
    pr.enable()
    n, dt = run_once(args.points)
    pr.disable()
    st = pstats.Stats(pr)
    total = sum(v[3] for k, v in st.stats.items() if k[2] == "run" and k[0].endswith("runner.py"))
    print(f"\nwhere the time goes (cProfile, cumulative per stage, % of the sweep's {total:.2f} s under the profiler):")
    for label, file_end, func in STAGES:
        cum = sum(v[3] for k, v in st.stats.items() if k[2] == func and k[0].endswith(file_end or ".py")
                  and ("policy" in k[0] if func == "build" else True))
        print(f"  {label:56s} {cum:7.3f} s  {100 * cum / total:5.1f} %")
    print("\ntop functions by own time:")
    st.sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
