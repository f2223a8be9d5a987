"""The memory a real training process holds beyond the ideal model states, as its own classes.

A policy's ``initial`` buffers are the ideal model states (ZeRO §3.1: 2 + 2 + 4 + 4 + 4 bytes per
parameter, placed per policy). A real process on a CUDA GPU holds more, and :func:`process_memory`
returns it as buffers of their own :class:`~simhete.opkinds.MemClass`, resident for the whole run,
so the reports show them and the engine's capacity check counts them:

GPU (one per GPU, pool ``gpu{g}``):

- ``cuda_context``: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers. Its size is the GPU
  profile's ``gpu.reserved_bytes`` (with that key's own provenance); the GPU pool's capacity is
  then the whole ``gpu.memory_bytes``, so the usable memory is unchanged and the report names it.

Host (pool ``cpu``, one process per GPU, each holding its own 1/N partition):

- ``pinned_rounding``: PyTorch's pinned host allocator rounds every pinned block up to the next
  power of two before it calls ``cudaHostAlloc`` (or ``cudaHostRegister``) and keeps the whole
  block: ``CachingHostAllocatorImpl::allocate`` in ``aten/src/ATen/core/CachingHostAllocator.h``
  (``size_t roundSize = c10::llvm::PowerOf2Ceil(size)``; in older releases the same line sits in
  ``CUDAHostAllocator::allocate``, ``aten/src/ATen/cuda/CachingHostAllocator.cpp``, before both
  ``cudaHostAlloc`` and ``allocWithCudaHostRegister``). ``tensor.pin_memory()`` and DeepSpeed's
  ``get_accelerator().pin_memory(t)`` (``accelerator/cuda_accelerator.py``: ``tensor.pin_memory()``)
  go through it. The class holds ``PowerOf2Ceil(n) - n`` per pinned buffer DeepSpeed creates;
  pageable buffers (``pin_memory: false``, or tensors DeepSpeed never pins) get none.
- ``framework_buffers``: DeepSpeed host buffers beyond the ideal model states (listed per policy
  below, with the function that allocates each).
- ``process_baseline``: per rank, the resident memory of Python + torch + the CUDA runtime and
  libraries (``process_rss`` knob); plus, when every rank materialises the full model in host
  memory while it is built (``model_load: full``), the amount by which that construction peak
  exceeds the steady state (the model is moved to the GPU before DeepSpeed creates its host
  partitions, so the two peaks do not add: the pool's peak is the larger of the two).

Nothing is added when the profile's device is the CPU acting as the device (no CUDA context, no
pinned allocator; replay measures that process directly).

DeepSpeed's host buffers, read in DeepSpeed master (``deepspeed/runtime/zero/``):

ZeRO-Offload (``stage_1_and_2.py``, ``DeepSpeedZeroOptimizer``, ``offload_optimizer.device: cpu``),
per rank and per parameter group, on its flat partition of ``P`` elements:

- fp32 master partition ``single_partition_of_fp32_groups[i]`` (``__init__``): pinned when
  ``offload_optimizer.pin_memory`` → one rounded block of ``4P`` bytes.
- fp32 gradient partition (``initialize_optimizer_states``: ``single_grad_partition``): pinned → one
  rounded block of ``4P``.
- Adam m, v: created by ``DeepSpeedCPUAdam.step`` (``ops/adam/cpu_adam.py``: ``torch.zeros_like``
  on the CPU): pageable, no rounding.
- ``param_buffer_of_bit16_for_cpu_offload_groups[i]`` (``__init__``): a 16-bit copy of the partition
  the updated weights are staged in before their H2D copy, pinned: ``framework_buffers`` (``2P``)
  and its rounding.
- ``temp_grad_buffer_for_cpu_offload`` (``__init__``): 16-bit, the largest parameter's numel,
  pinned: ``framework_buffers`` and its rounding.
- with gradient accumulation, ``accumulated_grads_in_cpu[param_id]``
  (``async_accumulate_grad_in_cpu_via_gpu``: ``buffer_to_accumulate_to_in_cpu``): one pinned 16-bit
  buffer per parameter tensor (the policy's ``gacc`` buffers): rounded per tensor.

ZeRO-3 offload (``stage3.py``, ``DeepSpeedZeroOptimizer_Stage3``), per rank:

- 16-bit parameter partitions (``offload_param.device: cpu``):
  ``_create_param_groups_fp16_flat_cpu_memory`` → one pinned flat buffer per parameter group
  (the policy's host ``weights``): rounded.
- fp32 master per sub-group (``_create_fp32_partitions``: ``converted.clone().detach()``): pageable.
- Adam m, v (``DeepSpeedCPUAdam``): pageable.
- fp32 gradient per sub-group (``initialize_optimizer_states``: ``subgroup_gradient_buffer``, pinned):
  the policy's host ``grads32``, rounded per sub-group of ``sub_group_size`` partitioned elements
  (``_create_fp16_sub_groups``).
- ``grad_partitions_flat_buffer`` (``_setup_for_real_optimizer``): the partition's gradients in
  ``gradient_accumulation_dtype`` (the model dtype unless ``data_types.grad_accum_dtype`` is set:
  ``engine.get_data_types``) on the host when the optimizer is offloaded, pinned. With gradient
  accumulation the policy already holds it as ``gacc``; otherwise it is a ``framework_buffers``
  entry. Rounded either way.

Parameter groups: Hugging Face ``Trainer.create_optimizer`` makes two groups, weight-decayed
(every matrix) and not (biases and norm weights: ``get_decay_parameter_names``); DeepSpeed flattens
and partitions each group separately, so each group's buffers are rounded separately.
"""

from __future__ import annotations

from typing import Any, Iterable

from simhete import cache
from simhete.opkinds import DTYPE_BYTES, MemClass
from simhete.schedule import Alloc
from simhete.workload.tensors import model_tensors

# Resident host memory of one PyTorch process after CUDA initialisation and its first kernels:
# pytorch/pytorch issue #12873 (memory_profiler, CUDA 9 era): 1872.660 MiB after a conv layer ran on
# the GPU (153.8 MiB before CUDA was touched). CUDA >= 11.7 lazy module loading shrinks the *device*
# side of the context (ptrblck, pytorch/pytorch #107667); the host side is not published per
# release, so this measured figure is the default and ``process_rss`` overrides it.
PROCESS_RSS_DEFAULT = int(1872.66 * 2**20)
PROCESS_RSS_SOURCE = "pytorch/pytorch#12873: 1872.66 MiB RSS after CUDA init and a first GPU kernel"


def pow2_ceil(n: int) -> int:
    """``c10::llvm::PowerOf2Ceil``: the smallest power of two >= n (0 for 0)."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    return 0 if n == 0 else 1 << (n - 1).bit_length()


def pinned_extra(sizes: Iterable[int], pinned: bool = True) -> int:
    """Bytes the pinned host allocator adds to buffers of ``sizes`` bytes (0 when pageable)."""
    if not pinned:
        return 0
    return sum(pow2_ceil(n) - n for n in sizes if n)


def group_numels(spec: Any) -> list[int]:
    """Elements of each optimizer parameter group (decayed, not decayed), empty groups left out."""
    ts = model_tensors(spec)
    return [n for n in (sum(x for x, d in ts if d), sum(x for x, d in ts if not d)) if n]


def zero2_partition(numel: int, n: int) -> int:
    """Elements of each rank's partition of a flat group of ``numel`` over n ranks under ZeRO-1/2:
    the group is padded to a multiple of ``nccl_start_alignment_factor`` (2) × n
    (``flatten_dense_tensors_aligned``, ``stage_1_and_2.py``) and split evenly."""
    return -(-numel // (2 * n)) * 2


def zero3_partition(numels: Iterable[int], n: int) -> int:
    """Elements of each rank's partition of a group under ZeRO-3: every tensor is padded to a
    multiple of n and split evenly (``partition_parameters.py``: ``_aligned_size // world_size``)."""
    return sum(-(-x // n) for x in numels)


def rounds(k: Any) -> bool:
    """Whether DeepSpeed's pinned buffers are rounded: pinned (``pin_memory``) through PyTorch's
    allocator. ``pin_backend: native`` (``DS_PIN_MEMORY_BACKEND=native``, ``deepspeed/utils/
    pin_memory.py``: ``NativePinnedMemory.pin`` asks DeepNVMe for a locked tensor of the tensor's
    own numel) pins the exact size."""
    return k.pin_memory and k.pin_backend == "torch"


def resolved_load(k: Any, policy: str) -> str:
    """``model_load`` with ``auto`` resolved: Hugging Face ``from_pretrained`` runs under
    ``deepspeed.zero.Init`` when the DeepSpeed config is ZeRO-3 (``is_deepspeed_zero3_enabled``,
    transformers' DeepSpeed integration docs), so only ZeRO-3 partitions while loading."""
    if k.model_load != "auto":
        return k.model_load
    return "zero-init" if policy == "zero-infinity" else "full"


def _zero_offload_host(ctx: Any, k: Any, n: int, e: int) -> list[tuple[str, MemClass, int]]:
    """ZeRO-Offload's extra host bytes (module docstring), identical on every rank."""
    pinned = rounds(k)
    tensors = model_tensors(ctx.spec)
    largest = max(x for x, _ in tensors)
    fw = rnd = 0
    for numel in group_numels(ctx.spec):
        p = zero2_partition(numel, n)
        rnd += pinned_extra((4 * p, 4 * p, e * p), pinned)     # fp32 master, fp32 grads, 16-bit staging
        fw += e * p                                            # 16-bit staging of the partition
    fw += e * largest                                          # temp_grad_buffer_for_cpu_offload
    rnd += pinned_extra((e * largest,), pinned)
    out = [(f"framework_buffers.rank{r}", MemClass.FRAMEWORK_BUFFERS, fw) for r in range(n)]
    out += [(f"pinned_rounding.rank{r}", MemClass.PINNED_ROUNDING, rnd) for r in range(n)]
    if ctx.grad_accum > 1 and pinned:
        # accumulated_grads_in_cpu: one 16-bit pinned buffer per parameter tensor, held by the rank
        # whose partition holds it (the policy's gacc buffers hold the bytes, once over the ranks)
        out.append(("pinned_rounding.gacc", MemClass.PINNED_ROUNDING, pinned_extra(e * x for x, _ in tensors)))
    return out


def _zero3_host(ctx: Any, k: Any, n: int, e: int) -> list[tuple[str, MemClass, int]]:
    """ZeRO-3 offload's extra host bytes (module docstring), identical on every rank."""
    pinned = rounds(k)
    tensors = model_tensors(ctx.spec)
    parts = [zero3_partition((x for x, d in tensors if d is decayed), n) for decayed in (True, False)]
    parts = [p for p in parts if p]
    fw = rnd = 0
    if k.offload_param == "cpu":
        rnd += pinned_extra((e * p for p in parts), pinned)    # param_groups_fp16_flat_cpu_memory, per group
    if k.offload_optimizer == "cpu":
        sub = int(k.sub_group_size)
        for p in parts:
            # fp32 gradient per sub-group of at most sub_group_size partitioned elements (the
            # boundaries fall between parameters; equal tiles here), offloaded ones only: the last
            # ``ratio`` of the sub-groups, as the policy's n_gpu_groups
            tiles = [sub] * (p // sub) + ([p % sub] if p % sub else [])
            rnd += pinned_extra((4 * t for t in tiles[int((1 - k.ratio) * len(tiles)):]), pinned)
        # grad_partitions_flat_buffer: one buffer over every group's partition, model dtype
        flat = e * sum(parts)
        if ctx.grad_accum == 1:        # with accumulation the policy holds it as its gacc buffers
            fw += flat
        rnd += pinned_extra((flat,), pinned)
    out = [(f"framework_buffers.rank{r}", MemClass.FRAMEWORK_BUFFERS, fw) for r in range(n)]
    out += [(f"pinned_rounding.rank{r}", MemClass.PINNED_ROUNDING, rnd) for r in range(n)]
    return out


# the policies whose framework's host buffers are modelled here (simhete plan also tries their
# pin_memory both ways: pinned blocks are rounded up)
HOST_BUFFERS = {"zero-offload": _zero_offload_host, "zero-infinity": _zero3_host}


def figures(ctx: Any, k: Any, policy: str) -> tuple[int, int, int]:
    """For a solver that places states itself (AutoHete's MILP): (host bytes held whatever the
    placement — baseline, framework buffers, rounding; the construction peak, 0 unless
    ``model_load`` is ``full``; the context bytes on each GPU). The pool's host peak is
    max(states + the first, the second); all zeros when the CPU acts as the device."""
    if ctx.profile.device_type != "cuda":
        return 0, 0, 0
    held = sum(a.bytes for a in _process_memory(ctx, k, policy, 1 << 62) if a.pool == "cpu")
    e = DTYPE_BYTES[ctx.workload.dtype]
    n = ctx.n_gpus
    build = n * (ctx.spec.n_params() * e + int(k.process_rss)) if resolved_load(k, policy) == "full" else 0
    return held, build, int(ctx.profile.gpu.reserved_bytes.value)


_KNOBS = ("pin_memory", "pin_backend", "process_rss", "model_load", "offload_param", "offload_optimizer",
          "ratio", "sub_group_size")


def process_memory(ctx: Any, k: Any, policy: str, initial: Iterable[Alloc] = ()) -> list[Alloc]:
    """The buffers a real process holds beyond ``initial`` (the policy's ideal states), for a
    CUDA profile; none for the CPU acting as the device. ``k``: the policy's knobs (an
    :class:`~simhete.policy.training.ActivationKnobs`). Kept per what they depend on (a sweep asks
    at every point; Allocs are immutable)."""
    prof = ctx.profile
    if prof.device_type != "cuda":
        return []
    initial = tuple(initial)
    host = sum(a.bytes for a in initial if a.pool == "cpu")
    knobs = (getattr(k, f, None) for f in _KNOBS)
    key = (policy, tuple(tuple(v) if isinstance(v, list) else v for v in knobs), ctx.spec, ctx.workload.dtype,
           ctx.n_gpus, ctx.grad_accum, int(prof.gpu.reserved_bytes.value), host)
    got = cache.PROCESS_BUFFERS.get(key)
    if got is None:
        got = cache.PROCESS_BUFFERS.keep(key, _process_memory(ctx, k, policy, host))
    return list(got)


def _process_memory(ctx: Any, k: Any, policy: str, initial_host: int) -> list[Alloc]:
    prof = ctx.profile
    n = ctx.n_gpus
    e = DTYPE_BYTES[ctx.workload.dtype]
    out = [Alloc(f"cuda_context.g{g}", f"gpu{g}", int(prof.gpu.reserved_bytes.value), MemClass.CUDA_CONTEXT)
           for g in range(n)]
    host = [(f"process_baseline.rank{r}", MemClass.PROCESS_BASELINE, int(k.process_rss)) for r in range(n)]
    extra = HOST_BUFFERS.get(policy)
    if extra is not None:
        host += extra(ctx, k, n, e)
    host = [h for h in host if h[2] > 0]
    if resolved_load(k, policy) == "full":
        # from_pretrained without zero.Init: every rank builds the whole model in host memory (its
        # load dtype: the working dtype, torch_dtype) before DeepSpeed moves it to the GPU
        build = n * ctx.spec.n_params() * e + n * int(k.process_rss)
        steady = initial_host + sum(h[2] for h in host)
        if build > steady:
            host.append(("process_baseline.model_load", MemClass.PROCESS_BASELINE, build - steady))
    out += [Alloc(name, "cpu", nbytes, cls) for name, cls, nbytes in host]
    return out
