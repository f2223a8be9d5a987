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
    assert prof.provenance_flags() == []   # a CPU device has no pinned memory: no limit to assume
    assert prof.host.pinned_limit_bytes is None
    cm = CostModel(prof)
    ops = [Op(OpKind.GEMM, (256, 256, 256), dtype="fp32"), Op(OpKind.H2D, n=2**20),
           Op(OpKind.ADAM_CPU, n=2**20), Op(OpKind.NORM, n=2**20),
           Op(OpKind.ELEMENTWISE, n=2**20), Op(OpKind.SOFTMAX_CE, (1, 1), n=2**20),
           Op(OpKind.EMBED, (1, 1), n=2**20),
           Op(OpKind.ATTN_FWD, (1, 4, 128, 128, 64, 1), dtype="fp32")]
    assert all(cm.op_seconds(op) > 0 for op in ops)
    assert cm.flags == set()   # every number used came from the raw data
    # A measured grid point is priced at exactly its measured rate.
    m, n, k, tflops = prof.gpu.gemm.table.points["fp32"][-1]
    assert cm.op_seconds(Op(OpKind.GEMM, (m, n, k), dtype="fp32")) == pytest.approx(
        2 * m * n * k / (tflops * 1e12), rel=1e-12)


def test_shipped_fit_report_states_held_out_error_per_suite():
    from calibrate.targets import comparison

    report = (SHIPPED_RAW.parent / "cpu-local.fit.md").read_text()
    result = fit(SHIPPED_RAW, "cpu-local", SHIPPED.parent)
    # the shipped report was refitted with --shapes-from the validation scenarios: the fit's own
    # report, then each measured block beside its op-level price
    scen = sorted(str(p) for p in (ROOT / "scenarios").glob("small-*_cpu_*.yaml"))
    assert report == result.report + "\n" + comparison(result.profile, scen, "cpu")
    assert "| small-gpt_cpu_gpu-only.yaml b0 fwd |" in report
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


# -- fits with known answers on synthetic raw data -----------------------------------------------

STATS = ("median_s", "q1_s", "q3_s", "min_s", "max_s")


def _rows(params: list[dict], time) -> list[dict]:
    out = []
    for p in params:
        t = time(p)
        out.append({**p, **{c: t for c in STATS}, "repeats": 5, "inner": 1, "remeasured": 0,
                    "unstable": 0, "status": "ok"})
    return out


def _synthetic_raw(tmp_path: Path, norm_kinds=("NORM", "RMSNORM")) -> Path:
    """A CPU device's raw data whose times follow known formulas."""
    raw = tmp_path / "syn.raw"
    raw.mkdir()
    meta = {"device": "synthetic cpu", "driver": "n/a", "torch": "2.13.0+cpu", "host": "h",
            "date": "2026-11-21"}
    system = {"device_type": "cpu", "device": "synthetic cpu", "count": 1, "memory_bytes": 2**33,
              "reserved_bytes": 2**30, "reserved_how": "t", "sms": 2, "gemm_tile": 1,
              "host_cpu": "x", "host_sockets": 1, "host_cores": 2, "host_memory_bytes": 2**33,
              "pinned_limit_bytes": 0, "pinned_limit_how": "not applicable", "grid": "quick",
              "torch_threads": 1}
    write_raw(raw / "system.csv", meta, ("item", "value", "status"),
              [{"item": k, "value": v, "status": "ok"} for k, v in system.items()])
    tail = (*STATS, "repeats", "inner", "remeasured", "unstable", "status")
    gemm = [{"dtype": "fp32", "M": m, "N": n, "K": k, "flops": 2 * m * n * k, "split": "fit"}
            for m in (64, 128) for n in (64, 128) for k in (64, 128)]
    write_raw(raw / "gemm.csv", meta, ("dtype", "M", "N", "K", "flops", "split", *tail),
              _rows(gemm, lambda p: 2e-6 + p["flops"] / 1e11))
    # ELEMENTWISE add/mul fp32: 1.5 us + bytes / 20 GB/s, add bf16: 2 us + bytes / 8 GB/s; NORM
    # 4 us + bytes / 5 GB/s and NORM_BWD 6 us + bytes / 2 GB/s; RMSNORM 16 us + bytes / 1.25 GB/s;
    # SOFTMAX_CE 3 us + bytes / 4 GB/s.
    mem = []
    cases = [("ELEMENTWISE", "add", "fp32"), ("ELEMENTWISE", "mul", "fp32"), ("ELEMENTWISE", "add", "bf16")]
    cases += [(k, "", "fp32") for k in norm_kinds] + [("SOFTMAX_CE", "", "fp32")]
    cases += [("NORM_BWD", "", "fp32")] if "NORM" in norm_kinds else []
    for kind, var, dt in cases:
        for i, e in enumerate(4**j for j in range(3, 9)):
            elem = 4 if dt == "fp32" else 2
            b = (3 if kind in ("ELEMENTWISE", "NORM_BWD") else 2) * elem * e
            mem.append({"kind": kind, "variant": var, "dtype": dt, "elems": e, "bytes": b,
                        "split": "fit" if i % 2 == 0 else "holdout"})
    law = {("ELEMENTWISE", "add", "fp32"): (1.5e-6, 20e9), ("ELEMENTWISE", "mul", "fp32"): (1.5e-6, 20e9),
           ("ELEMENTWISE", "add", "bf16"): (2e-6, 8e9), ("NORM", "", "fp32"): (4e-6, 5e9),
           ("NORM_BWD", "", "fp32"): (6e-6, 2e9), ("RMSNORM", "", "fp32"): (16e-6, 1.25e9),
           ("SOFTMAX_CE", "", "fp32"): (3e-6, 4e9)}
    write_raw(raw / "membw.csv", meta, ("kind", "variant", "dtype", "elems", "bytes", "split", *tail),
              _rows(mem, lambda p: law[p["kind"], p["variant"], p["dtype"]][0]
                    + p["bytes"] / law[p["kind"], p["variant"], p["dtype"]][1]))
    copy = [{"kind": k, "memory": "host", "bytes": b, "split": "fit"}
            for k in ("memcpy", "stream_add") for b in (4096, 2**20, 2**24)]
    write_raw(raw / "copy.csv", meta, ("kind", "memory", "bytes", "split", *tail),
              _rows(copy, lambda p: 1e-6 + p["bytes"] / 10e9))
    adam = [{"impl": "fused", "threads": th, "params": n, "split": "fit" if i % 2 == 0 else "holdout"}
            for th in (1, 2) for i, n in enumerate((2**12, 2**14, 2**16, 2**18, 2**20))]
    law_adam = {1: (50e-6, 1e9), 2: (40e-6, 1.5e9)}
    write_raw(raw / "adam.csv", meta, ("impl", "threads", "params", "split", *tail),
              _rows(adam, lambda p: law_adam[p["threads"]][0] + p["params"] / law_adam[p["threads"]][1]))
    return raw


def test_fit_recovers_known_membw_launch_and_adam_laws(tmp_path):
    raw = _synthetic_raw(tmp_path)
    f = fit(raw, "syn")
    gpu, host = f.profile["gpu"], f.profile["host"]
    assert gpu["launch_overhead_us"]["value"] == 1.5                # alpha of the small add/mul
    mb = gpu["memory_bound"]
    assert set(mb) == {"ELEMENTWISE", "NORM", "NORM_BWD", "RMSNORM", "SOFTMAX_CE"}  # no embedding rows
    big = 3 * 4 * 4**7                                               # largest fit size of add
    assert mb["ELEMENTWISE"]["bandwidth_gbps"]["value"] == pytest.approx(
        big / (1.5e-6 + big / 20e9) / 1e9, rel=5e-4)
    assert gpu["mem_bandwidth_gbps"]["value"] == mb["ELEMENTWISE"]["bandwidth_gbps"]["value"]
    for b, gbps in mb["ELEMENTWISE"]["dtypes"]["bf16"]["curve"]["points"]:   # its own law
        assert gbps == pytest.approx(b / (2e-6 + b / 8e9) / 1e9, rel=5e-4)
    assert "dtypes" not in mb["NORM"]                                # fp32 only
    for b, gbps in mb["RMSNORM"]["curve"]["points"]:                 # its own law, not NORM's
        assert gbps == pytest.approx(b / (16e-6 + b / 1.25e9) / 1e9, rel=5e-4)
    for b, gbps in mb["NORM"]["curve"]["points"]:       # the forward alone (8e bytes)
        assert gbps == pytest.approx(b / (4e-6 + b / 5e9) / 1e9, rel=5e-4)
    for b, gbps in mb["NORM_BWD"]["curve"]["points"]:   # the backward alone (12e bytes)
        assert gbps == pytest.approx(b / (6e-6 + b / 2e9) / 1e9, rel=5e-4)
    adam = host["adam"]
    assert (adam["threads"], adam["overhead_us"]["value"], adam["params_per_s"]["value"]) == \
        (1, 50.0, 1e9)
    assert adam["by_threads"]["points"] == [[1, 1e9], [2, 1.5e9]]
    assert "pinned_limit_bytes" not in host
    # Held out: Adam follows its law exactly; add and mul do between fit sizes (linear in n is
    # exact for a fixed cost + n / bandwidth) and lose 11% only above the largest fit size,
    # priced at that size's rate; RMSNORM has its own curve; so has each pass of NORM.
    assert "| adam | median 0.0%, max 0.0% over 2 held-out points |" in f.report
    assert ("ELEMENTWISE add 0.0% (max 11.0%); ELEMENTWISE mul 0.0% (max 11.0%); "
            "ELEMENTWISE add bf16 0.0% (max") in f.report
    assert "RMSNORM 0.0% (max" in f.report
    cm = CostModel(load_profile(_write_profile(tmp_path, f.profile)))
    e = 4**5                                                         # between fit sizes 4^4, 4^6
    fwd, bwd = Op(OpKind.NORM, n=8 * e, dtype="fp32"), Op(OpKind.NORM_BWD, n=12 * e, dtype="fp32")
    assert cm.op_seconds(fwd) == pytest.approx(4e-6 + 8 * e / 5e9, rel=5e-4)   # each pass exact
    assert cm.op_seconds(bwd) == pytest.approx(6e-6 + 12 * e / 2e9, rel=5e-4)  # (4 digits kept)
    assert "; NORM 0.0% (max" in f.report and "NORM_BWD 0.0% (max" in f.report
    # a backward kind without its own entry falls back to its forward's (older profiles)
    prof = dict(f.profile, gpu={**f.profile["gpu"], "memory_bound": {
        k: v for k, v in mb.items() if k != "NORM_BWD"}})
    cm_old = CostModel(load_profile(_write_profile(tmp_path, prof, "old")))
    assert cm_old.op_seconds(bwd) == cm_old.op_seconds(Op(OpKind.NORM, n=12 * e, dtype="fp32"))
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=3 * 2 * e, dtype="bf16")) == pytest.approx(
        2e-6 + 6 * e / 8e9, rel=5e-4)                                # bf16 on its own curve
    n = 3 * 4 * 4**4                                                 # a held-out add size
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=2**14)) == pytest.approx(50e-6 + 2**14 / 1e9)
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=n, dtype="fp32")) == pytest.approx(
        1.5e-6 + n / 20e9, rel=1e-3)
    # a kind without its own entry: GELU → ELEMENTWISE (per dtype), RMSNORM has its own
    assert cm.op_seconds(Op(OpKind.GELU, n=n, dtype="bf16")) == cm.op_seconds(
        Op(OpKind.ELEMENTWISE, n=n, dtype="bf16"))


def _write_profile(tmp_path: Path, profile: dict, stem: str = "syn") -> Path:
    out = tmp_path / f"{stem}.yaml"
    out.write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


def test_fit_of_membw_data_without_norms_leaves_norm_on_the_single_bandwidth(tmp_path):
    f = fit(_synthetic_raw(tmp_path, norm_kinds=()), "syn")
    assert set(f.profile["gpu"]["memory_bound"]) == {"ELEMENTWISE", "SOFTMAX_CE"}
    cm = CostModel(load_profile(_write_profile(tmp_path, f.profile)))
    g = cm.profile.gpu
    assert cm.op_seconds(Op(OpKind.NORM, n=10**6)) == pytest.approx(
        g.launch_overhead_us.value * 1e-6 + 10**6 / (g.mem_bandwidth_gbps.value * 1e9))


def test_membw_rows_written_before_the_opkind_vocabulary_read_as_kind_and_variant(tmp_path):
    """Raw membw files name rows by benchmark (op, pass: layernorm bwd, silu, attn_dropout); they
    are read as the OpKind each prices and its variant, so old calibrations still refit."""
    raw = _synthetic_raw(tmp_path)
    new = fit(raw, "syn").profile
    t = read_raw(raw / "membw.csv")
    back = {"ELEMENTWISE": "add", "NORM": "layernorm", "NORM_BWD": "layernorm", "RMSNORM": "rmsnorm",
            "SOFTMAX_CE": "softmax"}
    old = [{"op": r["variant"] or back[r["kind"]], "pass": "bwd" if r["kind"].endswith("_BWD") else "fwd",
            **{k: v for k, v in r.items() if k not in ("kind", "variant")}} for r in t.rows]
    legacy = ("op", "pass", *(c for c in t.columns if c not in ("kind", "variant")))
    write_raw(raw / "membw.csv", t.meta, legacy, old)
    got = read_raw(raw / "membw.csv")
    assert got.columns == t.columns and got.rows == t.rows
    assert fit(raw, "syn").profile == new
    silu = tmp_path / "membw.csv"
    write_raw(silu, {}, ("op", "pass", "status"), [{"op": "silu", "pass": "bwd", "status": "ok"},
                                                   {"op": "attn_dropout", "pass": "fwd", "status": "ok"},
                                                   {"op": "gone", "pass": "bwd", "status": "ok"}])
    assert [(r["kind"], r["variant"]) for r in read_raw(silu).rows] == \
        [("SWIGLU_BWD", ""), ("DROPOUT", "attention"), ("gone", "")]


def test_gemm_table_rate_is_the_mean_time_over_layouts(tmp_path):
    # nn: 2 us + FLOPs / 100 GFLOP/s; tn twice as slow: one table rate per shape from the mean time.
    raw = _synthetic_raw(tmp_path)
    meta = {"device": "synthetic cpu", "driver": "n/a", "torch": "2.13.0+cpu", "host": "h",
            "date": "2026-11-21"}
    tail = (*STATS, "repeats", "inner", "remeasured", "unstable", "status")
    gemm = [{"dtype": "fp32", "layout": lay, "M": m, "N": n, "K": k, "flops": 2 * m * n * k,
             "split": "fit"} for m in (64, 128) for n in (64, 128) for k in (64, 128)
            for lay in ("nn", "tn")]
    law = lambda p: (2e-6 + p["flops"] / 1e11) * (2 if p["layout"] == "tn" else 1)  # noqa: E731
    write_raw(raw / "gemm.csv", meta, ("dtype", "layout", "M", "N", "K", "flops", "split", *tail),
              _rows(gemm, law))
    pts = fit(raw, "syn").profile["gpu"]["gemm"]["table"]["points"]["fp32"]
    assert len(pts) == 8
    for m, n, k, tflops in pts:
        f = 2 * m * n * k
        assert tflops == pytest.approx(f / (1.5 * (2e-6 + f / 1e11)) / 1e12, rel=5e-4)


def test_hand_edited_raw_data_is_a_one_line_error(tmp_path):
    """A missing system item or a non-numeric measurement names the raw directory, no traceback."""
    import shutil

    from simhete.errors import ConfigError
    from simhete.hw.fit import fit
    from simhete.hw.profile import PROFILES_DIR
    src = PROFILES_DIR / "measured" / "cpu-local.raw"
    raw = tmp_path / "x.raw"
    shutil.copytree(src, raw)
    system = raw / "system.csv"
    system.write_text("".join(line for line in system.read_text().splitlines(keepends=True)
                              if not line.startswith("device_type,")))
    with pytest.raises(ConfigError, match=r"x\.raw: raw data lacks 'device_type'"):
        fit(raw)
    shutil.rmtree(raw)
    shutil.copytree(src, raw)
    gemm = raw / "gemm.csv"
    lines = gemm.read_text().splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    cols = lines[header].rstrip("\n").split(",")
    row = lines[header + 1].rstrip("\n").split(",")
    row[cols.index("median_s")] = "fast"
    lines[header + 1] = ",".join(row) + "\n"
    gemm.write_text("".join(lines))
    with pytest.raises(ConfigError, match=r"x\.raw: malformed raw data"):
        fit(raw)


@pytest.mark.parametrize("content", ["empty", "unrelated", "only-unrelated-csv"])
def test_refit_of_a_directory_without_raw_data_is_one_line_naming_it(tmp_path, capsys, content):
    """``calibrate --refit DIR`` where DIR holds no calibration CSVs (nothing, other files, CSVs of
    another program): one line naming DIR and the files expected, exit 2, nothing written."""
    raw = tmp_path / "stuff"
    raw.mkdir()
    if content == "unrelated":
        (raw / "notes.txt").write_text("hello\n")
        (raw / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    elif content == "only-unrelated-csv":
        (raw / "prices.csv").write_text("item,price\napple,1\n")
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--refit", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"simhete: error: {raw}: holds no raw calibration data; expected the CSVs simhete "
                   "calibrate writes into X.raw/ beside a profile X.yaml: system.csv, gemm.csv, "
                   "membw.csv and copy.csv, and any of attention.csv, adam.csv, interference.csv, "
                   "collectives.csv, blocks.csv\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stuff"]     # nothing written


def test_refit_ignores_files_calibrate_did_not_write_and_names_an_unreadable_one(tmp_path, capsys):
    raw = tmp_path / "x.raw"
    shutil.copytree(SHIPPED_RAW, raw)
    before = fit(raw).profile
    (raw / "prices.csv").write_text("item,price\napple,1\n")      # not a suite: not read
    assert fit(raw).profile == before
    (raw / "gemm.csv").unlink()
    (raw / "gemm.csv").mkdir()
    assert main(["calibrate", "--refit", str(raw), "--out", str(tmp_path / "p.yaml")]) == 2
    assert capsys.readouterr().err == f"simhete: error: {raw / 'gemm.csv'}: cannot read raw data: Is a directory\n"
