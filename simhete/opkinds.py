"""The one vocabulary of op kinds, task actions and task categories.

Shared by workload/ (which emits ops), hw/ (which prices them), calibrate/ (which measures them),
engine/ and replay/ (which execute them). Never spell an op kind as a bare string elsewhere.

Shape conventions for :class:`simhete.schedule.Op` (``shape`` and ``n`` fields):

=================  ===============================================  ==========================
kind               shape                                            n
=================  ===============================================  ==========================
GEMM               (M, N, K): one M×K @ K×N product, 2·M·N·K FLOPs  0
ATTN_FWD/ATTN_BWD  (batch, heads, seq_q, seq_kv, head_dim, causal)  0
ELEMENTWISE        ()                                               bytes read + written
NORM               ()                                               bytes read + written (LayerNorm)
RMSNORM            ()                                               bytes read + written
GELU / RELU        ()                                               bytes read + written
SWIGLU             ()                                               bytes read + written (silu(a)·b)
DROPOUT            ()                                               bytes read + written (mask included)
ROPE               ()                                               bytes read + written (q and k rotated)
<KIND>_BWD         ()                                               bytes read + written by the backward
                                                                    of NORM, RMSNORM, GELU, RELU, SWIGLU,
                                                                    ROPE (its own kind: its own cost)
SOFTMAX_CE         (tokens, vocab)                                  bytes read + written
EMBED              (tokens, hidden)                                 bytes read + written
H2D / D2H / D2D    ()                                               bytes moved
MEMCPY_CPU         ()                                               bytes moved (host to host)
ADAM_CPU           ()                                               parameters updated (fp32)
ADAM_GPU           () fused (7 accesses per parameter), or          parameters updated, in the
                   (accesses,): tensor-element reads + writes       state's dtype (``dtype``)
                   per parameter of an unfused implementation
                   (:data:`ADAM_GPU_ACCESSES`)
ALLREDUCE,
REDUCE_SCATTER,
ALLGATHER          (ranks,)                                         bytes per rank (full tensor)
=================  ===============================================  ==========================
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import NamedTuple


# Tensor-element accesses per parameter of an Adam step on the GPU, by implementation (the shape
# of an ADAM_GPU op; fused, the default, is the empty shape):
# - fused (apex/DeepSpeed FusedAdam, torch ``fused=True``, ColossalAI's HybridAdam on the GPU):
#   one kernel reads p, g, m, v and writes p, m, v: 7.
# - foreach (torch AdamW's default on CUDA, ``_multi_tensor_adamw`` in torch 2.1 adamw.py, the
#   ``decoupled_weight_decay`` branch of ``_multi_tensor_adam`` in later adam.py; non-capturable,
#   no amsgrad), one multi-tensor kernel per call: ``_foreach_mul_(p)`` weight decay (2),
#   ``_foreach_lerp_(m, g)`` (3), ``_foreach_mul_(v)`` (2), ``_foreach_addcmul_(v, g, g)`` (3: g
#   read once from memory), ``_foreach_sqrt(v)`` into a temporary (2), ``_foreach_div_`` and
#   ``_foreach_add_`` on it (2 + 2), ``_foreach_addcdiv_(p, m, tmp)`` (4): 20.
ADAM_GPU_ACCESSES = {"fused": 7, "foreach": 20}


class OpKind(StrEnum):
    GEMM = "GEMM"
    ATTN_FWD = "ATTN_FWD"
    ATTN_BWD = "ATTN_BWD"
    ELEMENTWISE = "ELEMENTWISE"
    NORM = "NORM"
    RMSNORM = "RMSNORM"
    GELU = "GELU"
    RELU = "RELU"
    SWIGLU = "SWIGLU"
    DROPOUT = "DROPOUT"
    ROPE = "ROPE"
    # The backward of a memory-bound op is not its forward at other bytes: a norm's backward
    # reduces twice, an activation's backward recomputes the derivative (on the development CPU
    # layernorm forward/backward of one size differ 2-3x per byte). Like ATTN_FWD/ATTN_BWD, each
    # pass is its own kind, priced from its own calibrated curve (falls back to the forward's).
    NORM_BWD = "NORM_BWD"
    RMSNORM_BWD = "RMSNORM_BWD"
    GELU_BWD = "GELU_BWD"
    RELU_BWD = "RELU_BWD"
    SWIGLU_BWD = "SWIGLU_BWD"
    ROPE_BWD = "ROPE_BWD"
    SOFTMAX_CE = "SOFTMAX_CE"
    EMBED = "EMBED"
    H2D = "H2D"
    D2H = "D2H"
    D2D = "D2D"
    MEMCPY_CPU = "MEMCPY_CPU"
    ADAM_CPU = "ADAM_CPU"
    ADAM_GPU = "ADAM_GPU"
    ALLREDUCE = "ALLREDUCE"
    REDUCE_SCATTER = "REDUCE_SCATTER"
    ALLGATHER = "ALLGATHER"


# Memory-bound kinds: priced by bytes moved. On a GPU they run near memory bandwidth; on a CPU
# the transcendental ones (GELU, SWIGLU's sigmoid, DROPOUT's random mask) are compute-bound, which
# is why each has its own kind and its own calibrated curve rather than one "elementwise" rate.
MEMORY_BOUND_KINDS = frozenset({"ELEMENTWISE", "NORM", "RMSNORM", "GELU", "RELU", "SWIGLU", "DROPOUT",
                                "ROPE", "SOFTMAX_CE", "EMBED", "NORM_BWD", "RMSNORM_BWD", "GELU_BWD",
                                "RELU_BWD", "SWIGLU_BWD", "ROPE_BWD"})

# The backward kind of each memory-bound kind measured in two passes.
BWD_KIND = {OpKind.NORM: OpKind.NORM_BWD, OpKind.RMSNORM: OpKind.RMSNORM_BWD,
            OpKind.GELU: OpKind.GELU_BWD, OpKind.RELU: OpKind.RELU_BWD,
            OpKind.SWIGLU: OpKind.SWIGLU_BWD, OpKind.ROPE: OpKind.ROPE_BWD}

# Bytes per element of each compute dtype (tf32 is stored as fp32).
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "tf32": 4, "fp32": 4}

COPY_KINDS = frozenset({OpKind.H2D, OpKind.D2H, OpKind.D2D, OpKind.MEMCPY_CPU})
COLLECTIVE_KINDS = frozenset({OpKind.ALLREDUCE, OpKind.REDUCE_SCATTER, OpKind.ALLGATHER})
COMPUTE_KINDS = frozenset(
    {OpKind.GEMM, OpKind.ATTN_FWD, OpKind.ATTN_BWD, OpKind.ELEMENTWISE, OpKind.NORM,
     OpKind.RMSNORM, OpKind.GELU, OpKind.RELU, OpKind.SWIGLU, OpKind.DROPOUT,
     OpKind.ROPE, OpKind.SOFTMAX_CE, OpKind.EMBED, *BWD_KIND.values()}
)


class TaskCat(StrEnum):
    """The reporting category of a task (what summaries, plots and the replay's comparison group
    by): derived from its :class:`Action` (``Action.cat``), several actions per category."""

    FWD = "fwd"
    BWD = "bwd"
    RECOMPUTE = "recompute"
    H2D = "h2d"
    D2H = "d2h"
    OPTIM_CPU = "optim_cpu"
    OPTIM_GPU = "optim_gpu"
    COMM = "comm"
    OTHER = "other"


class At(NamedTuple):
    """Where a task sits, the coordinates its name is derived from (:meth:`Action.task_name`).

    ``it``: the iteration that names it (a DPU refresh is counted in a later one: ``Task.it``);
    ``target``: the block (``b12``), gradient bucket (``k3``), optimizer sub-group (``s0``),
    chunk group (``c2``), ``chunk``, or a step pass (``grads``, ``cast``); ``m``: the micro-step
    (names change from 2 on); ``rank``: the GPU of a multi-GPU schedule's per-rank task, -1 for
    one-GPU schedules and host tasks (no ``@g`` suffix); ``variant``: what an action with a
    ``{}`` in its pattern puts there (a repeated fetch's number, a chunk group and its repeat)."""

    it: int
    target: str
    m: int = 1
    rank: int = -1
    variant: str = ""


def at(it: int, target: str, gpu: int = 0, n_gpus: int = 1, m: int = 1, variant: str = "") -> At:
    """:class:`At` of GPU ``gpu``'s task in a schedule of ``n_gpus`` (one GPU: no rank)."""
    return At(it, target, m, gpu if n_gpus > 1 else -1, variant)


class Action(Enum):
    """What a scheduled task does: one member per kind of task the policies emit.

    Each member has the ``pattern`` of the operation part of its tasks' names (``{}``: where
    :attr:`At.variant` goes) and its reporting category ``cat`` (:class:`TaskCat`, which
    summaries, plots and the replay comparison group by). A task's name is derived from its
    action and its :class:`At` by :meth:`task_name` — ``it{it}.[m{m}.]{what}.{target}[@g{rank}]``,
    e.g. ``it1.F.b12``, ``it1.H2D.w.b13``, ``it2.m3.B.b3``, ``it2.ADAM.cpu.s0``, ``it1.D2H.g.k2@g1``
    — and the replay dispatches on it (:mod:`simhete.replay.handlers`)."""

    # forward / backward (policy/training.py)
    FORWARD = ("F", "fwd")
    RECOMPUTE = ("R", "recompute")
    BACKWARD = ("B", "bwd")
    ACT_D2H = ("D2H.act", "d2h")                    # swap the saved activations out
    ACT_H2D = ("H2D.act", "h2d")                    # ... and back in before the backward
    # weights to and from the GPU
    WEIGHTS_H2D = ("H2D.w", "h2d")                  # a block's / sub-group's weights (after a CPU step)
    WEIGHTS_H2D_FWD = ("H2D.wf{}", "h2d")           # prefetch for a forward (repeats numbered 2, 3, ...)
    WEIGHTS_H2D_BWD = ("H2D.wb{}", "h2d")           # prefetch for a recompute/backward
    WEIGHTS_H2D_AG = ("H2D.w.ag", "comm")           # the all-gather of the shards a WEIGHTS_H2D copied
    WEIGHTS_H2D_FWD_AG = ("H2D.wf{}.ag", "comm")
    WEIGHTS_H2D_BWD_AG = ("H2D.wb{}.ag", "comm")
    WEIGHTS_AG_FWD = ("AG.wf{}", "comm")            # all-gather of GPU-partitioned weights (ZeRO-3)
    WEIGHTS_AG_BWD = ("AG.wb{}", "comm")
    WEIGHTS_ALLGATHER = ("AG.w", "comm")            # after a step: updated partitions gathered
    WEIGHTS_D2H = ("D2H.w", "d2h")                  # weights home (eviction, after a GPU step)
    WEIGHTS_WRITEBACK = ("D2H.w2", "d2h")           # StrongHold: a block leaving the backward window
    # gradients
    GRADS_D2H = ("D2H.g", "d2h")                    # a block's / bucket's gradients to the host
    GRADS_D2H_RS = ("D2H.g.rs", "comm")             # the reduce-scatter before a GRADS_D2H
    GRADS_D2H_AR = ("D2H.g.ar", "comm")             # the all-reduce before a GRADS_D2H
    GRADS_ACC_H2D = ("D2H.g.ga", "h2d")             # micro-step > 1: host accumulation staged on the GPU
    GRADS_ALLREDUCE = ("AR.g", "comm")              # gradients of GPU-resident optimizer states
    GRADS_REDUCE_SCATTER = ("RS.g", "comm")
    # optimizer step
    ADAM_CPU = ("ADAM.cpu", "optim_cpu")
    ADAM_GPU = ("ADAM.gpu", "optim_gpu")
    HOST_PASS = ("STEP", "optim_cpu")               # a pass of the CPU step over all partitions (clip, cast)
    STEP_JOIN = ("STEP", "other")                   # zero-duration join: the step waits for every gradient
    BACKWARD_JOIN = ("BWD.end", "other")            # zero-duration join: backward() returns
    # chunks (PatrickStar / Gemini: policy/chunked.py), variant = group and repeat (``3``, ``3r2``)
    CHUNK_H2D = ("H2D.c{}", "h2d")
    CHUNK_D2H = ("D2H.c{}", "d2h")
    CHUNK_AG = ("AG.c{}", "comm")
    CHUNK_GRADS_D2H = ("D2H.g.c{}", "d2h")
    CHUNK_WEIGHTS_H2D = ("H2D.w.c{}", "h2d")

    def __init__(self, pattern: str, cat: str) -> None:
        self.pattern = pattern
        self.cat = TaskCat(cat)
        head, _, tail = pattern.partition("{}")
        self._head, self._tail = head, tail

    def what(self, variant: str = "") -> str:
        """The operation part of the name: the pattern with ``variant`` in its ``{}``."""
        return self._head + variant + self._tail

    def task_name(self, at: At) -> str:
        """The task's name: ``it{it}.[m{m}.]{what}.{target}[@g{rank}]`` (micro-step 1 and one-GPU
        schedules keep the short forms). The one place task names are made."""
        it, target, m, rank, variant = at
        return (f"it{it}." + (f"m{m}." if m > 1 else "") + self._head + variant + self._tail + "." + target
                + (f"@g{rank}" if rank >= 0 else ""))


class MemClass(StrEnum):
    """What a buffer holds, for the memory breakdown in reports."""

    WEIGHTS = "weights"          # 16-bit (or working-precision) parameters
    GRADS = "grads"              # 16-bit gradients
    GRADS32 = "grads32"          # fp32 gradients (CPU side of ZeRO-Offload)
    MASTER = "master"            # fp32 master parameters
    OPTIM = "optim"              # Adam m and v
    ACTIVATIONS = "activations"
    BUFFERS = "buffers"          # staging, gather/bucket buffers, workspace
    # What a real process holds beyond the ideal states (simhete/policy/process_memory.py):
    CUDA_CONTEXT = "cuda_context"              # GPU: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers
    PINNED_ROUNDING = "pinned_rounding"        # host: pinned blocks rounded up to a power of two
    FRAMEWORK_BUFFERS = "framework_buffers"    # host: DeepSpeed buffers beyond the ideal model states
    PROCESS_BASELINE = "process_baseline"      # host: Python + torch + CUDA libraries per rank, model build


def state_buffer(cls: MemClass, target: str, gpu: int | None = None) -> str:
    """The name of a model-state buffer resident from the start (``Schedule.initial``):
    ``{cls}.{target}`` in host memory, ``{cls}.g{gpu}.{target}`` on GPU ``gpu`` (``weights.g0.b3``).
    Policies name model states with it and the replay finds a block's states by it."""
    return f"{cls.value}.{target}" if gpu is None else f"{cls.value}.g{gpu}.{target}"


def owned_buffer(task: str, target: str) -> str:
    """The name of the buffer a task allocates for ``target``'s part of what it brings (a fetch of
    several blocks' weights: ``it1.H2D.wf.b3.b2``)."""
    return f"{task}.{target}"


# The classes a real process holds beyond the ideal model states and working buffers.
PROCESS_CLASSES = frozenset({MemClass.CUDA_CONTEXT, MemClass.PINNED_ROUNDING, MemClass.FRAMEWORK_BUFFERS,
                             MemClass.PROCESS_BASELINE})
