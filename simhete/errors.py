"""User-facing errors: one line, naming the file, the dotted key, the bad value and what is allowed.

The CLI catches :class:`SimheteError` and prints ``str(err)`` with exit code 2, no traceback.
"""

from __future__ import annotations

from typing import Any


class SimheteError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits 2."""


class ConfigError(SimheteError):
    """A bad value in a config file (scenario, profile, sweep, DeepSpeed JSON)."""

    def __init__(self, file: str | None, key: str | None, value: Any = None, allowed: str = "",
                 *, problem: str | None = None) -> None:
        self.file, self.key, self.value, self.allowed, self.problem = file, key, value, allowed, problem
        where = f"{file}: " if file else ""
        at = f"{key}: " if key else ""
        if problem is not None:
            msg = f"{where}{at}{problem}"
        else:
            shown = repr(value)
            if len(shown) > 100:          # a long value is named by its start and length
                shown = f"{shown[:60]}... ({len(shown)} characters)"
            msg = f"{where}{at}bad value {shown}"
            if allowed:
                msg += f"; allowed: {allowed}"
        super().__init__(" ".join(msg.split()))  # always one line


class OutOfMemory(SimheteError):
    """The schedule can never proceed: a task waits for memory that nothing will free."""
