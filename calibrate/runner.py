"""Run the chosen suites with a progress bar per suite and write one raw CSV per suite."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from types import ModuleType

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simhete.hostinfo import process_rss_bytes
from simhete.hw.fit import SYSTEM, write_raw

from calibrate import adam, attention, blocks, collectives, copies, gemm, interference, membw
from calibrate.common import ROW_TAIL, Ctx
from calibrate.device import Target, host_cpu, host_memory_bytes, l2_bytes, llc_bytes, provenance
from calibrate.grids import Grid

SUITES: dict[str, ModuleType] = {m.NAME: m for m in (gemm, attention, membw, copies, adam,
                                                     interference, collectives, blocks)}


def _sockets() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            ids = {line.split(":", 1)[1].strip() for line in f if line.startswith("physical id")}
        return max(1, len(ids))
    except OSError:
        return 1


def system_rows(target: Target, grid: Grid) -> list[dict[str, object]]:
    """Facts queried (not timed) about the device and host, for the profile's non-fitted fields."""
    host_mem = host_memory_bytes()
    if target.is_cuda:
        free, total = torch.cuda.mem_get_info(target.device)
        reserved, how = total - free, "cudaMemGetInfo total - free after CUDA context creation"
        sms, tile = torch.cuda.get_device_properties(0).multi_processor_count, 128
        pinned, pinned_how = host_mem // 2, ("not measured; assumed half of host memory (pinning "
                                             "more starves the OS and page cache)")
    else:
        # the analogue of a CUDA context: what the framework itself keeps resident on the device
        # (this process after importing torch), not what other processes happen to use now
        reserved = process_rss_bytes() or 0
        how = "resident memory of the calibrating process after importing torch (VmRSS, /proc/self/status)"
        sms, tile = os.cpu_count() or 1, 1  # a CPU has no tile/wave quantisation: 1x1 "tiles"
        pinned, pinned_how = 0, "not applicable: a CPU device has no pinned memory"
    items = {"device_type": target.kind, "device": target.name, "count": max(1, target.gpu_count),
             "memory_bytes": target.memory_bytes, "reserved_bytes": reserved, "reserved_how": how,
             "sms": sms, "gemm_tile": tile, "host_cpu": host_cpu(), "host_sockets": _sockets(),
             "host_cores": os.cpu_count() or 1, "host_memory_bytes": host_mem,
             "pinned_limit_bytes": pinned, "pinned_limit_how": pinned_how, "grid": grid.level,
             "torch_threads": torch.get_num_threads()}
    return [{"item": k, "value": v, "status": "ok"} for k, v in items.items()]


def default_threads(target: Target) -> int:
    """Intra-op threads per measuring thread: torch's default on a GPU machine; 1 on a CPU device,
    where the simulated streams (compute, copies, optimizer) run at once on threads that share the
    cores, and a multi-threaded op on a busy core waits for its slowest thread (an OpenMP barrier:
    on a loaded 2-core machine a 64x256x64 GEMM took 16 ms with 2 threads, 26 us with 1)."""
    return torch.get_num_threads() if target.is_cuda else 1


def run_suites(target: Target, grid: Grid, names: list[str], raw_dir: Path,
               console: Console | None = None, threads: int | None = None, passes: int = 1) -> None:
    """Measure ``names`` (in the order of SUITES) into ``raw_dir``/<suite>.csv, ``passes`` times
    over (every suite once per pass, passes one after another) when ``passes`` > 1."""
    before = torch.get_num_threads()
    ctx = Ctx(target, grid, threads or default_threads(target), l2_bytes(target), llc_bytes(target))
    torch.set_num_threads(ctx.threads)
    try:
        _run(ctx, names, raw_dir, console, passes)
    finally:
        torch.set_num_threads(before)


PASS_COLUMN = "pass_medians_s"   # with --passes N: every pass's median, the row's median_s is theirs


def merge_passes(rows: list[dict[str, object]]) -> dict[str, object]:
    """One row from a point's row in each pass: the median of the passes' medians (the machine's
    speed drifts between passes on a shared host; the median of separated passes is what a profile
    should hold), q1/q3 the medians of theirs, min/max over all, repeats summed; a point is
    ``ok`` when any pass measured it, unstable or remeasured when any pass was."""
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    if not ok_rows:
        return dict(rows[0])

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in ok_rows]  # type: ignore[arg-type]

    med = col("median_s")
    out = dict(ok_rows[0])
    out.update({
        "median_s": statistics.median(med),
        "q1_s": statistics.median(col("q1_s")),
        "q3_s": statistics.median(col("q3_s")),
        "min_s": min(col("min_s")),
        "max_s": max(col("max_s")),
        "repeats": int(sum(col("repeats"))),
        "inner": int(max(col("inner"))),
        "remeasured": int(any(col("remeasured"))),
        "unstable": int(any(col("unstable"))),
        PASS_COLUMN: " ".join(f"{x:.6g}" for x in med),
    })
    return out


def _run(ctx: Ctx, names: list[str], raw_dir: Path, console: Console | None, passes: int = 1) -> None:
    target, grid = ctx.target, ctx.grid
    meth = grid.methodology.header()
    write_raw(raw_dir / f"{SYSTEM}.csv", provenance(target, SYSTEM, {"grid": grid.level}),
              ("item", "value", "status"), system_rows(target, grid))
    columns = (TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as prog:
        plans = [(n, SUITES[n], SUITES[n].points(ctx)) for n in SUITES if n in names]
        # a suite with nothing to measure (blocks without --shapes-from) gets no bar
        tasks = {n: prog.add_task(n, total=len(pts) * passes) for n, _, pts in plans if pts}
        measured: dict[str, list[list[dict[str, object]]]] = {n: [] for n, _, _ in plans}
        for _ in range(passes):
            for name, mod, pts in plans:
                rows = []
                for p in pts:
                    row = mod.run(ctx, p)     # a suite may give several rows for one point
                    rows.extend(row if isinstance(row, list) else [row])
                    prog.advance(tasks[name])
                measured[name].append(rows)
        for name, mod, pts in plans:
            if not pts:
                continue                      # nothing to measure (blocks without --shapes-from)
            extra = {"shapes_from": " ".join(grid.shapes_from)} if grid.shapes_from and name in (
                "gemm", "attention", "blocks") else {}
            if name == membw.NAME:
                extra["ring"] = membw.ring_note(ctx.l2)
            if name == copies.NAME:
                extra["ring"] = copies.ring_note(ctx.llc)
            cols: tuple[str, ...] = (*mod.COLUMNS, *ROW_TAIL)
            rows = measured[name][0]
            if passes > 1:
                extra["passes"] = (f"{passes}, one after another over every suite; a row's median_s is "
                                   f"the median of its passes' medians ({PASS_COLUMN})")
                rows = [merge_passes(list(rs)) for rs in zip(*measured[name])]
                cols = (*cols, PASS_COLUMN)
            write_raw(raw_dir / f"{name}.csv", provenance(target, name, {**meth, "grid": grid.level,
                                                                         **extra}), cols, rows)
