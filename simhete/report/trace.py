"""Chrome / Perfetto trace JSON (Trace Event Format) of one or more Timelines.

Layout (see ``docs/reports.md``): a process per device (``gpu0``, ``cpu``, ``nvlink`` ...; the part
of a stream name before the first dot), a thread per stream, one complete event (``"ph": "X"``)
per record named by its task name with ``cat`` = TaskCat, and a counter track (``"ph": "C"``) per
memory pool with its bytes in use. Several timelines (e.g. ``simulated`` and ``measured``) become
separate process groups whose process names are prefixed with the timeline's label, so the same
task name appears once in each group. Output is byte-identical for identical inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from simhete.engine.timeline import Timeline
from simhete.fileio import write_atomic

US_DECIMALS = 3     # timestamps in µs rounded to ns, so float noise never changes the file


def device_of(name: str) -> str:
    """Device of a stream or pool name: ``gpu0.h2d`` -> ``gpu0``, ``cpu.optim`` -> ``cpu``."""
    return name.split(".", 1)[0]


def trace_events(timelines: Timeline | Mapping[str, Timeline]) -> dict[str, Any]:
    """The trace as a JSON-ready dict. A single Timeline gets unprefixed process names."""
    groups = {"": timelines} if isinstance(timelines, Timeline) else dict(timelines)
    events: list[dict[str, Any]] = []
    pid = 0
    for label, tl in groups.items():
        streams = list(dict.fromkeys(r.stream for r in tl.records))
        pools = sorted(tl.mem_events) + ([tl.oom.pool] if tl.oom is not None else [])
        devices = list(dict.fromkeys([device_of(s) for s in streams]
                                     + [device_of(p) for p in pools]))
        pids: dict[str, int] = {}
        for dev in devices:
            pid += 1
            pids[dev] = pid
            name = f"{label} {dev}" if label else dev
            events += [_meta("process_name", pid, None, {"name": name}),
                       _meta("process_sort_index", pid, None, {"sort_index": pid})]
        tids: dict[str, int] = {}
        for stream in streams:
            tid = tids[stream] = len(tids) + 1
            events += [_meta("thread_name", pids[device_of(stream)], tid, {"name": stream}),
                       _meta("thread_sort_index", pids[device_of(stream)], tid,
                             {"sort_index": tid})]
        for r in tl.records:
            ts, end = _us(r.start), _us(r.end)
            events.append({"ph": "X", "name": r.name, "cat": r.cat.value,
                           "pid": pids[device_of(r.stream)], "tid": tids[r.stream], "ts": ts,
                           "dur": round(end - ts, US_DECIMALS),
                           "args": {"it": r.it, "block": r.block}})
        for pool in sorted(tl.mem_events):
            events += [{"ph": "C", "name": f"mem {pool}", "pid": pids[device_of(pool)],
                        "ts": _us(t), "args": {"bytes": n}} for t, n in tl.mem_events[pool]]
        if tl.oom is not None:
            events.append({"ph": "i", "s": "g", "name": "out of memory",
                           "pid": pids[device_of(tl.oom.pool)], "tid": 0,
                           "ts": _us(tl.oom.time), "args": {"message": tl.oom.message()}})
    return {"displayTimeUnit": "ms", "traceEvents": events}


def write_trace(path: str | Path, timelines: Timeline | Mapping[str, Timeline]) -> Path:
    """Write :func:`trace_events` as compact JSON with sorted keys; open it in ui.perfetto.dev or
    chrome://tracing. Returns the path."""
    path = Path(path)
    write_atomic(path, json.dumps(trace_events(timelines), sort_keys=True, separators=(",", ":")) + "\n", "--trace")
    return path


def _meta(name: str, pid: int, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": args}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _us(seconds: float) -> float:
    return round(seconds * 1e6, US_DECIMALS)
