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


def _imports_of(path) -> set[str]:
    """Every module a file names in an import, lazy ones inside functions included."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _names(imports: set[str], package: str) -> set[str]:
    return {n for n in imports if n == package or n.startswith(package + ".")}


def test_hardware_profiles_know_nothing_of_pricing_and_pricing_nothing_of_fitting():
    """hw.profile (schema, loader, derived tables) < hw.cost (pricing) < hw.fit (refit, which
    prices held-out points): never the other way."""
    from pathlib import Path

    import simhete.hw
    hw = Path(simhete.hw.__file__).parent
    for path in (hw / "profile").glob("*.py"):
        imports = _imports_of(path)
        assert not _names(imports, "simhete.hw.cost") | _names(imports, "simhete.hw.fit"), path.name
    for path in (hw / "cost").glob("*.py"):
        assert not _names(_imports_of(path), "simhete.hw.fit"), path.name


def test_nothing_below_the_search_layer_imports_it():
    """simhete.search (plans, sweeps, policy comparison, DeepSpeed import) varies scenarios and runs
    them through simhete.sim; the layers it builds on never import it."""
    from pathlib import Path

    import simhete
    root = Path(simhete.__file__).parent
    for pkg in ("policy", "schedule", "engine", "hw", "workload", "report"):
        for path in (root / pkg).rglob("*.py"):
            assert not _names(_imports_of(path), "simhete.search"), f"{pkg}/{path.name}"
    for name in ("sim.py", "scenario.py", "opkinds.py", "config.py"):
        assert not _names(_imports_of(root / name), "simhete.search"), name
