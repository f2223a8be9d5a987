"""The refit: raw CSVs of a calibration directory → a validated profile dict and its report,
with the held-out error of the fitted profile as :class:`simhete.hw.cost.CostModel` prices it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simhete.config import validate
from simhete.errors import ConfigError
from simhete.hw.fit.common import Fit, FitState, err_text, num, rel_errors, system_info
from simhete.hw.fit.compute import fit_attention, fit_blocks, fit_gemm
from simhete.hw.fit.host import fit_adam, fit_collectives, fit_copy, fit_interference
from simhete.hw.fit.membw import fit_membw
from simhete.hw.fit.raw import SUITES, SYSTEM, read_raw


def noise_section(st: FitState) -> str:
    lines = ["## noise\n", "| suite | points | remeasured | unstable | median spread (IQR/median) |",
             "|---|---|---|---|---|"]
    for name in SUITES:
        t = st.tables.get(name)
        if t is None:
            continue
        ok = t.ok()
        spreads = [(num(r, "q3_s") - num(r, "q1_s")) / num(r, "median_s") for r in ok]
        rem = sum(r["remeasured"] == "1" for r in ok)
        uns = sum(r["unstable"] == "1" for r in ok)
        med = f"{100 * float(np.median(spreads)):.1f}%" if spreads else "-"
        lines.append(f"| {name} | {len(ok)} | {rem} | {uns} | {med} |")
    return "\n".join(lines) + "\n"


def fit(raw_dir: str | Path, name: str | None = None, profile_dir: str | Path | None = None) -> Fit:
    """Fit the raw CSVs in ``raw_dir`` into a profile dict and a report.

    ``raw`` references in the profile are relative to ``profile_dir`` (default: the parent of
    ``raw_dir``, where ``simhete calibrate`` puts the profile); ``name`` defaults to the raw
    directory's name without ``.raw``. Raw data that was edited by hand or cut short is a
    one-line ConfigError naming the directory and what is wrong, never a traceback.
    """
    try:
        return _fit(raw_dir, name, profile_dir)
    except KeyError as e:
        raise ConfigError(str(raw_dir), None, problem=f"raw data lacks {e.args[0]!r} (a column, a "
                          "system item or a table the fit needs); re-run simhete calibrate") from None
    except (ValueError, IndexError) as e:
        raise ConfigError(str(raw_dir), None, problem=f"malformed raw data ({e}); re-run simhete "
                          "calibrate") from None
    except OSError as e:                       # unreadable (permissions), a directory named x.csv
        raise ConfigError(e.filename or str(raw_dir), None,
                          problem=f"cannot read raw data: {e.strerror or e}") from None


def _fit(raw_dir: str | Path, name: str | None, profile_dir: str | Path | None) -> Fit:
    from simhete.hw.cost import CostModel
    from simhete.hw.profile import HardwareProfile

    rd = Path(raw_dir)
    if not rd.is_dir():
        raise ConfigError(str(rd), None, problem="raw data directory not found")
    # only the CSVs calibrate writes: another file in the directory is not raw data of a suite
    tables = {p.stem: read_raw(p) for p in sorted(rd.glob("*.csv")) if p.stem in (SYSTEM, *SUITES)}
    if not tables:
        raise ConfigError(str(rd), None, problem=(
            "holds no raw calibration data; expected the CSVs simhete calibrate writes into X.raw/ "
            "beside a profile X.yaml: system.csv, gemm.csv, membw.csv and copy.csv, and any of "
            + ", ".join(f"{s}.csv" for s in SUITES if s not in ("gemm", "membw", "copy"))))
    for need in (SYSTEM, "gemm", "membw", "copy"):
        if need not in tables:
            raise ConfigError(str(rd / f"{need}.csv"), None,
                              problem=f"missing; a profile needs at least the {need} data")
    st = FitState(rd, Path(profile_dir) if profile_dir is not None else rd.parent, tables)
    sysinfo = system_info(st)
    device_type = sysinfo["device_type"]
    sys_ref = (f"queried from the OS and torch on {tables[SYSTEM].meta.get('date', '?')} "
               f"(raw {os.path.relpath(tables[SYSTEM].path, st.profile_dir)})")
    gpu: dict[str, Any] = {
        "ref": sys_ref, "model": sysinfo["device"], "count": int(sysinfo["count"]),
        "memory_bytes": int(sysinfo["memory_bytes"]),
        "reserved_bytes": st.q(SYSTEM, int(sysinfo["reserved_bytes"]), sysinfo["reserved_how"]),
        "sms": int(sysinfo["sms"]),
    }
    host: dict[str, Any] = {
        "ref": sys_ref, "cpu_model": sysinfo["host_cpu"], "sockets": int(sysinfo["host_sockets"]),
        "cores": int(sysinfo["host_cores"]), "memory_bytes": int(sysinfo["host_memory_bytes"]),
    }
    interference: list[dict[str, Any]] = []
    fit_gemm(st, sysinfo, gpu)
    if "attention" in tables:
        fit_attention(st, gpu)
    fit_membw(st, gpu)
    if "blocks" in tables:
        fit_blocks(st, gpu)
    links = fit_copy(st, device_type, host)
    pinned = int(sysinfo["pinned_limit_bytes"])
    if device_type == "cuda" or pinned > 0:   # a CPU device has no pinned memory: key left out
        host["pinned_limit_bytes"] = {"value": pinned, "source": "assumed",
                                      "ref": sysinfo["pinned_limit_how"]}
    if "adam" in tables:
        fit_adam(st, host, int(sysinfo.get("torch_threads", sysinfo["host_cores"])))
    if "interference" in tables:
        fit_interference(st, device_type, interference)
    coll = fit_collectives(st) if "collectives" in tables else None
    prof_name = name or rd.name.removesuffix(".raw")
    profile: dict[str, Any] = {
        "name": prof_name,
        "description": f"calibrated by simhete calibrate on {sysinfo['device']} "
                       f"({tables[SYSTEM].meta.get('date', '?')}, grid {sysinfo['grid']}, torch threads "
                       f"{sysinfo.get('torch_threads', '?')} per stream)",
        "validated": False, "device_type": device_type, "gpu": gpu, "host": host,
    }
    if links is not None:
        profile["links"] = links
    if coll is not None:
        profile["collectives"] = coll
    profile["interference"] = interference
    prof = validate(HardwareProfile, profile, str(rd))
    cm = CostModel(prof)
    errs_lines = ["## held-out error (the fitted profile priced by CostModel)\n",
                  "| suite | error |", "|---|---|"]
    by_label = []
    errors: list[tuple[str, str, list[float]]] = []
    for suite in SUITES:
        if suite in st.holdout:
            pts = st.holdout[suite]
            errs = rel_errors([cm.op_seconds(op) for op, _ in pts], [m for _, m in pts])
            errs_lines.append(f"| {suite} | {err_text(errs)} |")
            errors.append((suite, "", errs))
            labels = st.holdout_by.get(suite)
            if labels:
                parts = []
                for lab in dict.fromkeys(labels):
                    e = [x for x, y in zip(errs, labels) if y == lab]
                    errors.append((suite, lab, e))
                    parts.append(f"{lab} {100 * float(np.median(e)):.1f}% "
                                 f"(max {100 * max(e):.1f}%)")
                by_label.append(f"- {suite} by op, median: {'; '.join(parts)}")
    if by_label:
        errs_lines.append("\n" + "\n".join(by_label))
    head = (f"# Fit report: {prof_name}\n\n- device: {sysinfo['device']} ({device_type})\n"
            f"- raw data: {rd.name}/ ({', '.join(sorted(tables))})\n"
            f"- torch {tables[SYSTEM].meta.get('torch', '?')}, date "
            f"{tables[SYSTEM].meta.get('date', '?')}, grid {sysinfo['grid']}, torch threads "
            f"{sysinfo.get('torch_threads', '?')} per measuring thread\n"
            f"- held-out points were never used by the fits\n")
    report = "\n".join([head, "\n".join(errs_lines) + "\n", *st.sections, noise_section(st)])
    return Fit(profile, report, errors)


def refit(raw_dir: str | Path, name: str | None = None,
          profile_dir: str | Path | None = None) -> dict[str, Any]:
    """The profile dict fitted from raw CSV alone (no torch, no device)."""
    return fit(raw_dir, name, profile_dir).profile
