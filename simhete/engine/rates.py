"""The fluid interference model's arithmetic, shared by both engines so their floats agree bit for bit.

A task on stream ``v`` progresses at rate ``1/f`` where ``f`` is the largest factor of a rule whose
victim glob matches ``v`` and whose aggressor glob matches a stream (other than ``v``) that is
running a task; ``f = 1`` if none. Work is measured in full-speed seconds. Both engines compute a
projected finish as ``now + delay(remaining, f)`` (SimPy does that addition inside
``env.timeout``) and, when ``f`` changes, ``advance`` the remaining work first.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from simhete.errors import SimheteError

Interference = tuple[tuple[str, str, float], ...]


def interference_matrix(streams: Sequence[str], rules: Iterable[tuple[str, str, float]]
                        ) -> tuple[tuple[float, ...], ...]:
    """``m[v][a]``: slowdown of stream ``v`` while stream ``a`` runs (1.0 when no rule matches)."""
    m = [[1.0] * len(streams) for _ in streams]
    for k, rule in enumerate(rules):
        try:
            victim, aggressor, factor = rule
            factor = float(factor)
        except (TypeError, ValueError):
            raise SimheteError(f"interference[{k}]: expected (victim_glob, aggressor_glob, factor), "
                               f"got {rule!r}") from None
        if not (math.isfinite(factor) and factor >= 1.0):
            raise SimheteError(f"interference[{k}]: factor {factor!r} must be a finite number >= 1")
        for v, sv in enumerate(streams):
            if not fnmatchcase(sv, victim):
                continue
            for a, sa in enumerate(streams):
                if a != v and fnmatchcase(sa, aggressor) and factor > m[v][a]:
                    m[v][a] = factor
    return tuple(tuple(row) for row in m)


def slowdown(row: Sequence[float], busy: Iterable[int]) -> float:
    """``f`` for a victim whose matrix row is ``row`` while the streams in ``busy`` run."""
    f = 1.0
    for a in busy:
        if row[a] > f:
            f = row[a]
    return f


def delay(remaining: float, f: float) -> float:
    """Seconds until ``remaining`` full-speed work is done at rate ``1/f``."""
    return remaining * f


def advance(remaining: float, dt: float, f: float) -> float:
    """Work left after running ``dt`` seconds at rate ``1/f`` (never below zero)."""
    r = remaining - dt / f
    return r if r > 0.0 else 0.0
