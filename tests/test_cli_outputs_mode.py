"""New output files get the user's umask (0644 under umask 022, not mkstemp's 0600), and the
install hints name a command that works from a checkout."""

from __future__ import annotations

import os
import re
import stat

import pytest
import yaml

from conftest import ROOT, SCENARIOS
from simhete.cli import main

SMALL = str(SCENARIOS / "small-gpt_cpu_gpu-only.yaml")


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_simulate_outputs_follow_the_umask(tmp_path, capsys, umask, mask, want):
    umask(mask)
    outs = {f: tmp_path / n for f, n in (("trace", "t.json"), ("plot", "p.png"), ("schedule", "s.txt"))}
    assert main(["simulate", SMALL, *[x for f, p in outs.items() for x in (f"--{f}", str(p))]]) == 0
    assert {f: mode(p) for f, p in outs.items()} == {f: want for f in outs}


def test_sweep_csv_store_and_pareto_png_get_0644(tmp_path, capsys, umask):
    base = {"name": "tiny", "model": "gpt-like-h256-l4-a4", "hardware": "h100-pcie",
            "train": {"micro_batch": 1, "seq_len": 256, "dtype": "bf16"}, "iterations": 2,
            "policy": "zero-offload"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "axes": {"train.micro_batch": [1, 2]}}))
    db, csv, png = tmp_path / "r.sqlite", tmp_path / "r.csv", tmp_path / "r.png"
    assert main(["sweep", str(tmp_path / "s.yaml"), "--out", str(db), "--csv", str(csv), "--plot", str(png),
                 "--workers", "1", "--quiet"]) == 0
    assert (mode(db), mode(csv), mode(png)) == (0o644, 0o644, 0o644)


def test_calibrate_refit_outputs_get_0644(tmp_path, capsys, umask):
    out = tmp_path / "x.yaml"
    assert main(["calibrate", "--refit", str(ROOT / "hwprofiles/measured/cpu-local.raw"), "--out", str(out)]) == 0
    assert (mode(out), mode(out.with_suffix(".fit.md"))) == (0o644, 0o644)


def test_no_install_hint_names_a_package_index_simhete_is_not_on():
    bad = []
    for path in [*ROOT.glob("simhete/**/*.py"), *ROOT.glob("calibrate/**/*.py"), *ROOT.glob("docs/*.md"),
                 ROOT / "README.md"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install [\"']?simhete", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == []


def hide_torch(monkeypatch) -> None:
    """Make ``import torch`` fail as on a machine without it, for this test only."""
    import builtins
    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torch)


def test_calibrate_without_torch_hints_at_the_checkout_install(capsys, monkeypatch, tmp_path):
    for m in [m for m in list(__import__("sys").modules) if m.startswith("calibrate")]:
        monkeypatch.delitem(__import__("sys").modules, m)
    hide_torch(monkeypatch)
    assert main(["calibrate", "--quick", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == ("simhete: error: calibrate needs torch (torch not installed): from the simhete checkout, "
                   "pip install -e '.[torch]'\n")


def test_validate_without_torch_hints_at_the_checkout_install(capsys, monkeypatch, tmp_path):
    hide_torch(monkeypatch)
    assert main(["validate", SMALL, "--profile", "cpu-local"]) == 2
    assert capsys.readouterr().err == (
        "simhete: error: validate needs torch to replay (torch not installed): from the simhete checkout, "
        "pip install -e '.[torch]'; --published needs no torch\n")
