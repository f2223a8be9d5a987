"""ZeRO-Offload's gradient buckets, rank by rank (:mod:`simhete.policy.zero_offload` has the model):
which elements of each bucket lie in each rank's contiguous partition (:func:`rank_partition_slices`),
the parameter tensor pieces they cover (:func:`tensor_pieces`), and the GPU passes and copies of a
rank's copy-out task of a bucket as DeepSpeed's stage_1_and_2.py runs them with
``offload_optimizer: cpu``: the reduction of every micro-step (:func:`bucket_passes`) and the
checks and fp32 copy at the gradient-accumulation boundary (:func:`boundary_ops`)."""

from __future__ import annotations

from simhete import cache
from simhete.opkinds import OpKind
from simhete.policy.dataparallel import shard
from simhete.schedule import Op


# GPU passes of DeepSpeed's ZeRO-1/2 gradient path with optimizer offload, per bucket and rank.
# ELEMENTWISE ops: n = bytes read + written (simhete/opkinds.py), priced at the GPU's memory-bound
# rate. They run on DeepSpeed's reduction stream (overlap_comm) or the current stream (without),
# so they are priced inside the rank's copy-out task of the bucket, on the stream that task runs on.
# Both are kept by content in simhete.cache (BUCKET_PASSES, BUCKET_BOUNDARY).


def bucket_passes(gb: int, own: int, split: bool) -> tuple[Op, ...]:
    """A rank's passes over a bucket of ``gb`` 16-bit gradient bytes (all ranks' parameters), of
    which ``own`` bytes lie in its partition (stage_1_and_2.py, reduce_scatter and
    use_multi_rank_bucket_allreduce at their defaults, also with one GPU): the backward hook
    (``reduce_independent_p_g_buckets_and_remove_grads``) copies each gradient into the
    contiguous bucket buffer (``contiguous_gradients``, forced on with ``cpu_offload``: reads and
    writes the bucket, 2·gb) and ``average_tensor``'s ``tensor.div_`` by the world size (2·gb).
    ``average_tensor`` hands ``allreduce_and_scatter`` the bucket as one slice per rank whose
    partition it covers; when that is more than one (``split``), ``allreduce_bucket``'s
    ``flatten`` concatenates them into a new tensor (2·gb) and
    ``allreduce_and_copy_with_multiple_ranks`` copies back the slice of the rank's own partition
    (``buf.copy_(synced)``, 2·own). A bucket in one rank's partition is one slice: torch's
    ``flatten_dense_tensors`` of one tensor is a view of it (``at::flatten_dense_tensors``: no
    ``cat``) and ``copy_`` of a view onto the same data returns at once (ATen ``copy_impl``'s
    ``is_same_data`` exit), so neither copies."""
    key = (gb, own, split)
    got = cache.BUCKET_PASSES.get(key)
    if got is None:
        got = cache.BUCKET_PASSES.keep(key, (Op(OpKind.ELEMENTWISE, n=(6 * gb + 2 * own) if split else 4 * gb),))
    return got


def rank_partition_slices(blocks: tuple, buckets, n: int) -> list[dict[int, dict[int, tuple[int, int]]]]:
    """Per bucket, per rank: {block index: (lo, hi)}, the block's elements lo..hi-1 (offsets in
    the block) that lie in the rank's partition.

    DeepSpeed ZeRO-1/2 flattens each parameter group in the order of its parameters (the model's
    ``parameters()``: embedding, blocks 0..L-1, final norm; a tied LM head adds nothing) and gives
    rank r the r-th contiguous 1/N of that flat tensor (stage_1_and_2.py
    ``get_data_parallel_partitions``: ``total // dp`` elements, the first ``total % dp`` ranks one
    more; ``round_robin_gradients`` false by default, which the config documents as the option that
    "parallelizes gradient copying to CPU memory among ranks"). A bucket is filled in backward
    order, so it holds the gradients of a few consecutive blocks, which mostly belong to one rank:
    only that rank copies them (``copy_grads_in_partition`` runs for parameters in the current
    partition only) while the others, without ``overlap_comm``, wait for it at the next bucket's
    all-reduce. A parameter split by a partition boundary is split in elements, as DeepSpeed's
    ``grad_position`` does; the alignment padding DeepSpeed appends to the flat tensor (under 2·N
    elements) is left out."""
    order = [blk for blk in blocks if blk.params]          # forward order = the flat group's order
    total = sum(blk.params for blk in order)
    bounds, start = [], 0
    for g in range(n):
        size = shard(total, n, g)
        bounds.append((start, start + size))
        start += size
    where: dict[int, tuple[int, int]] = {}
    pos = 0
    for blk in order:
        where[blk.index] = (pos, pos + blk.params)
        pos += blk.params
    out = []
    for bucket in buckets:
        per = {}
        for g, (lo, hi) in enumerate(bounds):
            got = {}
            for i in bucket:
                a, b = where.get(i, (0, 0))
                if min(b, hi) > max(a, lo):
                    got[i] = (max(a, lo) - a, min(b, hi) - a)
            per[g] = got
        out.append(per)
    return out


def spans_ranks(per_rank: dict[int, dict[int, tuple[int, int]]]) -> bool:
    """Whether a bucket's slices (one bucket of :func:`rank_partition_slices`) lie in more than one
    rank's partition: then ``allreduce_and_scatter`` gets several slices (:func:`bucket_passes`'
    ``split``)."""
    return sum(1 for got in per_rank.values() if got) > 1


def tensor_pieces(tensors: tuple[int, ...], lo: int, hi: int) -> list[int]:
    """The element counts of the parts of ``tensors`` (laid out back to back) within [lo, hi)."""
    out, pos = [], 0
    for t in tensors:
        c = min(pos + t, hi) - max(pos, lo)
        if c > 0:
            out.append(c)
        pos += t
    return out


def boundary_ops(pieces: tuple[int, ...], e: int, e32: int, pinned: bool) -> tuple[Op, ...]:
    """At the gradient-accumulation boundary, for each parameter tensor (piece) of the rank's
    partition in the bucket (stage_1_and_2.py ``copy_grads_in_partition``, cpu_offload branch,
    called per parameter; ``pieces`` their element counts, ``e`` bytes per working-precision
    gradient element, ``e32`` per fp32 element), one kernel per torch op:

    - ``set_norm_for_param_grad_in_gpu``: ``grad.double()`` (reads e, writes 8 per element) and
      ``.norm(2)`` (reads 8);
    - ``update_offload_overflow_tracker`` → ``_has_inf_or_nan``: ``x.float()`` (e + 4, no kernel
      when the gradient is fp32 already), ``isnan`` and ``isinf`` (4 + 1 each), ``logical_or``
      (1 + 1 + 1), ``.float()`` (1 + 4), ``.max()`` (4) — run in every precision — and the test of
      its result in a Python ``if`` (``if grad is not None and self._has_inf_or_nan(grad.data)``):
      ``Tensor.__bool__`` copies the scalar to the host and waits for the stream, a 4-byte
      pageable D2H per parameter, so the host issues the next parameter's kernels only after this
      one's and the previous parameter's copy have run;
    - ``async_inplace_copy_grad_to_fp32_buffer_from_gpu``: ``src_tensor.to(float32)`` on the GPU
      (e + 4, none when fp32), then ``dest_tensor.copy_(src, non_blocking=True)`` into the host's
      fp32 gradient partition: the D2H moves 4 B/param, not the 16-bit bytes.

    Each ELEMENTWISE op is priced at max(dispatch, kernel), so small tensors (biases, norm weights)
    cost their launches and large ones their bytes; the sync is priced as the pageable D2H of 4
    bytes (its latency). Pieces of equal size share their ops through ``Op.count`` (k tensors of n
    elements: each op once with count k, priced k times), which keeps the ops tuple short: its
    sum is that of the per-tensor listing.
    """
    if not pieces:          # the rank owns nothing of the bucket: no pass, no copy
        return ()
    key = (pieces, e, e32, pinned)
    got = cache.BUCKET_BOUNDARY.get(key)
    if got is None:
        up = e != e32
        ops: list[Op] = []
        sizes: dict[int, int] = {}
        for n in pieces:
            sizes[n] = sizes.get(n, 0) + 1
        for n, k in sizes.items():
            ops += [Op(OpKind.ELEMENTWISE, n=(e + 8) * n, count=k), Op(OpKind.ELEMENTWISE, n=8 * n, count=k)]
            if up:
                ops.append(Op(OpKind.ELEMENTWISE, n=(e + e32) * n, count=k))
            ops += [Op(OpKind.ELEMENTWISE, n=5 * n, count=k), Op(OpKind.ELEMENTWISE, n=5 * n, count=k),
                    Op(OpKind.ELEMENTWISE, n=3 * n, count=k), Op(OpKind.ELEMENTWISE, n=5 * n, count=k),
                    Op(OpKind.ELEMENTWISE, n=4 * n, count=k), Op(OpKind.D2H, n=4, pinned=False, count=k)]
            if up:
                ops.append(Op(OpKind.ELEMENTWISE, n=(e + e32) * n, count=k))
            ops.append(Op(OpKind.D2H, n=e32 * n, pinned=pinned, count=k))
        got = cache.BUCKET_BOUNDARY.keep(key, tuple(ops))
    return got
