"""Validation error: predicted vs measured steady-state iteration time on the local device.

The CI loop of docs/validation.md: calibrate this machine (``simhete calibrate --quick``, unless
``--profile`` names an existing profile), then for every validation scenario
(scenarios/small-*_cpu_*.yaml) simulate its scaled schedule with that profile, replay the same
schedule with torch and compare. Prints per scenario the predicted and measured iteration time,
the signed error, loss parity and the per-category errors, then the median absolute error.
Target: median |error| <= 10%. The load average is printed before and after: other processes on
the machine slow the measurement, not the prediction.

    .venv/bin/python benchmarks/validation_error.py [--profile P.yaml] [--iterations N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from simhete.cli import main as cli
from simhete.commands.validate import validate_scenario
from simhete.hw.profile import load_profile
from simhete.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="profile of this machine (default: calibrate --quick now)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None)
    ap.add_argument("--json", metavar="OUT", help="also write the per-scenario figures as JSON")
    ap.add_argument("scenarios", nargs="*", help="default: scenarios/small-*_cpu_*.yaml")
    args = ap.parse_args()
    paths = [Path(p) for p in args.scenarios] or sorted((ROOT / "scenarios").glob("small-*_cpu_*.yaml"))
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} logical cores)")
    with tempfile.TemporaryDirectory() as tmp:
        prof_path = args.profile
        if prof_path is None:
            prof_path = str(Path(tmp) / "cpu.yaml")
            if cli(["calibrate", "--quick", "--device", args.device or "cpu", "--out", prof_path]) != 0:
                return 2
        profile = load_profile(prof_path)
        rows = []
        print(f"\n{'scenario':<34} {'predicted':>11} {'measured':>11} {'error':>8}  parity  per category")
        for p in paths:
            v = validate_scenario(load_scenario(p), profile, iterations=args.iterations, device=args.device)
            c = v.comparison
            cats = " ".join(f"{k}:{(e.error or 0) * 100:+.0f}%" for k, e in c.categories.items())
            print(f"{p.stem:<34} {c.iteration.predicted * 1e3:>9.2f}ms {c.iteration.measured * 1e3:>9.2f}ms "
                  f"{c.iteration.error * 100:>+7.1f}%  {'ok' if v.parity else 'FAIL':<6}  {cats}")
            rows.append({"scenario": p.stem, **c.to_dict(), "loss_parity": v.parity})
    errs = [abs(r["iteration_s"]["error"]) for r in rows]
    med = statistics.median(errs)
    print(f"\nmedian |error| of the steady-state iteration time: {med * 100:.1f}% "
          f"(target <= {TARGET * 100:.0f}%: {'met' if med <= TARGET else 'NOT met'})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_abs_error": med, "profile": profile.name,
                                               "scenarios": rows}, indent=2) + "\n")
    return 0 if all(r["loss_parity"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
