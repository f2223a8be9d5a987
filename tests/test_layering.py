"""Dependencies point one way: the simulator never imports torch; replay never imports simpy; the
policy layer never imports the engine (policy → schedule; simhete.sim wires policy → engine)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


@pytest.mark.parametrize("module", ["simhete.sim", "simhete.engine", "simhete.cli", "simhete.search.plan",
                                    "simhete.policy.autohete", "simhete.report.plot"])
def test_simulator_runs_without_torch(module):
    assert "torch" not in imported_after(f"import {module}")


def test_a_whole_simulation_imports_no_torch():
    code = ("from simhete.scenario import load_scenario; from simhete.sim import run\n"
            "run(load_scenario('scenarios/llama2-13b_h100-pcie_zero-offload.yaml'))")
    assert "torch" not in imported_after(code)


def test_policies_never_import_the_engine():
    """Importing the policies loads no module of simhete.engine, and no policy module names it in
    an import, lazy ones inside functions included (autohete's ``verify`` simulates its candidates
    through ``Context.simulate``, which simhete.sim fills in)."""
    import ast
    from pathlib import Path

    import simhete.policy
    loaded = subprocess.run([sys.executable, "-c", "import sys, simhete.policy, simhete.policy.autohete\n"
                             "print(' '.join(m for m in sys.modules if m.startswith('simhete.engine')))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
    for path in Path(simhete.policy.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "simhete.engine" or n.startswith("simhete.engine.") for n in names), path.name


@pytest.mark.torch
def test_replay_never_imports_simpy():
    mods = imported_after("import simhete.replay.executor, simhete.replay.compare, simhete.commands.validate")
    assert "torch" in mods and "simpy" not in mods


def test_ops_hash_consistently_after_crossing_a_process():
    """Ops cache their hash; a pickled op must re-hash in the receiving process (string hashes are
    randomised per process), or cost-model caches there would miss equal ops."""
    code = ("import pickle, sys; from simhete.schedule import Op; from simhete.opkinds import OpKind\n"
            "op = pickle.loads(sys.stdin.buffer.read())\n"
            "fresh = Op(OpKind.GEMM, (4, 5, 6), dtype='fp16')\n"
            "assert op == fresh and hash(op) == hash(fresh) and {fresh: 1}[op] == 1")
    import pickle

    from simhete.opkinds import OpKind
    from simhete.schedule import Op
    blob = pickle.dumps(Op(OpKind.GEMM, (4, 5, 6), dtype="fp16"))
    subprocess.run([sys.executable, "-c", code], input=blob, check=True, env={"PYTHONHASHSEED": "123"})
