"""Golden summaries: `simhete simulate --json` of every shipped scenario is pinned.

Regenerate after an intended change with ``SIMHETE_REGEN_GOLDEN=1 pytest tests/test_golden.py``
and review the diff: every changed figure must be explained in the commit message.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import GOLDEN, SCENARIOS
from simhete.scenario import load_scenario
from simhete.sim import run

SCENARIO_FILES = sorted(SCENARIOS.glob("*.yaml"))
REGEN = os.environ.get("SIMHETE_REGEN_GOLDEN") == "1"


def summary_json(path, engine="fast") -> str:
    return json.dumps(run(load_scenario(path), engine=engine).summary.to_dict(), indent=2) + "\n"


def test_scenarios_are_shipped():
    assert len(SCENARIO_FILES) >= 6


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_golden_summary(path):
    got = summary_json(path)
    golden = GOLDEN / f"{path.stem}.json"
    if REGEN:
        golden.write_text(got)
    assert golden.exists(), f"no golden for {path.name}; run with SIMHETE_REGEN_GOLDEN=1"
    assert got == golden.read_text()


HF = [p for p in SCENARIO_FILES if load_scenario(p).data.framework != "fused"]


@pytest.mark.parametrize("path", HF, ids=lambda p: p.stem)
def test_golden_summary_fused(path):
    """Each shipped scenario run with ``framework: fused`` (Megatron-style kernels), pinned apart,
    so the fused kernels' accounting is checked whatever framework a scenario names."""
    s = load_scenario(path).with_changes(framework="fused")
    got = json.dumps(run(s).summary.to_dict(), indent=2) + "\n"
    golden = GOLDEN / "fused" / f"{path.stem}.json"
    if REGEN:
        golden.write_text(got)
    assert golden.exists(), f"no fused golden for {path.name}; run with SIMHETE_REGEN_GOLDEN=1"
    assert got == golden.read_text()


@pytest.mark.parametrize("path", SCENARIO_FILES[:3], ids=lambda p: p.stem)
def test_deterministic_and_engines_agree(path):
    """Same inputs give byte-identical output, and the SimPy reference engine agrees exactly."""
    a = summary_json(path)
    assert a == summary_json(path)
    ref = json.loads(summary_json(path, engine="simpy"))
    fast = json.loads(a)
    ref["meta"].pop("engine"), fast["meta"].pop("engine")
    assert ref == fast


def test_byte_identical_across_processes_and_hash_seeds(tmp_path):
    """Same inputs, byte-identical summary, schedule and trace, whatever PYTHONHASHSEED a process has."""
    import os
    import subprocess
    import sys
    outs = []
    for seed in ("1", "2"):
        d = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-m", "simhete.cli", "simulate",
                            str(SCENARIOS / "gpt-like-13b_4xa100-40gb_autohete.yaml"), "--json",
                            "--schedule", str(d / "s.txt"), "--trace", str(d / "t.json")],
                           capture_output=True, env=env, check=True)
        outs.append((r.stdout, (d / "s.txt").read_bytes(), (d / "t.json").read_bytes()))
    assert outs[0] == outs[1]
