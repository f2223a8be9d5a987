"""Wall time and peak memory of ``simhete plan``: each (model, hardware, seq) pair of a shipped
scenario, and ``gpt-like-h1024-l4`` on ``h200-sxm`` at seq 1024 (a model so small that the
largest-model search runs to the model-size limit). Target: every pair under 10 s and 1 GB.

Each pair runs as its own process under ``/usr/bin/time -v``: wall time, CPU time (user + system;
what the wall time is on an idle machine, as plan is single-threaded) and the peak resident set
size of the whole process, imports included. ``--all`` runs every preset on every shipped GPU profile instead (slow:
about 200 pairs).

    PYTHONPATH=$PWD python benchmarks/plan_bound.py [--all]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pairs(all_pairs: bool) -> list[tuple[str, str, int]]:
    if all_pairs:
        from simhete.hw import list_profiles
        from simhete.workload import family_models, list_families

        models = [m.name for f in list_families() for m in family_models(f)]
        return [(m, h, 2048) for m in models for h in list_profiles() if h != "cpu-local"]
    out = {("gpt-like-h1024-l4", "h200-sxm", 1024)}
    for f in sorted((ROOT / "scenarios").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        m, hw = d["model"], d["hardware"]
        if not isinstance(m, str) or not isinstance(hw, dict) or hw.get("profile") == "cpu-local":
            continue          # plan takes presets; the CPU profile is for validation, not planning
        out.add((m, hw["profile"], int(d["train"]["seq_len"])))
    return sorted(out)


def measure(model: str, hw: str, seq: int) -> tuple[float, float, float, int]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "import sys; from simhete.cli import main; sys.exit(main())", "plan", "--model", model,
           "--hardware", hw, "--seq", str(seq), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", r.stderr))
    parts = [float(x) for x in wall.group(1).split(":")] if wall else [float("nan")]
    secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    return secs, cpu, int(rss.group(1)) / 2**20 if rss else float("nan"), r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every preset on every shipped GPU profile")
    a = ap.parse_args()
    worst_t = worst_m = 0.0
    print(f"{'model':24} {'hardware':24} {'seq':>5} {'wall s':>7} {'CPU s':>6} {'peak GB':>8} rc")
    worst_c = 0.0
    for m, h, seq in pairs(a.all):
        t, c, gb, rc = measure(m, h, seq)
        worst_t, worst_c, worst_m = max(worst_t, t), max(worst_c, c), max(worst_m, gb)
        print(f"{m:24} {h:24} {seq:5d} {t:7.2f} {c:6.2f} {gb:8.3f} {rc}", flush=True)
    print(f"worst: {worst_t:.2f} s wall, {worst_c:.2f} s CPU, {worst_m:.3f} GB (target < 10 s, < 1 GB; "
          f"wall time includes waiting for a CPU on a loaded machine)")


if __name__ == "__main__":
    main()
