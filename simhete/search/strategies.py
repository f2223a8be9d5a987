"""Search strategies over a sweep's grid. Points are named by their grid index (mixed radix over the
axes, the last axis fastest), so every strategy proposes points of the same grid and shares the
results store.

- ``grid``: every point, in index order.
- ``random``: ``samples`` distinct points drawn uniformly without replacement (seeded).
- ``optimize``: coordinate search maximising throughput among configurations that fit (and respect
  the sweep's limits). From a start point it evaluates every value of one axis with the others
  fixed (one batch, run in parallel), moves to the best, and goes round the axes until a full pass
  brings no improvement; then it restarts from ``restarts`` random points. It stops at ``budget``
  distinct points. It finds the optimum of objectives that are separable over the axes and a
  coordinate-wise local optimum otherwise; ``grid`` is the exhaustive reference.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterator, Sequence

Index = tuple[int, ...]
BATCH = 4096


def decode(i: int, sizes: Sequence[int]) -> Index:
    """Grid index → per-axis value indices (last axis fastest)."""
    out = []
    for n in reversed(sizes):
        i, r = divmod(i, n)
        out.append(r)
    return tuple(reversed(out))


def encode(v: Index, sizes: Sequence[int]) -> int:
    i = 0
    for x, n in zip(v, sizes):
        i = i * n + x
    return i


def grid(sizes: Sequence[int]) -> Iterator[list[int]]:
    total = math.prod(sizes)
    for k in range(0, total, BATCH):
        yield list(range(k, min(total, k + BATCH)))


def random_sample(sizes: Sequence[int], samples: int, seed: int) -> Iterator[list[int]]:
    total = math.prod(sizes)
    picked = sorted(random.Random(seed).sample(range(total), min(samples, total)))
    for k in range(0, len(picked), BATCH):
        yield picked[k:k + BATCH]


def coordinate_search(sizes: Sequence[int], score: Callable[[list[int]], list[float]], start: Index,
                      budget: int, restarts: int = 0, seed: int = 0) -> tuple[int | None, dict[int, float]]:
    """Maximise ``score`` (``-inf`` = infeasible) over the grid; return (best index or None, scores).

    ``score`` receives a batch of grid indices and returns their scores in order; each index is
    scored at most once, and at most ``budget`` indices in all.
    """
    seen: dict[int, float] = {}

    def ask(idxs: list[int]) -> None:
        new = [i for i in dict.fromkeys(idxs) if i not in seen][:max(0, budget - len(seen))]
        if new:
            seen.update(zip(new, score(new)))

    rng = random.Random(seed)
    starts = [tuple(start)] + [tuple(rng.randrange(n) for n in sizes) for _ in range(restarts)]
    for cur in starts:
        ask([encode(cur, sizes)])
        if encode(cur, sizes) not in seen:
            break                                  # budget spent
        improved = True
        while improved and len(seen) < budget:
            improved = False
            for d, n in enumerate(sizes):
                if n == 1:
                    continue
                cand = [encode(cur[:d] + (j,) + cur[d + 1:], sizes) for j in range(n)]
                ask(cand)
                here = encode(cur, sizes)
                best = max((i for i in cand if i in seen), key=lambda i: (seen[i], -i))
                if seen[best] > seen[here]:
                    cur, improved = decode(best, sizes), True
    feasible = [i for i, s in seen.items() if s != -math.inf]
    best_i = max(feasible, key=lambda i: (seen[i], -i)) if feasible else None
    return best_i, seen
