"""Memory bookkeeping both engines report the same way: breakdowns by class and the OOM report."""

from __future__ import annotations

from dataclasses import replace

from typing import Iterable

from simhete.engine.timeline import OOMReport, Timeline
from simhete.errors import SimheteError
from simhete.opkinds import MemClass

CLASSES: tuple[MemClass, ...] = tuple(MemClass)
CLASS_INDEX = {c: k for k, c in enumerate(CLASSES)}
CLASS_VALUES: tuple[str, ...] = tuple(c.value for c in CLASSES)   # an Enum's .value runs Python code


def by_class(counts: Iterable[int]) -> dict[str, int]:
    """Per-class byte counts (indexed like ``CLASSES``) as ``{class value: bytes}``, zeros left out."""
    return {v: n for v, n in zip(CLASS_VALUES, counts) if n}


def oom_report(task: str, pool: str, asked: int, in_use: int, capacity: int,
               live: Iterable[tuple[str, str, int]], time: float) -> OOMReport:
    """``live``: (buffer, pool, bytes) of every resident buffer; holders are those in ``pool``."""
    held = sorted(((b, n) for b, p, n in live if p == pool), key=lambda x: (-x[1], x[0]))
    return OOMReport(task, pool, asked, capacity - in_use, capacity, tuple(held[:10]), time)


def double_alloc(task: str, buf: str) -> SimheteError:
    return SimheteError(f"task {task} allocates buffer {buf}, which is still live")


def free_unknown(task: str, buf: str) -> SimheteError:
    return SimheteError(f"task {task} frees buffer {buf}, which is not live")


def stuck(unfinished: Iterable[str], time: float) -> SimheteError:
    names = list(unfinished)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return SimheteError(f"at t={time:.6f}s nothing runs and no task is ready although {len(names)} "
                        f"remain ({shown}); the dependency graph has a cycle")


def pool_needs(allocs: Iterable) -> tuple[tuple[str, int], ...]:
    """Bytes a task asks per pool, pools in order of first appearance among its allocs."""
    need: dict[str, int] = {}
    for a in allocs:
        need[a.pool] = need.get(a.pool, 0) + a.bytes
    return tuple(need.items())


def initial_overflow(schedule) -> OOMReport | None:
    """An OOMReport if the initial buffers alone do not fit their pools (first such pool), else None
    (their pools are known: :func:`~simhete.engine.inputs.check_initial_pools` comes first)."""
    held = dict.fromkeys(schedule.pools, 0)
    for a in schedule.initial:
        held[a.pool] += a.bytes
    for pool, cap in schedule.pools.items():
        if held[pool] > cap:
            mine = [a for a in schedule.initial if a.pool == pool]
            by_class: dict[str, int] = {}
            for a in mine:
                v = a.cls._value_               # an Enum's .value runs Python code
                by_class[v] = by_class.get(v, 0) + a.bytes
            rep = oom_report("(initial)", pool, held[pool], 0, cap, [(a.buf, a.pool, a.bytes) for a in mine], 0.0)
            return replace(rep, by_class=tuple(sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0]))))
    return None


def empty_timeline(schedule, oom: OOMReport, engine: str) -> Timeline:
    """The Timeline of a schedule whose initial buffers already overflow a pool: nothing ran."""
    pools = list(schedule.pools)
    return Timeline((), {p: () for p in pools}, dict.fromkeys(pools, 0), {p: {} for p in pools},
                    oom, engine=engine)
