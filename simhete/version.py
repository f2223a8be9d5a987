"""Which simhete produced a result: the version plus a fingerprint of the simulator's own source.

Sweep stores record it so that resuming after a code change (a new cost model, a policy fix)
cannot silently mix results of two simulators.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from simhete import __version__

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """``<version>+<sha256 of every .py file of the package, by relative path>`` (first 12 hex)."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE.rglob("*.py")):
        h.update(p.relative_to(PACKAGE).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"
