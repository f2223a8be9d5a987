"""`simhete` command line: a thin dispatcher over simhete/commands/*.

Any :class:`SimheteError` (bad config, unknown name, out of memory where that is an error) is
printed as one line on stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from simhete import __version__
from simhete.errors import SimheteError

COMMANDS = ["demo", "simulate", "compare", "calibrate", "validate", "sweep", "plan"]


def _shorten(msg: str, limit: int = 1000) -> str:
    """A message over ``limit`` characters with each word of 100 characters or more shown by its
    start and length (a long bad value quoted whole would bury the message)."""
    if len(msg) <= limit:
        return msg

    def short(m: re.Match[str]) -> str:
        word, tail = m.group(1), m.group(2)      # tail: the punctuation that ends it (a file's colon)
        return f"{word[:40]}... ({len(word)} characters){tail}"
    return re.sub(r"(\S{100,}?)([:;,]?)(?=\s|$)", short, msg)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error (``simhete: error:
    simulate: argument --engine: invalid choice: ...; see simhete simulate --help``), exit 2,
    instead of the usage block followed by the error. A word of 100 characters or more (a value
    pasted by mistake) is shortened to its start and length."""

    def error(self, message: str) -> None:  # type: ignore[override]
        msg = _shorten(" ".join(message.split()), 0)
        command = self.prog.removeprefix("simhete").strip()
        self.exit(2, f"simhete: error: {command + ': ' if command else ''}{msg}; see {self.prog} --help\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser. ``only``: the command being run; only its module is imported (the others are
    listed by name), since some import heavy libraries (calibrate: scipy.optimize, ~1 s of CPU)
    that every other command would otherwise pay for at start-up. ``None``: every command's module,
    for ``simhete --help`` and for a name that is not a command; ``""``: none."""
    p = _Parser(prog="simhete", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"simhete {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name.replace("_", "-"))
            continue
        try:
            mod = importlib.import_module(f"simhete.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"simhete.commands.{name}":
                continue  # not built yet
            raise
        sp = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    # numpy's OpenBLAS starts a worker thread per core that spins for ~0.1 s of CPU right after
    # numpy is imported (measured 2026-11-22: import 0.2 s -> 0.12 s CPU); the simulator does
    # no BLAS work worth a thread (calibration times GEMMs with torch, which has its own threads),
    # so the command runs single-threaded BLAS unless the user asked otherwise
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)   # the top level has no valued options
    if command in COMMANDS:
        only = command
    elif command is None and not {"-h", "--help"} & set(argv):
        only = ""                     # --version, or no command at all: no command's module needed
    else:
        only = None                   # the help lists every command; a wrong name lists the choices
    args = build_parser(only).parse_args(argv)
    from simhete.fileio import reset_inputs
    reset_inputs()                    # the inputs of this command, which no output may replace
    try:
        return int(args._run(args) or 0)
    except SimheteError as e:
        print(f"simhete: error: {_shorten(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simhete: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
