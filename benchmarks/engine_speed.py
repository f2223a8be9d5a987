"""Engine speed: the fast engine against the SimPy reference on a real 13B ZeRO-Offload schedule.

Builds the schedule of scenarios/llama2-13b_h100-pcie_zero-offload.yaml (3 iterations, 40 blocks)
through the normal pipeline (scenario -> policy -> schedule, cost model -> durations and
interference), checks that every engine variant gives the identical timeline, then times them
interleaved (warm-up first, median of repeats) and prints tasks/s for each and the ratio to SimPy.
Target: >= 25x.

- cold: a schedule just built by the policy (new objects, a new structure) that the engine has
  never seen: the whole indexing is included;
- cold, from Task objects: a new ``Schedule(tasks, ...)`` of the same Task objects, nothing cached
  (the column-wise table is first derived from the Task objects);
- warm: the same Schedule re-simulated with new durations, as a hardware sweep re-prices it;
- bound, structure indexed: the schedule as a sweep point of a known structure gets it — the
  policy's structure (simhete/schedule/structure.py) bound to the point's size table, a new
  Schedule object equal to the build whose table shares the structure's columns — with the
  engine's index of that structure kept on it: what such a point costs in the engine — the
  duration check, the byte-dependent arrays (allocation sizes, needs per pool, capacities; memory
  at t = 0 is the structure's), the loop and the Timeline. Not in it: the binding (policy side,
  printed apart like the build), the prices and the summary.

The engine line a sweep point gets is the bound one for every point of a structure seen before
and the cold one for the first point of each structure; points whose schedule is the very object
of an earlier point (aliasing knob values) make no engine call. The last line weighs the two by
how often ``benchmarks/sweep_speed.py``'s 120-point grid makes each kind of call (counted live,
by running that sweep once): the engine's cost per engine call of a real sweep.

What each line times is the engine call only (``simulate_fast``); building the schedule is the
policy's cost and is printed separately (``policy build``), as is the SimPy engine's.

The fast engine returns a Timeline whose Record objects are built on first read; the line
"+ records" also reads ``timeline.records`` (what a caller that walks every record pays).
``--start-up`` also measures what the compiled loop costs a fresh process: importing the engine
(with the extension) and its first call (the extension is built at install: nothing is compiled at
run time).

    .venv/bin/python benchmarks/engine_speed.py [scenario.yaml] [--repeats N] [--start-up]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from simhete.policy.sizes import size_table
from simhete.policy.structures import same_schedule
from simhete.engine import indexed, simulate_fast, simulate_simpy
from simhete.engine.fast import compiled_available
from simhete.scenario import load_scenario
from simhete.schedule import Schedule
from simhete.sim import resolve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "scenarios/llama2-13b_h100-pcie_zero-offload.yaml"
TARGET = 25.0

START_UP = """
import time
import numpy                                  # a dependency, loaded before the clock starts
c0, w0 = time.process_time(), time.perf_counter()
import simhete.engine                         # the engine's Python modules and the compiled extension
c1, w1 = time.process_time(), time.perf_counter()
from simhete.engine import simulate_fast
from simhete.schedule import Schedule, Task
from simhete.opkinds import TaskCat
c2, w2 = time.process_time(), time.perf_counter()
simulate_fast(Schedule((Task("a", "s", TaskCat.OTHER),), {}), [1.0])
c3, w3 = time.process_time(), time.perf_counter()
print(f"{c1 - c0:.6f} {w1 - w0:.6f} {c3 - c2:.6f} {w3 - w2:.6f}")
"""


def same(a, b) -> bool:
    return (a.records, a.mem_events, a.peak, a.peak_by_class, a.oom) == \
           (b.records, b.mem_events, b.peak, b.peak_by_class, b.oom)


def copy_of(s: Schedule) -> Schedule:
    """An equal Schedule the engine has not seen, made from Task objects (same Task objects, a new
    Schedule object whose column-wise table is derived from them)."""
    return Schedule(s.tasks, s.pools, s.initial, s.iterations, s.meta)


def start_up(runs: int = 5) -> None:
    """Import + first call of the compiled loop in fresh processes (medians of ``runs``)."""
    got = [list(map(float, subprocess.run([sys.executable, "-c", START_UP], check=True, capture_output=True,
                                          text=True).stdout.split())) for _ in range(runs)]
    ic, iw, fc, fw = (statistics.median(x) for x in zip(*got))
    print(f"compiled loop in a fresh process ({runs} runs, medians): import simhete.engine (with the "
          f"extension) {ic * 1e3:.1f} ms CPU ({iw * 1e3:.1f} ms wall), first call on a one-task Schedule "
          f"{fc * 1e3:.2f} ms CPU ({fw * 1e3:.2f} ms wall); nothing is compiled at run time")


def sweep_mix() -> tuple[int, int]:
    """(engine calls, of which on a structure never indexed) of one run of sweep_speed.py's
    120-point grid, counted by wrapping the engine's entry point and its structure indexing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep_speed
    from simhete import sim
    from simhete.engine import indexed as ix

    count = {"calls": 0, "new": 0}
    run, structure = sim.simulate, ix._index_structure

    def counted(fn, key):
        def wrapped(*a, **k):
            count[key] += 1
            return fn(*a, **k)
        return wrapped

    sim.simulate, ix._index_structure = counted(run, "calls"), counted(structure, "new")
    try:
        sweep_speed.run_once(None)
    finally:
        sim.simulate, ix._index_structure = run, structure
    return count["calls"], count["new"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--start-up", action="store_true", help="also time the compiled loop's start-up")
    args = ap.parse_args()

    ctx, policy = resolve(load_scenario(args.scenario))
    sched = policy.build(ctx)
    durs = ctx.cost.durations(sched)
    rules = tuple(ctx.cost.interference())
    n = len(sched.tasks)
    print(f"schedule: {Path(args.scenario).name}: {n} tasks on {len(sched.streams)} streams "
          f"{sched.streams}, interference rules {rules}")
    if not compiled_available():
        print("the compiled loop is not built (no C compiler at install?): the fast engine runs the SimPy "
              "reference there, so there is nothing to compare")
        return 1

    structure, sizes = policy.build(ctx).table.structure, size_table(ctx)

    def bound() -> Schedule:              # a new Schedule object of the kept structure
        return Schedule.from_table(structure.bind(sizes), sched.pools, sched.initial, sched.iterations, sched.meta)

    ref = simulate_simpy(sched, durs, rules)                       # also warms everything up
    ok = all(same(simulate_fast(x, durs, rules), ref)                # from Task objects, a build, a binding
             for x in (copy_of(sched), policy.build(ctx), bound()))
    ok = ok and same_schedule(bound(), sched)
    print(f"identical timelines (fast vs simpy): {ok}; "
          f"makespan {ref.makespan:.6f} s, oom {ref.oom is not None}")

    # Variants: name -> (prep(k), fn(k)) for repeat k; only fn is timed. Cold runs get a schedule
    # object per repeat (a new structure each); warm runs re-price the one indexed schedule with
    # durations scaled per repeat, put back on it before each run.
    r = args.repeats + 1
    scaled = [[d * (1.0 + 1e-3 * k) for d in durs] for k in range(r)]
    warm_ix = indexed.indexed(sched, rules)

    def nothing(k: int) -> None:
        pass

    def warm(k: int) -> None:             # ``sched`` itself is indexed
        sched.derived["engine.indexed"] = warm_ix

    variants = {"simpy": (nothing, lambda k: simulate_simpy(sched, durs, rules))}
    built = [policy.build(ctx) for _ in range(2 * r)]             # fresh policy builds
    tasks = [copy_of(sched) for _ in range(r)]
    variants["fast cold"] = (nothing, lambda k, f=built[:r]: simulate_fast(f[k], durs, rules))
    variants["fast cold, from Task objects"] = \
        (nothing, lambda k, f=tasks: simulate_fast(f[k], durs, rules))
    indexed.indexed(bound(), rules)                                 # the structure's index, kept on it
    sized = [bound() for _ in range(r)]
    variants["fast bound, structure indexed"] = \
        (nothing, lambda k, f=sized: simulate_fast(f[k], durs, rules))
    variants["fast warm"] = (warm, lambda k: simulate_fast(sched, scaled[k], rules))
    variants["fast cold + records"] = \
        (nothing, lambda k, f=built[r:]: simulate_fast(f[k], durs, rules).records)
    for prep, fn in variants.values():                               # warm-up (k = last)
        prep(args.repeats)
        fn(args.repeats)

    # CPU time is the headline (the machine is shared; wall time includes time others ran),
    # wall time is shown alongside. Interleaved, so load drifts hit every variant alike.
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    build_cpu, bind_cpu = [], []
    for k in range(args.repeats):
        c0 = time.process_time()
        policy.build(ctx)
        build_cpu.append(time.process_time() - c0)
        c0 = time.process_time()
        bound()
        bind_cpu.append(time.process_time() - c0)
        for name, (prep, fn) in variants.items():
            prep(k)
            c0, w0 = time.process_time(), time.perf_counter()
            fn(k)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    medw = {k: statistics.median(v) for k, v in wall.items()}
    print(f"medians of {args.repeats} interleaved repeats:")
    for k in variants:
        print(f"  {k:>36}: CPU {med[k] * 1e3:8.3f} ms ({n / med[k]:10.0f} tasks/s, "
              f"{med['simpy'] / med[k]:6.1f}x simpy); wall {medw[k] * 1e3:8.3f} ms "
              f"({n / medw[k]:10.0f} tasks/s, {medw['simpy'] / medw[k]:6.1f}x)")
    print(f"  (policy build of this schedule, not in any line above: CPU {statistics.median(build_cpu) * 1e3:.3f} ms;"
          f" its structure bound instead: CPU {statistics.median(bind_cpu) * 1e3:.3f} ms)")
    for mode in ("cold", "bound, structure indexed", "warm"):
        ratio = med["simpy"] / med[f"fast {mode}"]
        print(f"ratio {mode} (CPU time): {ratio:.1f}x the SimPy engine (target >= {TARGET:.0f}x)")
    calls, new = sweep_mix()
    mix = (new * med["fast cold"] + (calls - new) * med["fast bound, structure indexed"]) / calls
    print(f"ratio per engine call of the 120-point sweep ({calls} calls: {new} on a new structure, "
          f"{calls - new} bound; CPU time): {med['simpy'] / mix:.1f}x the SimPy engine")
    if args.start_up:
        start_up()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
