"""`simhete calibrate`: measure this machine and write a fitted hardware profile.

Writes ``X.yaml`` (the profile), ``X.raw/`` (one CSV per suite, with provenance) and ``X.fit.md``
(fitted parameters, held-out error, noise) side by side. Everything is built in a staging
directory next to ``X.yaml`` (``.calibrate-*``, holding an ``owner`` file with the pid that made
it) and moved into place at the end, so an interrupted or failed run leaves what was there before
untouched. SIGTERM and Ctrl-C remove the staging directory and end with one line; a run killed
outright (SIGKILL) leaves it, and the next calibrate writing beside it removes it once its owner is
dead. ``--refit RAW_DIR`` refits existing raw data with no device and no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from simhete.errors import SimheteError
from simhete.hw.fit import SUITES, fit

HELP = "measure this machine (GPU, or the CPU as the device) and write a fitted hardware profile"
NEEDED = ("gemm", "membw", "copy")   # what a profile cannot do without


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="X.yaml",
                   help="profile to write; X.raw/ and X.fit.md are written beside it")
    p.add_argument("--quick", action="store_true", help="reduced grid (about a minute on a CPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="device to calibrate (auto: CUDA if available, else the CPU)")
    p.add_argument("--suites", default=",".join(SUITES),
                   help=f"comma-separated subset of: {', '.join(SUITES)} (default: all)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads per measuring thread (default: 1 on a CPU "
                        "device, torch's default with CUDA); replay should use the same")
    p.add_argument("--shapes-from", nargs="+", default=[], metavar="SCENARIO.yaml",
                   help="also measure the exact GEMM and attention shapes these scenarios price, "
                        "and (suite blocks) each of their blocks' forward and backward whole, "
                        "inside training steps of their model (at their replay: shape when they "
                        "have one); with --refit: the scenarios whose blocks the raw data measured, "
                        "for the fit report's comparison; see docs/calibration.md")
    p.add_argument("--passes", type=int, default=1, metavar="N",
                   help="measure every suite N times, one pass after another, and keep each "
                        "point's median over the passes (a shared machine's speed drifts within "
                        "minutes; default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing profile and its data")
    p.add_argument("--refit", metavar="RAW_DIR",
                   help="no measuring: refit the raw CSVs in RAW_DIR (no device, no torch needed)")


def parse_suites(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SUITES]
    if bad or not names:
        raise SimheteError(f"--suites: unknown suite {bad[0] if bad else text!r}; allowed: "
                           f"{', '.join(SUITES)}")
    lacking = [s for s in NEEDED if s not in names]
    if lacking:
        raise SimheteError(f"--suites {text}: a profile needs {', '.join(NEEDED)}; add "
                           f"{', '.join(lacking)}")
    return names


class _FlowDumper(yaml.SafeDumper):
    """Lists of numbers on one line ([M, N, K, tflops]); everything else block style."""


def _repr_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowDumper.add_representer(list, _repr_list)


def dump_profile(profile: dict[str, Any], how: str) -> str:
    head = (f"# Fitted hardware profile written by `simhete calibrate` ({how}).\n"
            "# Every measured number names its raw CSV; docs/calibration.md explains the fits.\n")
    return head + yaml.dump(profile, Dumper=_FlowDumper, sort_keys=False, width=100,
                            allow_unicode=True)


def fit_summary(result: Any, report: Path) -> Any:
    """A console table of the fit's held-out errors: per suite, the median and max relative error
    and, where a suite times several ops, the op with the largest median error (every op's figures
    are in ``report``)."""
    import numpy as np
    from rich.table import Table

    t = Table(title="held-out error of the fitted profile (points no fit used)", title_justify="left",
              caption=f"every op: {report}", caption_justify="left")
    t.add_column("suite")
    for name in ("median", "max", "points"):
        t.add_column(name, justify="right")
    t.add_column("worst op (its median)")
    ops: dict[str, list[tuple[str, list[float]]]] = {}
    for suite, op, errs in result.errors:
        if op and errs:
            ops.setdefault(suite, []).append((op, errs))
    for suite, op, errs in result.errors:
        if op:
            continue
        if not errs:
            t.add_row(suite, "—", "—", "0", "")
            continue
        worst = ""
        if len(ops.get(suite, ())) > 1:
            name, e = max(ops[suite], key=lambda x: float(np.median(x[1])))
            worst = f"{name} ({100 * float(np.median(e)):.1f} %)"
        t.add_row(suite, f"{100 * float(np.median(errs)):.1f} %", f"{100 * max(errs):.1f} %", str(len(errs)), worst)
    return t


def _check_targets(paths: list[Path], force: bool) -> None:
    from simhete.fileio import check_not_input

    for p in paths:
        check_not_input(p, "--out")
        try:
            p.stat()
            exists = True
        except (FileNotFoundError, NotADirectoryError):   # (a link to nothing is written through)
            exists = False
        except OSError as e:           # a name too long for the file system, a loop of links
            raise SimheteError(f"--out {p}: {e.strerror}") from None
        if exists and not force:
            raise SimheteError(f"{p} exists; pass --force to replace it (nothing was changed)")
    parent = paths[0].parent
    if not parent.is_dir():
        raise SimheteError(f"--out {paths[0]}: {parent} is not an existing directory")


STAGING_PREFIX = ".calibrate-"
OWNER = "owner"          # in the staging directory: "pid host start-time" of the run that made it


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of /proc/PID/stat), which
    tells a live owner from another process that was given its pid later; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_dead(owner: str) -> int | None:
    """The pid of a staging directory's ``owner`` text if that process is gone (on this host),
    else None: alive, another host's, or unreadable."""
    parts = owner.split()
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] != socket.gethostname():
        return None
    pid = int(parts[0])
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:           # alive, another user's
        return None
    now = _start_time(pid)
    return pid if parts[2] != "-" and now is not None and now != parts[2] else None


def _remove_stale(parent: Path) -> None:
    """Remove staging directories in ``parent`` left by calibrations that were killed outright
    (SIGKILL, a crash): those whose owner process no longer exists; one line each on stderr."""
    try:
        found = sorted(parent.glob(STAGING_PREFIX + "*"))
    except OSError:
        return
    for d in found:
        try:
            owner = (d / OWNER).read_text()
        except OSError:
            continue                  # not ours, or being created this moment: left alone
        pid = _owner_dead(owner)
        if pid is None:
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            print(f"simhete: removed {d}, the working folder of a calibration (pid {pid}) that was "
                  "killed before it finished", file=sys.stderr)


def _staging(parent: Path) -> Path:
    _remove_stale(parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
        # written whole, then renamed: the owner file is complete or absent, never empty (a run
        # killed between creating and writing it left an empty owner that no later run removed)
        (stage / (OWNER + ".new")).write_text(
            f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid()) or '-'}\n")
        os.replace(stage / (OWNER + ".new"), stage / OWNER)
        return stage
    except OSError as e:
        raise SimheteError(f"--out: cannot write in {parent}: {e.strerror}") from None


class _Stopped(BaseException):
    """SIGTERM arrived (a BaseException, so no ``except Exception`` on the way takes it)."""


def _signals() -> "StopOnSignals":
    """While measuring and fitting, SIGTERM raises :class:`_Stopped` (see ``StopOnSignals``)."""
    from simhete.commands._common import StopOnSignals
    return StopOnSignals(lambda signum: _Stopped())


def _staged(parent: Path, work: Callable[[Path], list[tuple[Path, Path]]]) -> int | None:
    """Run ``work`` in a staging folder beside the outputs and move what it returns (``(staged,
    final)`` pairs) into place, under :func:`_signals`: SIGTERM or Ctrl-C before the move removes
    the folder and gives the stop's exit status; signals are ignored from the move on. None when
    the outputs are in place."""
    with _signals() as sig:
        stage: Path | None = None
        try:
            stage = _staging(parent)
            moves = work(stage)
            sig.hold()                # a signal now would leave some outputs moved, some not
            _install(moves)
        except (KeyboardInterrupt, _Stopped) as e:
            sig.hold()
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            return _stopped(e, stage)
        finally:
            sig.hold()
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
    return None


def _stopped(e: BaseException, stage: Path | None) -> int:
    """The one line of a calibration stopped by SIGTERM or Ctrl-C, and its exit status."""
    name, code = ("SIGTERM", 143) if isinstance(e, _Stopped) else ("Ctrl-C (SIGINT)", 130)
    removed = f"removed its working folder {stage}; " if stage is not None else ""
    print(f"simhete: calibrate stopped by {name}: {removed}nothing was written", file=sys.stderr)
    return code


def _install(staged: list[tuple[Path, Path]]) -> None:
    """Move staged files into place, replacing what --force allowed to replace."""
    from simhete.fileio import write_atomic

    for src, dst in staged:
        if src.is_file():          # a file: written atomically through any link, with the user's umask
            write_atomic(dst, src.read_bytes(), "--out")
            continue
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        src.replace(dst)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml"):
        raise SimheteError(f"--out {out}: a profile file ends in .yaml or .yml")
    if args.refit:
        return _refit(Path(args.refit), out, args.force, args.shapes_from)
    suites = parse_suites(args.suites)
    if args.passes < 1:
        raise SimheteError(f"--passes: bad value {args.passes}; allowed: an integer >= 1")
    if args.threads is not None and args.threads < 1:
        raise SimheteError(f"--threads: bad value {args.threads}; allowed: an integer >= 1")
    raw_dir, report = out.with_suffix(".raw"), out.with_suffix(".fit.md")
    _check_targets([out, raw_dir, report], args.force)
    try:
        from rich.console import Console

        from calibrate.device import select
        from calibrate.grids import grid
        from calibrate.runner import run_suites
    except ModuleNotFoundError as e:
        raise SimheteError(f"calibrate needs torch ({e.name} not installed): "
                           "from the simhete checkout, pip install -e '.[torch]'") from None
    target = select(args.device)
    g = grid("quick" if args.quick else "full", target.kind)
    if args.shapes_from:
        from calibrate.targets import scenario_shapes
        shapes = scenario_shapes(args.shapes_from, target.kind)
        g = dataclasses.replace(g, gemm_extra=tuple(shapes.gemm), attn_extra=tuple(shapes.attn),
                                shapes_from=tuple(shapes.files), block_scenarios=tuple(args.shapes_from))
    console = Console(stderr=True)
    console.print(f"calibrating {target.name} ({target.kind}), {g.level} grid, suites: "
                  f"{', '.join(suites)}")
    t0 = time.perf_counter()
    got: dict[str, Any] = {}

    def measure_and_fit(stage: Path) -> list[tuple[Path, Path]]:
        s_raw = stage / raw_dir.name
        s_raw.mkdir()
        run_suites(target, g, suites, s_raw, console, args.threads, args.passes)
        console.print(f"measured in {time.perf_counter() - t0:.1f} s; fitting")
        result = got["result"] = fit(s_raw, out.stem, stage)
        text = result.report
        if args.shapes_from and "blocks" in suites:
            from calibrate.targets import comparison
            text += "\n" + comparison(result.profile, args.shapes_from, target.kind)
        (stage / out.name).write_text(dump_profile(result.profile, f"{g.level} grid"))
        (stage / report.name).write_text(text)
        return [(s_raw, raw_dir), (stage / report.name, report), (stage / out.name, out)]

    stopped = _staged(out.parent, measure_and_fit)
    if stopped is not None:
        return stopped
    result = got["result"]
    _print_summary(result, report)
    print(f"wrote {out}, {raw_dir}/ and {report} in {time.perf_counter() - t0:.1f} s")
    return 0


def _print_summary(result: Any, report: Path) -> None:
    from simhete.commands._common import console
    if result.errors:
        console().print(fit_summary(result, report))
    else:
        print(f"no held-out points: the fit's error is not known (see {report})")


def _refit(raw_dir: Path, out: Path, force: bool, shapes_from: list[str]) -> int:
    """Refit raw CSVs; with ``shapes_from`` (the scenarios whose blocks the raw data measured)
    the report also compares each measured block with its op-level price (no torch needed)."""
    try:
        found = raw_dir.is_dir()
    except OSError as e:               # a name too long for the file system, a loop of links
        raise SimheteError(f"--refit {raw_dir}: {e.strerror}") from None
    if not found:
        raise SimheteError(f"--refit {raw_dir}: raw data directory not found")
    report = out.with_suffix(".fit.md")      # beside --out, as a full calibration writes it
    _check_targets([out, report], force)
    result = fit(raw_dir, out.stem, out.parent)
    text = result.report
    if shapes_from:
        from calibrate.targets import comparison
        kind = str(result.profile.get("device_type", "cuda"))
        text += "\n" + comparison(result.profile, shapes_from, kind)
    def write(stage: Path) -> list[tuple[Path, Path]]:
        (stage / out.name).write_text(dump_profile(result.profile, f"refit from {raw_dir.name}"))
        (stage / report.name).write_text(text)
        return [(stage / report.name, report), (stage / out.name, out)]

    stopped = _staged(out.parent, write)
    if stopped is not None:
        return stopped
    _print_summary(result, report)
    print(f"wrote {out} and {report} (refit from {raw_dir})")
    return 0
