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
