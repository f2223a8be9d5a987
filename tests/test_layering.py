"""Dependencies point one way: the simulator never imports torch; replay never imports simpy; the
policy layer never reaches the engine, the pipeline or the search (policy → schedule; simhete.sim
wires policy → engine, simhete.search simulates a policy's candidates)."""

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


FORBIDDEN_IN_POLICIES = ("simhete.engine", "simhete.sim", "simhete.search")


def _imported_names(path, package: str) -> list[str]:
    """Every module name an import statement of the file at ``path`` (a module of ``package``)
    names, relative imports made absolute, lazy imports inside functions included."""
    import ast
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def test_policies_never_reach_the_engine():
    """A policy builds a schedule; it never runs one. Importing every policy loads no module of
    simhete.engine, simhete.sim or simhete.search, and no module under simhete/policy names one in
    an import (lazy ones inside functions included): a policy with several candidate schedules
    offers them (``Policy.candidates``) and simhete.search simulates them."""
    from pathlib import Path

    import simhete.policy
    loaded = subprocess.run([sys.executable, "-c", "import sys, simhete.policy.registry as r; r.load_shipped()\n"
                             "print(' '.join(sys.modules))"], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_POLICIES)] == []
    root = Path(simhete.policy.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 10                 # the policies themselves are read, not an empty glob
    for path in files:
        package = ".".join(("simhete", "policy") + path.relative_to(root).parent.parts)
        for name in _imported_names(path, package):
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_POLICIES), \
                f"{path.relative_to(root)} imports {name}"


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
    for name in ("scenario.py", "opkinds.py", "config.py"):
        assert not _names(_imports_of(root / name), "simhete.search"), name
    # one exception: simhete.sim picks among a policy's candidate schedules with
    # search/candidates.py, which sits below sim (engine and policy only, no other search module)
    from_sim = _names(_imports_of(root / "sim.py"), "simhete.search")
    assert {n for n in from_sim if not n.startswith("simhete.search.candidates")} == set()
    below = _imports_of(root / "search" / "candidates.py")
    assert not _names(below, "simhete.sim"), "search/candidates.py imports simhete.sim"
    assert {n for n in _names(below, "simhete.search") if not n.startswith("simhete.search.candidates")} == set()
