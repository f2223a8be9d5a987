"""Helpers shared by commands: engine flag, safe output writing, console."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from simhete.errors import SimheteError

if TYPE_CHECKING:
    from rich.console import Console

ENGINES = ("fast", "simpy")


def console() -> Console:
    """The terminal's width (80 where it cannot be told, e.g. a pipe; COLUMNS overrides): tables
    wrap their cells and split their columns to fit it."""
    from rich.console import Console    # imported when a command prints for a terminal (--json does not)

    return Console(highlight=False, soft_wrap=False)


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="fast",
                   help="fast (default) or simpy, the reference engine; both give identical timelines")


def check_writable(path: str | None, flag: str) -> Path | None:
    """Fail early (before any work) if an output path cannot be written."""
    if path is None:
        return None
    from simhete.fileio import check_not_input

    if "\0" in path:
        raise SimheteError(f"{flag} {path!r}: a file name cannot hold a NUL byte")
    p = Path(path)
    try:
        is_dir = p.is_dir()
    except OSError as e:                # a name too long for the file system, a loop of links
        raise SimheteError(f"{flag} {path}: {e.strerror}") from None
    if is_dir:
        raise SimheteError(f"{flag} {path}: is a directory; give a file path")
    check_not_input(p, flag)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SimheteError(f"{flag} {path}: cannot create directory {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise SimheteError(f"{flag} {path}: directory {parent} is not writable")
    return p


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set train.micro_batch=8 --set knobs.checkpointing=full "
                        "(VALUE is read as YAML; repeatable)")


def apply_sets(scenario, sets: list[str]):
    """Apply ``--set key=value`` overrides (values parsed as YAML) and re-validate."""
    from simhete.config import parse_yaml
    from simhete.errors import ConfigError

    if not sets:
        return scenario
    changes = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SimheteError(f"--set {item!r}: expected KEY=VALUE, e.g. train.micro_batch=8")
        try:      # the input layer's bounds (depth, aliases, duplicate keys) hold for --set too
            changes[key.strip()] = parse_yaml(value, None)
        except ConfigError as e:
            short = item if len(item) <= 60 else item[:57] + "..."
            raise SimheteError(f"--set {short!r}: VALUE is not valid YAML ({e.problem})") from None
    return scenario.with_changes(**changes)


TITLE_KEYS = ("model", "hardware", "policy")


def run_title(result, sets: list[str]) -> str:  # type: ignore[no-untyped-def]
    """The title of a run's table and plot: the scenario's name, unless ``--set`` changed what the
    name describes (model, hardware or policy): then the resolved model, hardware (with its GPU
    count when more than one) and policy, e.g. ``llama3-8b on h100-sxm, zero-offload``."""
    keys = {item.partition("=")[0].strip().split(".")[0] for item in sets}
    if not keys & set(TITLE_KEYS):
        return result.scenario.name
    ctx = result.context
    gpus = ctx.profile.gpu.count
    return f"{ctx.spec.name} on {ctx.profile.name}{f' x{gpus}' if gpus > 1 else ''}, {result.scenario.data.policy}"


class StopOnSignals:
    """While a long command runs, SIGTERM raises ``stop(signum)`` in the main thread (Ctrl-C raises
    KeyboardInterrupt as always), so the command stops where it is and cleans up; ``hold()`` then
    ignores both while it finishes the cleanup (outputs moved into place, a staging folder removed,
    workers shut down). The previous handlers come back on exit. Off the main thread, where
    handlers cannot be installed, it does nothing."""

    def __init__(self, stop: "Callable[[int], BaseException]") -> None:
        self.stop = stop

    def __enter__(self) -> "StopOnSignals":
        import signal
        import threading

        def on_term(signum, frame):  # type: ignore[no-untyped-def]
            raise self.stop(signum)
        self.active = threading.current_thread() is threading.main_thread()   # signals need it
        if self.active:
            self.saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            signal.signal(signal.SIGTERM, on_term)
        return self

    def hold(self) -> None:
        import signal
        if self.active:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        import signal
        if self.active:
            for s, h in self.saved.items():
                signal.signal(s, h)

