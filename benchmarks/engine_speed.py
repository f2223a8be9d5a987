"""Engine speed: the fast engine against the SimPy reference on a real 13B ZeRO-Offload schedule.

Builds the schedule of scenarios/llama2-13b_h100-pcie_zero-offload.yaml (3 iterations, 40 blocks)
through the normal pipeline (scenario -> policy -> schedule, cost model -> durations and
interference), checks that both engines give the identical timeline, then times them interleaved
(warm-up first, median of repeats) and prints tasks/s for each and the ratio. Target: >= 25x.

    .venv/bin/python benchmarks/engine_speed.py [scenario.yaml] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from simhete.engine import simulate_fast, simulate_simpy
from simhete.scenario import load_scenario
from simhete.sim import resolve

ROOT = Path(__file__).resolve().parents[1]
TARGET = 25.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios/llama2-13b_h100-pcie_zero-offload.yaml"))
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    ctx, policy = resolve(load_scenario(args.scenario))
    sched = policy.build(ctx)
    durs = ctx.cost.durations(sched)
    rules = tuple(ctx.cost.interference())
    n = len(sched.tasks)
    print(f"schedule: {Path(args.scenario).name}: {n} tasks on {len(sched.streams)} streams "
          f"{sched.streams}, interference rules {rules}")

    fast, ref = simulate_fast(sched, durs, rules), simulate_simpy(sched, durs, rules)   # warm-up
    same = (fast.records, fast.mem_events, fast.peak, fast.peak_by_class, fast.oom) == \
           (ref.records, ref.mem_events, ref.peak, ref.peak_by_class, ref.oom)
    print(f"identical timelines: {same}; makespan {fast.makespan:.6f} s, oom {fast.oom is not None}")

    # CPU time is the headline (the machine is shared; wall time includes time others ran),
    # wall time is shown alongside. Interleaved, so load drifts hit both engines alike.
    cpu: dict[str, list[float]] = {"simpy": [], "fast": []}
    wall: dict[str, list[float]] = {"simpy": [], "fast": []}
    for _ in range(args.repeats):
        for name, fn in (("simpy", simulate_simpy), ("fast", simulate_fast)):
            c0, w0 = time.process_time(), time.perf_counter()
            fn(sched, durs, rules)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    for k in ("simpy", "fast"):
        w = statistics.median(wall[k])
        print(f"{k:>6}: median CPU {med[k] * 1e3:8.3f} ms ({n / med[k]:9.0f} tasks/s); "
              f"median wall {w * 1e3:8.3f} ms ({n / w:9.0f} tasks/s); {args.repeats} repeats")
    ratio = med["simpy"] / med["fast"]
    print(f"ratio (CPU time): fast is {ratio:.1f}x the SimPy engine (target >= {TARGET:.0f}x)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
