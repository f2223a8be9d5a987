"""Where the replay runs: the CPU standing in for the device, or a CUDA GPU with real streams.

Both share one interface so the executor has a single code path:

- ``stream(name)``: context in which a task's work is issued. On CUDA each schedule stream
  (``gpu0.compute``, ``gpu0.h2d``, ``gpu0.d2h``) is its own ``torch.cuda.Stream``; on the CPU it
  is a no-op (the CPU runs one task at a time on all its cores).
- ``wait(deps)``: make the current stream wait for ``deps`` (``stream.wait_event`` on CUDA).
- ``begin``/``end``: the task's timing marks — ``torch.cuda.Event(enable_timing=True)`` pairs on
  CUDA, ``time.perf_counter`` on the CPU — read back as seconds since ``start`` by ``times``. On
  the CPU they also read the running thread's CPU time (``time.thread_time``): ``cpu_seconds``
  gives it per task, so a measurement can say how much of a task's wall time its thread actually
  ran (the rest it waited for a core: other processes, or the replay's other streams).
- ``host_empty``: a host buffer, page-locked (``pin_memory``) where the schedule says pinned and
  the device is CUDA (pinning means nothing when the CPU is the device).
- ``keep_alive``: tell CUDA's caching allocator that a tensor is used on another stream
  (``record_stream``), so freeing it never lets a pending copy read reused memory.
- ``free_bytes``/``peak_bytes``: the safety check before allocating and the measured peak.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import torch

from simhete.errors import SimheteError
from simhete.hostinfo import allocatable_bytes, host_cpu

CPU_STREAM = "cpu.optim"


class Device:
    """The CPU as the device: synchronous, one task at a time, timed with a monotonic clock."""

    kind = "cpu"

    def __init__(self) -> None:
        self.dev = torch.device("cpu")
        self._t0 = 0.0
        self._marks: dict[str, tuple[float, float]] = {}
        self._cpu: dict[str, float] = {}

    @property
    def name(self) -> str:
        return f"{host_cpu()} ({os.cpu_count()} logical cores, torch {torch.__version__}, " \
               f"{torch.get_num_threads()} threads)"

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        """Host seconds since :meth:`start`."""
        return time.perf_counter() - self._t0

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[None]:
        yield

    def wait(self, deps: list[str]) -> None:
        pass

    def begin(self, task: str) -> object:
        return time.perf_counter(), time.thread_time()

    def end(self, task: str, mark: object) -> None:
        cpu = time.thread_time()
        t0, c0 = mark  # type: ignore[misc]
        self._marks[task] = (t0, time.perf_counter())
        self._cpu[task] = cpu - c0

    def times(self) -> dict[str, tuple[float, float]]:
        """Per task: (start, end) in seconds since :meth:`start`."""
        return {k: (a - self._t0, b - self._t0) for k, (a, b) in self._marks.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """Per task timed by :meth:`begin`/:meth:`end` on the host: CPU seconds its thread ran."""
        return dict(self._cpu)

    def host_empty(self, like: torch.Tensor, pinned: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.empty(like.shape, dtype=dtype or like.dtype, device="cpu")

    def keep_alive(self, t: torch.Tensor, stream: str) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def host_free(self) -> tuple[int, str]:
        """What this process may still allocate on the host and where that figure comes from:
        the smaller of MemAvailable and its own resource limits (simhete.hostinfo)."""
        return allocatable_bytes()

    def free_bytes(self) -> dict[str, int]:
        """Free memory per pool. The CPU device and the host are the same memory."""
        free = self.host_free()[0]
        return {"gpu0": free, "cpu": free}

    def peak_bytes(self) -> int | None:
        """No allocator statistics on the CPU: the executor's own tensor accounting is used."""
        return None


class CudaDevice(Device):
    """A CUDA GPU: one torch stream per schedule stream, events for dependencies and timing."""

    kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.dev = torch.device("cuda", index)
        self._streams: dict[str, torch.cuda.Stream] = {}
        self._done: dict[str, torch.cuda.Event] = {}      # task -> event recorded at its end
        self._events: dict[str, tuple[torch.cuda.Event, torch.cuda.Event]] = {}
        self._host: dict[str, tuple[float, float]] = {}   # host-run tasks (CPU Adam)
        self._base: torch.cuda.Event | None = None

    @property
    def name(self) -> str:
        p = torch.cuda.get_device_properties(self.dev)
        return f"{p.name} (CUDA {torch.version.cuda}, torch {torch.__version__})"

    def start(self) -> None:
        torch.cuda.synchronize(self.dev)
        torch.cuda.reset_peak_memory_stats(self.dev)
        self._base = torch.cuda.Event(enable_timing=True)
        self._base.record(torch.cuda.current_stream(self.dev))
        torch.cuda.synchronize(self.dev)
        self._t0 = time.perf_counter()

    def cuda_stream(self, name: str) -> torch.cuda.Stream:
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = torch.cuda.Stream(self.dev)
        return s

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[None]:
        with torch.cuda.stream(self.cuda_stream(name)):
            yield

    def wait(self, deps: list[str]) -> None:
        cur = torch.cuda.current_stream(self.dev)
        for d in deps:
            ev = self._done.get(d)
            if ev is not None:
                cur.wait_event(ev)

    def wait_host(self, deps: list[str]) -> None:
        """Block the calling host thread until the device tasks ``deps`` have finished."""
        for d in deps:
            ev = self._done.get(d)
            if ev is not None:
                ev.synchronize()

    def begin(self, task: str) -> object:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.dev))
        return ev

    def end(self, task: str, mark: object) -> None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.dev))
        self._events[task] = (mark, ev)  # type: ignore[assignment]
        self._done[task] = ev

    def host_task(self, task: str, start: float, end: float) -> None:
        """Record a task that ran on the host (perf_counter stamps)."""
        self._host[task] = (start, end)

    def times(self) -> dict[str, tuple[float, float]]:
        torch.cuda.synchronize(self.dev)
        assert self._base is not None
        out = {k: (self._base.elapsed_time(a) * 1e-3, self._base.elapsed_time(b) * 1e-3)
               for k, (a, b) in self._events.items()}
        out.update({k: (a - self._t0, b - self._t0) for k, (a, b) in self._host.items()})
        return out

    def host_empty(self, like: torch.Tensor, pinned: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.empty(like.shape, dtype=dtype or like.dtype, device="cpu", pin_memory=pinned)

    def keep_alive(self, t: torch.Tensor, stream: str) -> None:
        if t.is_cuda:
            t.record_stream(self.cuda_stream(stream))

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.dev)

    def free_bytes(self) -> dict[str, int]:
        free, _total = torch.cuda.mem_get_info(self.dev)
        return {"gpu0": int(free), "cpu": self.host_free()[0]}

    def peak_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.dev))


def open_device(requested: str) -> Device:
    """``cpu`` or ``cuda``; asking for CUDA without one is a clean one-line refusal."""
    if requested == "cpu":
        return Device()
    if requested == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "torch.cuda.is_available() is False")
            raise SimheteError(f"--device cuda: no GPU to replay on ({why}); use --device cpu with a "
                               "CPU-device profile from `simhete calibrate --device cpu`")
        return CudaDevice()
    raise SimheteError(f"--device: bad value {requested!r}; allowed: cpu, cuda")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(peak: dict[str, int], device: Device) -> tuple[int, str]:
    """Refuse, before allocating anything, a replay whose predicted peak exceeds free memory.

    On the CPU device the "device" pool and the host pool are the same RAM, so their peaks add up
    against what the host can still give this process: the smaller of MemAvailable and the
    process's own limits (RLIMIT_AS less VmSize, RLIMIT_DATA less VmData; see
    :func:`simhete.hostinfo.allocatable_bytes`). On CUDA the device pool is checked against
    ``torch.cuda.mem_get_info`` and the host pool against that same host figure. Returns that
    host figure and where it comes from (for :func:`out_of_memory`'s message).
    """
    from simhete.replay.state import ReplayError

    free = device.free_bytes()
    how = device.host_free()[1]
    dev_peak, host_peak = int(peak.get("gpu0", 0)), int(peak.get("cpu", 0))
    if device.kind == "cpu":
        if dev_peak + host_peak > free["cpu"]:
            raise ReplayError(
                f"replay refused: the schedule's predicted peak ({gib(dev_peak)} device + "
                f"{gib(host_peak)} host) exceeds the {gib(free['cpu'])} available on this CPU "
                f"({how}): raise the limit or scale the scenario's replay: section down")
        return free["cpu"], how
    if dev_peak > free["gpu0"]:
        raise ReplayError(f"replay refused: the schedule's predicted device peak {gib(dev_peak)} exceeds "
                          f"the {gib(free['gpu0'])} free on {device.name} (torch.cuda.mem_get_info); "
                          "scale the scenario's replay: section down")
    if host_peak > free["cpu"]:
        raise ReplayError(f"replay refused: the schedule's predicted host peak {gib(host_peak)} exceeds "
                          f"the {gib(free['cpu'])} available ({how}): raise the limit or scale the "
                          "scenario's replay: section down")
    return free["cpu"], how


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed: Python's MemoryError (also C++ ``std::bad_alloc``
    through pybind11), torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory") and
    CUDA allocator ("CUDA out of memory", torch.OutOfMemoryError), or a thread whose stack could
    not be mapped ("can't start new thread", what an address-space limit gives)."""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, RuntimeError):
        m = str(e)
        return ("can't allocate memory" in m or "out of memory" in m.lower()
                or "can't start new thread" in m)
    return False


@contextlib.contextmanager
def out_of_memory(what: str, peak: dict[str, int], host: tuple[int, str]) -> Iterator[None]:
    """Turn an allocation that fails inside the block into one line (a ReplayError) naming the
    prediction and the memory the process had when it started, instead of a traceback."""
    from simhete.replay.state import ReplayError

    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        import re
        m = re.search(r"tried to allocate (\d+) bytes", str(e))
        why = (f"an allocation of {int(m.group(1)) / 2**20:.1f} MiB failed" if m
               else (str(e).strip().splitlines() or [type(e).__name__])[0][:160])
        raise ReplayError(
            f"{what} ran out of memory ({why}): the simulator predicted a peak of "
            f"{gib(int(peak.get('gpu0', 0)))} device + {gib(int(peak.get('cpu', 0)))} host and "
            f"{gib(host[0])} was available ({host[1]}); memory a task needs only while it runs "
            "is not in the prediction: raise the limit or scale the scenario's replay: section "
            "down") from None
