"""Sweep throughput of every policy, side by side, on one 13B grid.

The grid: LLaMA-2-13B on one H200 (``h200-sxm``), 144 points = micro-batch {1, 2, 3, 4, 6, 8} ×
sequence {1024, 2048, 4096} × checkpointing {none, full} × gradient accumulation {1, 2, 4, 8},
3 iterations per point. Each policy sweeps the same grid through the real sweep path (point
resolution and hashing, policy build, schedule check, cost model, fast engine, summary, SQLite
store) in this one process, caches forgotten before each sweep (as a new sweep process starts),
and the policies take turns round by round (interleaved), so every policy sees the same machine
load. Figure: configurations per CPU second (``time.process_time``), the median of the rounds;
wall time alongside.

Targets (issue 16): gpu-only, zero-offload, zero-infinity, stronghold and chunked >= 500
configurations/s/core, autohete >= 200 (zero-2, added since, is held to 500 too).

With ``--breakdown`` each policy's CPU is also split into what building its structures took (the
first point of each structure key: ``policy.build``, timed around the call) and everything else
(binding sizes, pricing, the engine, the summary, the store), with the number of structures built:
the rate the policy would reach if a build cost nothing is the second figure's, so a policy whose
grid has many structures is bounded by its builds however fast the per-point path is.

    .venv/bin/python benchmarks/sweep_policies.py [--rounds R] [--points N] [--policies a,b,...] [--breakdown]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from sweep_speed import fresh_caches  # noqa: E402  (the same cache reset as the ZeRO-Offload benchmark)

from simhete.search.backends import LocalBackend  # noqa: E402
from simhete.search.runner import Runner  # noqa: E402
from simhete.search.space import sweep_from_dict  # noqa: E402
from simhete.search.store import ResultStore  # noqa: E402

POLICIES = ("gpu-only", "zero-2", "zero-offload", "zero-infinity", "stronghold", "chunked", "autohete")
TARGETS = {p: (200.0 if p == "autohete" else 500.0) for p in POLICIES}
AXES = {
    "train.micro_batch": [1, 2, 3, 4, 6, 8],
    "train.seq_len": [1024, 2048, 4096],
    "knobs.checkpointing": ["none", "full"],
    "train.grad_accum": [1, 2, 4, 8],
}


def base_scenario(policy: str) -> dict:
    return {"name": f"LLaMA-2-13B on one H200, {policy}", "model": "llama2-13b",
            "hardware": {"profile": "h200-sxm", "gpus": 1},          # the profile is an 8-GPU HGX board
            "train": {"micro_batch": 1, "seq_len": 4096, "dtype": "bf16"}, "iterations": 3,
            "policy": policy}


class BuildClock:
    """CPU seconds and count of structure builds (``keyed_schedule``'s ``build`` callable, the
    first point of each key) while installed; the wrapper is the benchmark's, not simhete's."""

    def __init__(self) -> None:
        self.cpu, self.builds, self._saved = 0.0, 0, []

    def __enter__(self) -> "BuildClock":
        from simhete.policy import autohete, structures
        original = structures.keyed_schedule

        def timed(policy, ctx, key, build, meta=None):
            def clocked():
                c0 = time.process_time()
                try:
                    return build()
                finally:
                    self.cpu += time.process_time() - c0
                    self.builds += 1
            return original(policy, ctx, key, clocked, meta)

        for mod in (structures, autohete):
            self._saved.append((mod, mod.keyed_schedule))
            mod.keyed_schedule = timed
        return self

    def __exit__(self, *exc) -> None:
        for mod, f in self._saved:
            mod.keyed_schedule = f


def run_once(base: Path, n_points: int | None) -> tuple[int, float, float]:
    """One sweep of the grid from ``base``: (points, CPU seconds, wall seconds)."""
    fresh_caches()
    data = {"name": "policy sweep-speed benchmark", "base": str(base), "axes": AXES}
    if n_points is not None:
        data["strategy"] = {"name": "random", "samples": n_points, "seed": 0}
    sweep = sweep_from_dict(data, str(base.with_suffix(".sweep.yaml")))
    with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "bench.sqlite") as st:
        c0, w0 = time.process_time(), time.perf_counter()
        out = Runner(sweep, st, LocalBackend(1)).run()
        return len(out.rows), time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--points", type=int, default=None, help="random subset of the 144-point grid")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset")
    ap.add_argument("--breakdown", action="store_true",
                    help="also split each policy's CPU into structure builds and the rest")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    cpu: dict[str, list[float]] = {p: [] for p in policies}
    wall: dict[str, list[float]] = {p: [] for p in policies}
    n_of: dict[str, int] = {}
    split: dict[str, list[tuple[int, float, float]]] = {p: [] for p in policies}
    with tempfile.TemporaryDirectory() as d:
        bases = {}
        for p in policies:
            bases[p] = Path(d) / f"{p}.yaml"
            bases[p].write_text(yaml.safe_dump(base_scenario(p)))
            run_once(bases[p], 2)                      # warm imports and profile files
        for _ in range(args.rounds):
            for p in policies:
                with BuildClock() as clock:
                    n, c, w = run_once(bases[p], args.points)
                n_of[p] = n
                cpu[p].append(n / c)
                wall[p].append(n / w)
                split[p].append((clock.builds, clock.cpu, c - clock.cpu))
    print(f"sweep of LLaMA-2-13B on one H200: {max(n_of.values())} points per policy (micro-batch x sequence x "
          f"checkpointing x grad accumulation, 3 iterations), 1 core, {args.rounds} interleaved rounds, medians")
    print(f"  {'policy':14s} {'configs/s/core (CPU)':>21s} {'(wall)':>8s} {'target':>7s}  verdict")
    for p in policies:
        rate = statistics.median(cpu[p])
        t = TARGETS.get(p, 500.0)
        verdict = "met" if rate >= t else f"{t / rate:.1f}x short"
        print(f"  {p:14s} {rate:21.1f} {statistics.median(wall[p]):8.1f} {t:7.0f}  {verdict}")
    if args.breakdown:
        print(f"\n  {'policy':14s} {'structures':>10s} {'ms/build':>9s} {'builds':>7s} {'ms/point, rest':>15s}"
              f" {'configs/s/core if builds were free':>35s}")
        for p in policies:
            builds = statistics.median(x[0] for x in split[p])
            per_build = statistics.median(x[1] / x[0] for x in split[p] if x[0]) if builds else 0.0
            share = statistics.median(x[1] / (x[1] + x[2]) for x in split[p])
            rest = statistics.median(x[2] for x in split[p])
            print(f"  {p:14s} {builds:10.0f} {1e3 * per_build:9.1f} {100 * share:6.0f}% {1e3 * rest / n_of[p]:15.2f}"
                  f" {n_of[p] / rest:35.0f}")


if __name__ == "__main__":
    main()
