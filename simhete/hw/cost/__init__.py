"""CostModel: seconds for an op, a task or a whole schedule, from a HardwareProfile. No torch.

Prices (per op, multiplied by ``op.count``; see docs/profiles.md for the full table):

- GEMM: FLOPs / rate inside a measured table (end to end per call); otherwise
  max(launch, FLOPs / rate, bytes / memory bandwidth) — a roofline whose compute rate is peak ×
  efficiency(M, N, K) (tile/wave quantisation, NVIDIA "Matrix Multiplication Background User's
  Guide" §3).
- ATTN_FWD/ATTN_BWD: an exact measured shape at its rate; a shape inside the measured table of
  its pass and dtype at the rate interpolated in (log batch·heads, log seq_q·seq_kv, log
  head_dim); else the same roofline with FLOPs from :attr:`Op.flops` and the attention efficiency.
- ELEMENTWISE/NORM/RMSNORM/GELU/RELU/SWIGLU/DROPOUT/ROPE/SOFTMAX_CE/EMBED: memory-bound. With a
  ``gpu.memory_bound`` entry for the kind (its ``dtypes.<dtype>`` rate where the op's dtype has
  one): its measured curve (time linear in n between points, never decreasing with size), else
  its measured overhead + n / its bandwidth. A kind without an entry uses the kind it was split
  from (RMSNORM → NORM; GELU, RELU, SWIGLU, DROPOUT, ROPE → ELEMENTWISE); with none: max(launch,
  n / (bandwidth × efficiency)).
- H2D/D2H: α-β on the pinned or pageable link (or n / curve(n) inside a measured curve); on a
  ``device_type: cpu`` profile without links they are host memcpys.
- D2D: max(launch, 2n / device bandwidth) (a copy reads and writes n bytes).
- "launch" is the CPU's per-op eager dispatch; it overlaps the previous kernel, so an op costs
  max(launch, kernel) on a GPU (CostModel.dispatched); on a ``device_type: cpu`` profile, where
  one thread dispatches and runs the kernel, launch + kernel.
- On a ``device_type: cpu`` profile the device is the host: D2D is a host memcpy and ADAM_GPU is
  priced as ADAM_CPU.
- MEMCPY_CPU: n / host memcpy bandwidth. ADAM_CPU: overhead + n / rate, the rate taken from
  ``host.adam.by_threads`` at ``host.adam.threads`` when both are given, else ``params_per_s``,
  else the per-core model min(per-core rate of the ``simd`` class × threads (default
  ``host.cores``, at most it), 0.7 × DRAM bandwidth / 28 B) (profile.host.AdamModel, ADAM_PER_CORE),
  else 0.7 × DRAM bandwidth / 28 B per parameter (profile.host.DRAM_STREAM_FRACTION), flagged assumed.
- ADAM_GPU: max(launch, 7 · e · n / (bandwidth × efficiency)), e the bytes of the op's dtype (the
  optimizer state's: fp32 in mixed precision, 28 B/param; bf16/fp16 in pure training, 14 B/param).
- ALLREDUCE/REDUCE_SCATTER/ALLGATHER: α + n · factor / bus bandwidth (nccl-tests factors).

A task whose ops tuple is listed in ``gpu.blocks`` (a block's forward, backward or optimizer step
measured whole, inside a training step: calibrate/blocks.py) is priced at that measured time;
every other task is the sum of its ops. ``task_seconds`` is cached by the task's ops tuple, so identical blocks are
priced once.

Provenance: pricing records, per op and per ops tuple, the uncalibrated numbers it rested on
(:meth:`CostModel.provenance`), so one model can price the tuples of many sweep points and give
each point exactly the flags a fresh model pricing only its tuples would report
(:meth:`CostModel.flags_with`). :attr:`CostModel.flags` is everything this model has priced.

Modules: model (CostModel: caches, provenance, accounting), compute (GEMM, attention,
memory-bound), copies (links, memcpys, collectives, PCIe switch sharing), adam (CPU and GPU Adam).
"""

from simhete.hw.cost.compute import MB_FALLBACK
from simhete.hw.cost.copies import BUS_FACTOR
from simhete.hw.cost.model import NO_PROVENANCE, CostModel, Provenance_, ops_key

__all__ = ["BUS_FACTOR", "MB_FALLBACK", "NO_PROVENANCE", "CostModel", "Provenance_", "ops_key"]
