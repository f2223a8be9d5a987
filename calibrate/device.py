"""Which device is measured, and the provenance written at the top of every raw CSV file."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

import torch

from simhete.errors import SimheteError
from simhete.hostinfo import host_cpu, host_memory_bytes

DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class Target:
    """The device under test. ``kind`` is ``cuda`` or ``cpu`` (the CPU then stands in for the GPU)."""

    kind: str
    device: torch.device
    name: str
    driver: str
    memory_bytes: int
    gpu_count: int

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def sync(self) -> None:
        """Wait for all queued device work (a no-op on the CPU, where torch ops are synchronous)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def select(requested: str) -> Target:
    """``auto`` picks CUDA when available; asking for ``cuda`` without it is a clean refusal."""
    if requested not in DEVICES:
        raise SimheteError(f"--device: bad value {requested!r}; allowed: {', '.join(DEVICES)}")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no GPU visible or driver problem)")
        raise SimheteError(f"--device cuda: cannot calibrate a GPU here: {why}; "
                           "use --device cpu to calibrate the CPU as the device")
    if requested == "cuda" or (requested == "auto" and has_cuda):
        props = torch.cuda.get_device_properties(0)
        return Target("cuda", torch.device("cuda", 0), props.name, _cuda_driver(),
                      int(props.total_memory), torch.cuda.device_count())
    return Target("cpu", torch.device("cpu"), f"{host_cpu()} ({os.cpu_count()} logical cores)",
                  "n/a (CPU device)", host_memory_bytes(), 0)


def _cuda_driver() -> str:
    """NVIDIA driver version (nvidia-smi) and the CUDA runtime torch was built with."""
    drv = "unknown"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True)
            drv = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return f"driver {drv}, CUDA {torch.version.cuda}"


def provenance(target: Target, suite: str, methodology: dict[str, object]) -> dict[str, str]:
    """Header lines of a raw CSV: what was measured, on what, with which software, when, and how."""
    meta: dict[str, str] = {
        "suite": suite,
        "device_type": target.kind,
        "device": target.name,
        "driver": target.driver,
        "torch": torch.__version__,
        "host": platform.node(),
        "host_cpu": host_cpu(),
        "host_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    meta.update({k: str(v) for k, v in methodology.items()})
    return meta


def l2_bytes(target: Target) -> int:
    """The device's L2 cache per core (CPU, from sysfs) or per GPU (CUDA device properties);
    2 MiB when it cannot be read."""
    if target.is_cuda:
        try:
            return int(torch.cuda.get_device_properties(target.device).L2_cache_size) or 2 << 20
        except (RuntimeError, AttributeError):
            return 2 << 20
    return _cpu_caches().get(2, 2 << 20)


def llc_bytes(target: Target) -> int:
    """The host CPU's last-level cache (the highest level sysfs lists for cpu0, e.g. a shared L3);
    64 MiB when it cannot be read. Only meaningful for a CPU target."""
    caches = _cpu_caches()
    return caches[max(caches)] if caches else 64 << 20


def _cpu_caches() -> dict[int, int]:
    """{level: bytes} of cpu0's data/unified caches from sysfs; {} when it cannot be read."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    out: dict[int, int] = {}
    try:
        for idx in sorted(os.listdir(base)):
            if not idx.startswith("index"):
                continue
            with open(f"{base}/{idx}/type") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(f"{base}/{idx}/level") as f:
                level = int(f.read().strip())
            with open(f"{base}/{idx}/size") as f:
                text = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            out[level] = int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        return {}
    return out
