"""Fitting raw calibration CSV into a profile: no torch, no device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from simhete.cli import main
from simhete.errors import ConfigError
from simhete.hw.cost import CostModel
from simhete.hw.fit import alpha_beta, fit, read_raw, refit, write_raw
from simhete.hw.profile import load_profile
from simhete.opkinds import OpKind
from simhete.schedule.model import Op

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "hwprofiles" / "cpu-local.yaml"
SHIPPED_RAW = ROOT / "hwprofiles" / "measured" / "cpu-local.raw"


def test_alpha_beta_recovers_a_known_line():
    sizes = [1e3, 1e4, 1e5, 1e6]
    alpha, beta = alpha_beta(sizes, [2e-6 + n / 5e9 for n in sizes])
    assert alpha == pytest.approx(2e-6, rel=1e-9)
    assert beta == pytest.approx(5e9, rel=1e-9)


def test_alpha_beta_keeps_alpha_below_the_fastest_call():
    # Noise made the big size as fast as the small one: no per-byte cost is left, so β comes
    # from the largest size through the origin instead of running off to infinity.
    alpha, beta = alpha_beta([1e3, 1e6], [1e-3, 1e-3])
    assert (alpha, beta) == (0.0, 1e9)


def test_raw_csv_round_trips_floats_exactly(tmp_path):
    rows = [{"op": "add", "bytes": 12, "median_s": 0.1 + 0.2, "status": "ok"},
            {"op": "mul", "bytes": 24, "median_s": 1 / 3, "status": "missing: needs 2 GPUs"}]
    write_raw(tmp_path / "x.csv", {"suite": "membw", "device": "dev, with comma"},
              ("op", "bytes", "median_s", "status"), rows)
    t = read_raw(tmp_path / "x.csv")
    assert t.meta == {"suite": "membw", "device": "dev, with comma"}
    assert float(t.rows[0]["median_s"]) == 0.1 + 0.2
    assert float(t.rows[1]["median_s"]) == 1 / 3
    assert [r["op"] for r in t.ok()] == ["add"]


def test_raw_csv_with_a_short_row_is_a_one_line_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("# suite: gemm\nop,status\nadd\n")
    with pytest.raises(ConfigError, match=r"x\.csv: row 1: has 1 fields, header has 2"):
        read_raw(p)


def test_refitting_the_shipped_raw_data_reproduces_the_shipped_profile():
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert refit(SHIPPED_RAW, "cpu-local", SHIPPED.parent) == shipped


def test_shipped_profile_loads_and_is_priced_from_measurements():
    prof = load_profile("cpu-local")
    assert prof.device_type == "cpu"
    assert prof.provenance_flags() == ["host.pinned_limit_bytes (assumed)"]
    cm = CostModel(prof)
    ops = [Op(OpKind.GEMM, (256, 256, 256), dtype="fp32"), Op(OpKind.H2D, n=2**20),
           Op(OpKind.ADAM_CPU, n=2**20), Op(OpKind.NORM, n=2**20),
           Op(OpKind.ATTN_FWD, (1, 4, 128, 128, 64, 1), dtype="fp32")]
    assert all(cm.op_seconds(op) > 0 for op in ops)
    assert cm.flags == set()   # every number used came from the raw data
    # A measured grid point is priced at exactly its measured rate.
    m, n, k, tflops = prof.gpu.gemm.table.points["fp32"][-1]
    assert cm.op_seconds(Op(OpKind.GEMM, (m, n, k), dtype="fp32")) == pytest.approx(
        2 * m * n * k / (tflops * 1e12), rel=1e-12)


def test_shipped_fit_report_states_held_out_error_per_suite():
    report = (SHIPPED_RAW.parent / "cpu-local.fit.md").read_text()
    assert report == fit(SHIPPED_RAW, "cpu-local", SHIPPED.parent).report
    for suite in ("gemm", "attention", "membw", "copy", "adam"):
        assert f"| {suite} | median " in report
    assert "missing: needs 2 GPUs (found 0)" in report


def test_cli_refit_writes_profile_and_report_and_refuses_to_overwrite(tmp_path, capsys):
    raw = tmp_path / "m.raw"
    shutil.copytree(SHIPPED_RAW, raw)
    out = tmp_path / "m.yaml"
    assert main(["calibrate", "--refit", str(raw), "--out", str(out)]) == 0
    prof = load_profile(out)
    assert prof.name == "m"
    assert (tmp_path / "m.fit.md").is_file()
    before = out.read_text()
    capsys.readouterr()
    assert main(["calibrate", "--refit", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"simhete: error: {out} exists; pass --force to replace it (nothing was changed)\n"
    assert out.read_text() == before
    assert main(["calibrate", "--refit", str(raw), "--out", str(out), "--force"]) == 0
    assert out.read_text() == before   # deterministic: same raw data, same bytes


def test_refit_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["calibrate", "--refit", str(tmp_path / "nope.raw"), "--out",
                 str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
