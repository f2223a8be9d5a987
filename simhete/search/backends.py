"""Where sweep points run. A backend only maps :func:`evaluate_chunk` over chunks of points and
yields each chunk's rows as soon as it is done (in completion order); everything else — building
points, skipping finished ones, writing results, strategies — is one code path in
:mod:`simhete.search.runner`.

- ``local`` (default): a process pool of ``workers`` processes (``workers = 1`` runs in-process).
- ``ray``: Ray tasks on the cluster at ``address`` (or a local Ray instance started with
  ``workers`` CPUs when no address is given). Needs the ``ray`` extra.
"""

from __future__ import annotations

import gc
import multiprocessing
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


class LocalBackend:
    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: Any = None
        if self.workers > 1:
            # fork: workers inherit the imported simulator (no re-import per worker); started now,
            # before any progress-bar thread exists.
            # gc.freeze in each worker: what it inherits lives as long as it does, so the cyclic
            # garbage collector need not walk it again (nor touch its pages: copy-on-write)
            self._pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=gc.freeze)

    def map(self, chunks: Iterable[Chunk], engine: str) -> Iterator[list[Row]]:
        fn = partial(evaluate_chunk, engine=engine)
        if self._pool is None:
            return map(fn, chunks)
        return self._pool.imap_unordered(fn, chunks)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


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
