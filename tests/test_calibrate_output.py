"""What `simhete calibrate` shows a person: a progress bar per suite, then the fit's held-out
errors on the console (not only in the side file)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import ROOT
from simhete.cli import main
from simhete.hw.fit import fit

RAW = ROOT / "hwprofiles" / "measured" / "cpu-local.raw"


def cells(out: str, first: str) -> list[str]:
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        c = [x.strip() for x in line[1:-1].split("│")]
        if c[0] == first:
            return c
    raise AssertionError(f"no row {first!r} in\n{out}")


def test_refit_prints_the_held_out_errors_per_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "x.yaml"
    assert main(["calibrate", "--refit", str(RAW), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines() if not line.startswith("wrote")) <= 80
    result = fit(RAW, "x", tmp_path)
    suites = [(s, e) for s, op, e in result.errors if not op]
    assert [s for s, _ in suites] == ["gemm", "attention", "membw", "copy", "adam"]
    for suite, errs in suites:
        row = cells(text, suite)
        assert row[1:4] == [f"{100 * float(np.median(errs)):.1f} %", f"{100 * max(errs):.1f} %", str(len(errs))]
        # the same figures as the report's table
        assert re.search(rf"\| {suite} \| median {100 * float(np.median(errs)):.1f}%, max "
                         rf"{100 * max(errs):.1f}% over {len(errs)} held-out points \|",
                         out.with_suffix(".fit.md").read_text())
    gemm_ops = [(op, e) for s, op, e in result.errors if s == "gemm" and op]
    worst, e = max(gemm_ops, key=lambda x: float(np.median(x[1])))
    assert cells(text, "gemm")[4] == f"{worst} ({100 * float(np.median(e)):.1f} %)"
    assert cells(text, "copy")[4] == ""                       # one op: no "worst"
    assert "every op:" in text and str(out.with_suffix(".fit.md")) in re.sub(r"\s+", "", text)


@pytest.mark.torch
def test_measuring_shows_a_bar_per_suite_and_the_summary(tmp_path, capfd, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("SIMHETE_CALIBRATE_GRID", "tiny")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["calibrate", "--quick", "--device", "cpu", "--suites", "gemm,membw,copy",
                 "--out", str(tmp_path / "t.yaml")]) == 0
    got = capfd.readouterr()
    bars = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^(\w+)\s+━+\s+(\d+)/(\d+)", got.err, re.M)}
    assert list(bars) == ["gemm", "membw", "copy"] and all(a == b > 0 for a, b in bars.values())
    assert "fitting" in got.err
    assert [cells(got.out, s)[0] for s in ("gemm", "membw", "copy")] == ["gemm", "membw", "copy"]
