"""The remembered derived data that is not kept on the object it derives from.

Data derived from one immutable object lives on that object and dies with it (a profile's
``pricing`` and ``memo``, a schedule's ``derived``, a schedule structure's ``derived``, a
workload's ``derived``). What is shared between objects — a policy's structure for every point of
its structure key, interference matrices per stream list — is kept here, keyed by content
(hashable values that are equal exactly when the derived data is), each cache bounded, and
:func:`clear` forgets all of it (benchmarks and tests start afresh).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

_ALL: list = []


class Lru(OrderedDict):
    """A content-keyed mapping of at most ``size`` entries, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        _ALL.append(self)

    def recall(self, key: Any) -> Any:
        """The value of ``key`` (now the most recently used), or ``None``."""
        got = self.get(key)
        if got is not None:
            self.move_to_end(key)
        return got

    def keep(self, key: Any, value: Any) -> Any:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class Bounded(dict):
    """A content-keyed mapping of at most ``size`` entries: emptied when full (for lookups too
    frequent to pay for recency)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        _ALL.append(self)

    def keep(self, key: Any, value: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


# -- the engine (simhete.engine.indexed) ------------------------------------------------------
# (stream names, interference rules) -> the stream-by-stream slowdown matrix
MATRICES = Bounded(256)


# -- the policies (simhete.policy.base, simhete.policy.structures) ------------------------------
# (policy class, Policy.structure_key) -> that key's structure and the schedules bound from it; a
# sweep visits its structures in turn
POLICY_STRUCTURES = Lru(64)
# digest of an AutoHete MILP (simhete.policy.autohete_milp.Milp.content) -> the rounded solution
# HiGHS proved optimal, or NO_PLAN when it proved that no plan fits
MILP_SOLUTIONS = Lru(1024)
# ZeRO-1/2 (simhete.policy.zero_offload_buckets): (bucket bytes, the rank's own bytes, whether the
# bucket spans several ranks' partitions) -> a rank's GPU passes over a bucket; (tensor pieces,
# bytes per element 16/32-bit, pinned) -> the boundary's per-tensor ops
BUCKET_PASSES = Bounded(4096)
BUCKET_BOUNDARY = Bounded(4096)
# (policy, its process-memory knobs, model, dtype, GPUs, accumulation, GPU reserve, ideal host
# bytes) -> the buffers a real process holds beyond the ideal states (simhete.policy.process_memory)
PROCESS_BUFFERS = Bounded(1024)
# (kind name, n, pinned, dtype) -> the one Op / one-Op tuple of those fields, shared by every build
SHARED_OPS = Bounded(1 << 16)
SHARED_ONE = Bounded(1 << 16)

# how many times clear() ran: data kept on a long-lived object (a profile, which the loader
# caches) records the generation it was made in and is made afresh after a clear()
generation = 0


def clear() -> None:
    """Forget everything every cache of this module holds, and what long-lived objects keep."""
    global generation
    generation += 1
    for c in _ALL:
        c.clear()
