"""Facts about the host, read from the OS (no torch): shared by calibrate/ and replay/."""

from __future__ import annotations

import os
import platform


def host_cpu() -> str:
    """CPU model name from /proc/cpuinfo, falling back to platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_bytes() -> int:
    """Physical host memory (sysconf pages × page size)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _proc_kib(path: str, field: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mem_available_bytes() -> int:
    """What can be allocated without swapping: MemAvailable (/proc/meminfo), else free pages."""
    avail = _proc_kib("/proc/meminfo", "MemAvailable")
    if avail is not None:
        return avail
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def process_rss_bytes() -> int | None:
    """Resident memory of this process (VmRSS, /proc/self/status), None where unavailable."""
    return _proc_kib("/proc/self/status", "VmRSS")


def process_limit() -> tuple[int, str] | None:
    """How much more this process may allocate under its own resource limits, and which limit
    that is: ``RLIMIT_AS`` (``ulimit -v``, the whole address space) less what is already mapped
    (VmSize, /proc/self/status), and ``RLIMIT_DATA`` (``ulimit -d``: heap and private anonymous
    mappings, which is where tensors live) less VmData; the smaller of the two. ``None`` when
    neither limit is set (or the platform has neither). An address-space limit counts virtual
    memory, not resident pages: thread stacks and allocator arenas count in full."""
    try:
        import resource
    except ImportError:                 # not a POSIX platform
        return None
    best: tuple[int, str] | None = None
    for name, field, how in (("RLIMIT_AS", "VmSize", "the address-space limit RLIMIT_AS (ulimit -v)"),
                             ("RLIMIT_DATA", "VmData", "the data-segment limit RLIMIT_DATA (ulimit -d)")):
        rl = getattr(resource, name, None)
        if rl is None:
            continue
        soft, _hard = resource.getrlimit(rl)
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        used = _proc_kib("/proc/self/status", field) or 0
        left = max(0, soft - used)
        text = f"{how} of {_gib(soft)}, {_gib(used)} of it already in use ({field})"
        if best is None or left < best[0]:
            best = (left, text)
    return best


def allocatable_bytes() -> tuple[int, str]:
    """What this process can still allocate on the host, and where that figure comes from: the
    smaller of MemAvailable (:func:`mem_available_bytes`) and :func:`process_limit`."""
    avail = mem_available_bytes()
    lim = process_limit()
    if lim is not None and lim[0] < avail:
        return lim
    return avail, "MemAvailable, /proc/meminfo"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
