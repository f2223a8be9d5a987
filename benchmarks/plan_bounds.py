"""Wall time and peak memory of ``simhete plan`` (or ``compare``) on every shipped model and hardware pair.

Issue 15's bound: every ``plan`` on a shipped model/hardware pair, and ``gpt-like-h1024-l4`` on
``h200-sxm`` at seq 1024, answers in under 10 s and under 1 GB. Issue 16's targets: ``plan``
within 2 s and ``compare`` within 3 s on every pair; the summary counts the pairs over each.
``--command compare`` runs ``simhete compare --json`` instead, on a scenario made for the pair
(the model, the profile with that many GPUs, the sequence length, micro-batch 1, bf16 or on a
GPU without it fp16 as plan does, 3 iterations; every applicable policy and each one's largest
model, as a user's ``compare`` does).
Pairs:

- every model preset (``simhete.workload`` families) on every shipped hardware profile
  (``hwprofiles/*.yaml``) with one GPU, at ``--seq`` (default 2048: within every preset's learned
  positions). ``cpu-local`` is included: plan answers on it as on any profile (it is this
  machine's CPU acting as the device; its verdicts are mostly "does not fit");
- AutoHete's testbed, ``a100-40gb-pcie-epyc7713``, also with all four GPUs (every model);
- each shipped scenario's own model, hardware, GPU count and sequence length (preset models);
- ``gpt-like-h1024-l4`` on ``h200-sxm`` at seq 1024 (so small that the largest-model search
  runs to the model-size limit).

Each pair is one ``simhete plan --json`` process: wall time (``time.monotonic`` around it), CPU
time and peak resident set size of that process (``os.wait4``'s rusage, imports included), exit
code, and what plan said it did not search. The full grid is about 400 plans (~30 min on one
core), so the default, ``--subset sample``, is a deterministic sample of 94 that still holds every
model, every profile, every testbed pair and every scenario pair; ``--subset full`` runs them all;
``--only REGEX`` filters pairs by ``model hardware gpus seq``. Extra arguments after ``--`` go to
plan (e.g. ``-- --budget 30``).

    python benchmarks/plan_bounds.py [--subset sample|full|testbed] [--only RE] [--workers N]
                                     [--json-out F] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = "a100-40gb-pcie-epyc7713"       # AutoHete's (arXiv 2503.01890): 4x A100 40GB PCIe
LIMIT_S, LIMIT_MB = 10.0, 1000.0          # issue 15: under 10 s and under 1 GB
TARGET_S = {"plan": 2.0, "compare": 3.0}  # issue 16: plan within 2 s, compare within 3 s


def _library(root: Path) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(root))
    from simhete.hw import list_profiles
    from simhete.workload import family_models, list_families

    return [m.name for f in list_families() for m in family_models(f)], list(list_profiles())


def scenario_pairs(root: Path) -> set[tuple[str, str, int, int]]:
    import yaml

    out = set()
    for f in sorted((root / "scenarios").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        m, hw = d.get("model"), d.get("hardware")
        if not isinstance(m, str) or not isinstance(hw, dict):
            continue                              # plan takes presets (or a config.json)
        out.add((m, hw["profile"], int(hw.get("gpus", 1) or 1), int(d["train"]["seq_len"])))
    return out


def pairs(subset: str, seq: int, root: Path) -> list[tuple[str, str, int, int]]:
    models, profiles = _library(root)
    testbed = {(m, TESTBED, g, seq) for m in models for g in (1, 4)}
    extra = {("gpt-like-h1024-l4", "h200-sxm", 1, 1024)}
    if subset == "testbed":
        return sorted(testbed | extra)
    out = testbed | extra | scenario_pairs(root)
    if subset == "full":
        out |= {(m, h, 1, seq) for m in models for h in profiles}
    else:
        # deterministic cover: model i on profiles i and i + len/2 (mod the profile count), and
        # every profile at least once with the model of its index
        n, k = len(models), len(profiles)
        for i in range(max(n, k)):
            m = models[i % n]
            out |= {(m, profiles[i % k], 1, seq), (m, profiles[(i + k // 2) % k], 1, seq)}
    return sorted(out)


def _dtype(root: Path, hw: str) -> str:
    """bf16, or fp16 on a GPU without bf16 (V100, T4), as plan asks there (the profile as the
    measured checkout loads it: ``_library`` put that checkout first on the path)."""
    from simhete.hw import load_profile

    return "bf16" if "bf16" in load_profile(hw).gpu.peak_tflops.available() else "fp16"


def measure(pair: tuple[str, str, int, int], root: Path, timeout: float, extra: list[str],
            command: str = "plan") -> dict:
    model, hw, gpus, seq = pair
    main = [sys.executable, "-c", "import sys; from simhete.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe, \
            tempfile.NamedTemporaryFile("w", suffix=".yaml") as sc:
        if command == "plan":
            cmd = [*main, "plan", "--model", model, "--hardware", hw, "--gpus", str(gpus), "--seq", str(seq),
                   "--json", *extra]
        else:
            sc.write(json.dumps({"name": f"{model} on {hw} x{gpus}", "model": model,
                                 "hardware": {"profile": hw, "gpus": gpus}, "iterations": 3,
                                 "train": {"micro_batch": 1, "seq_len": seq, "dtype": _dtype(root, hw)}}))
            sc.flush()
            cmd = [*main, "compare", sc.name, "--json", *extra]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=root)   # python -c puts the cwd first on sys.path
        # the child is reaped here, by wait4, for its own rusage (CPU of every thread, peak RSS);
        # the timer kills by pid, which stays the child's until that wait4 reaps it
        timer = threading.Timer(timeout, os.kill, (p.pid, signal.SIGKILL))
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        timer.cancel()
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    res = {"model": model, "hardware": hw, "gpus": gpus, "seq": seq, "wall_s": wall, "rc": rc,
           "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,     # Linux: kilobytes
           "not_searched": None, "time_limited": [],
           "error": err.strip().splitlines()[-1] if rc and err.strip() else ""}
    if rc == 0 and command == "plan":
        try:
            got = json.loads(out)
            res["not_searched"] = got["largest_model"]["not_searched"]
            res["time_limited"] = got.get("time_limited", [])
        except (ValueError, KeyError):
            pass
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", choices=("full", "sample", "testbed"), default="sample",
                    help="full: every preset on every profile (about 400 plans, ~30 min on one core); sample "
                    "(default): every model, every profile, every testbed pair (94 plans); testbed: its pairs")
    ap.add_argument("--only", metavar="RE", help="only pairs whose 'model hardware gpus seq' matches")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=1, help="plans run at once (default 1: timings "
                    "are of a process with a core to itself only if the machine has one free)")
    ap.add_argument("--timeout", type=float, default=600.0, help="kill a plan after this many seconds")
    ap.add_argument("--root", type=Path, default=ROOT, help="simhete checkout to measure (default: this one)")
    ap.add_argument("--json-out", type=Path, help="also write every row as JSON")
    ap.add_argument("--command", choices=("plan", "compare"), default="plan",
                    help="what to run per pair (compare: on a scenario made for the pair)")
    ap.add_argument("plan_args", nargs="*", help="extra arguments for the command (after --)")
    a = ap.parse_args()
    root = a.root.resolve()
    todo = pairs(a.subset, a.seq, root)
    if a.only:
        todo = [p for p in todo if re.search(a.only, " ".join(map(str, p)))]
    what = a.command + ("s" if a.command == "plan" else " runs")
    print(f"{len(todo)} {what}, {a.workers} at a time, simhete at {root}", flush=True)
    print(f"{'model':22} {'hardware':26} {'gpus':>4} {'seq':>5} {'wall s':>7} {'CPU s':>6} {'RSS MB':>7} rc  "
          "cut by a time limit / not searched", flush=True)
    rows = []

    def one(p: tuple[str, str, int, int]) -> dict:
        r = measure(p, root, a.timeout, a.plan_args, a.command)
        flag = " <-" if r["wall_s"] > LIMIT_S or (r["rss_mb"] or 0) > LIMIT_MB else ""
        ns = "; ".join(r["time_limited"]) or r["not_searched"] or r["error"]
        print(f"{r['model']:22} {r['hardware']:26} {r['gpus']:4d} {r['seq']:5d} {r['wall_s']:7.2f} "
              f"{r['cpu_s']:6.2f} {r['rss_mb']:7.0f} {r['rc']:2d}  {ns[:70] if ns else ''}{flag}", flush=True)
        return r

    t0 = time.monotonic()
    with ThreadPoolExecutor(max(1, a.workers)) as ex:
        rows = list(ex.map(one, todo))
    if a.json_out:
        a.json_out.write_text(json.dumps(rows, indent=1))
    wt = max(rows, key=lambda r: r["wall_s"])
    wc = max(rows, key=lambda r: r["cpu_s"])
    wm = max(rows, key=lambda r: r["rss_mb"])
    print(f"\n{len(rows)} {what} in {time.monotonic() - t0:.0f} s")
    print(f"max wall: {wt['wall_s']:.2f} s ({wt['model']} on {wt['hardware']} x{wt['gpus']})")
    print(f"max CPU:  {wc['cpu_s']:.2f} s ({wc['model']} on {wc['hardware']} x{wc['gpus']})")
    print(f"max RSS:  {wm['rss_mb']:.0f} MB ({wm['model']} on {wm['hardware']} x{wm['gpus']})")
    print(f"over {LIMIT_S:g} s wall: {sum(r['wall_s'] > LIMIT_S for r in rows)}; over {LIMIT_S:g} s CPU: "
          f"{sum(r['cpu_s'] > LIMIT_S for r in rows)}; over {LIMIT_MB:g} MB: "
          f"{sum(r['rss_mb'] > LIMIT_MB for r in rows)}; exit code not 0: {sum(r['rc'] != 0 for r in rows)}")
    target = TARGET_S[a.command]
    walls = sorted(r["wall_s"] for r in rows)
    print(f"median wall {walls[len(walls) // 2]:.2f} s; issue 16's target, {a.command} within {target:g} s: "
          f"{sum(w > target for w in walls)} of {len(rows)} over (wall), "
          f"{sum(r['cpu_s'] > target for r in rows)} over (CPU)")
    if a.command == "plan":
        print(f"answers cut short by a wall-time limit (plan's time_limited): "
              f"{sum(bool(r['time_limited']) for r in rows)}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores "
          "(wall time counts waiting for a CPU on a loaded machine; CPU time counts every thread)")


if __name__ == "__main__":
    main()
