"""Where sweep points run. A backend only maps :func:`evaluate_chunk` over chunks of points and
yields each chunk's rows as soon as it is done (in completion order); everything else — building
points, skipping finished ones, writing results, strategies — is one code path in
:mod:`simhete.search.runner`.

- ``local`` (default): ``workers`` forked worker processes (``workers = 1`` runs in-process).
- ``ray``: Ray tasks on the cluster at ``address`` (or a local Ray instance started with
  ``workers`` CPUs when no address is given). Needs the ``ray`` extra.
"""

from __future__ import annotations

import gc
import multiprocessing
import signal
from multiprocessing import connection
from functools import partial
from typing import Any, Iterable, Iterator, Protocol, Sequence

from simhete.errors import SimheteError
from simhete.search.evaluate import Row, evaluate_chunk

Chunk = Sequence[tuple[str, int, dict[str, Any], Any]]
BACKENDS = ("local", "ray")


class Backend(Protocol):
    workers: int

    def map(self, chunks: Iterable[Chunk], engine: str) -> Iterator[list[Row]]: ...

    def close(self) -> None: ...


class Stopped(BaseException):
    """The sweep was asked to stop (SIGTERM; Ctrl-C is KeyboardInterrupt). A BaseException, so
    that no ``except Exception`` on the way (a point's evaluation) takes it for a failed point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class LocalBackend:
    """``workers`` forked processes, each fed one chunk at a time through a pipe of its own.

    Not ``multiprocessing.Pool``: its workers share one task-queue lock, and a worker killed while
    waiting for a task (SIGTERM or Ctrl-C sent to the process group) dies holding it, after which
    the pool's shutdown waits for it forever. Here nothing is shared: a worker ignores SIGINT
    (the sweep process handles Ctrl-C and stops the workers), dies silently of SIGTERM, and leaves
    quietly (no traceback) when the sweep process is gone (end of file on its pipe, or a broken
    pipe when it sends its rows)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._procs: list[tuple[Any, Any]] = []     # (process, the sweep's end of its pipe)
        if self.workers > 1:
            # fork: workers inherit the imported simulator (no re-import per worker); started now,
            # before any progress-bar thread exists
            ctx = multiprocessing.get_context("fork")
            for _ in range(self.workers):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(theirs, [c for _, c in self._procs] + [ours]),
                                   daemon=True, name="simhete-sweep-worker")
                proc.start()
                theirs.close()
                self._procs.append((proc, ours))

    def map(self, chunks: Iterable[Chunk], engine: str) -> Iterator[list[Row]]:
        if not self._procs:
            return map(partial(evaluate_chunk, engine=engine), chunks)
        return self._map(iter(chunks), engine)

    def _map(self, chunks: Iterator[Chunk], engine: str) -> Iterator[list[Row]]:
        idle = list(reversed(range(len(self._procs))))
        busy: dict[Any, int] = {}               # pipe end → worker

        def feed(k: int) -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                idle.append(k)
                return False
            conn = self._procs[k][1]
            try:
                conn.send((chunk, engine))
            except OSError:                      # BrokenPipeError: the worker is gone
                self._died(k)
            busy[conn] = k
            return True

        while idle and feed(idle.pop()):
            pass
        while busy:
            for conn in connection.wait(list(busy)):
                k = busy.pop(conn)
                try:
                    ok, out = conn.recv()
                except (EOFError, OSError):
                    self._died(k)
                feed(k)                          # the worker's next chunk, before the rows go on
                if not ok:
                    raise SimheteError(f"sweep worker failed outside any point: {out}")
                yield out

    def _died(self, k: int) -> None:
        proc = self._procs[k][0]
        proc.join(5)
        code = proc.exitcode
        if code is not None and code < 0 and -code in (signal.SIGTERM, signal.SIGINT):
            raise Stopped(-code)                 # the process group is being stopped
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise SimheteError(f"a sweep worker process died ({how}; SIGKILL is often the kernel's "
                           "out-of-memory killer): the points it held are not stored, --resume runs them")

    def close(self) -> None:
        procs, self._procs = self._procs, []
        for proc, conn in procs:                 # SIGTERM: a worker dies where it is, silently
            if proc.exitcode is None:
                proc.terminate()
        for proc, conn in procs:
            proc.join()
            conn.close()


def _worker(conn: Any, inherited: list[Any]) -> None:
    """A local worker: evaluate the chunks that come down ``conn`` until told to stop or orphaned."""
    for c in inherited:          # the sweep's ends of the pipes: an orphan then sees end of file
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from simhete.search.store import StoreLock
    StoreLock.forget_in_child()
    # what a worker inherits lives as long as it does: the cyclic garbage collector need not walk
    # it again (nor touch its pages: copy-on-write)
    gc.freeze()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        chunk, engine = msg
        try:
            reply: tuple[bool, Any] = (True, evaluate_chunk(chunk, engine))
        except Exception as e:       # evaluate turns a point's failure into a row: this is a bug
            reply = (False, f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class RayBackend:
    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise SimheteError("--backend ray needs Ray, which is not installed "
                               "(from the simhete checkout: pip install -e '.[ray]')") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": max(1, workers)}
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **kw)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", workers)))
        self._remote = ray.remote(num_cpus=1)(evaluate_chunk)

    def map(self, chunks: Iterable[Chunk], engine: str) -> Iterator[list[Row]]:
        ray = self._ray
        window = 4 * self.workers       # chunks in flight: keeps every CPU busy, bounds memory
        pending: list[Any] = []
        it = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                chunk = next(it, None)
                if chunk is None:
                    exhausted = True
                else:
                    pending.append(self._remote.remote(chunk, engine))
            if not pending:
                return
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def make_backend(name: str, workers: int, address: str | None = None) -> Backend:
    if name == "local":
        if address:
            raise SimheteError("--ray-address only applies to --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(workers, address)
    raise SimheteError(f"unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
