"""The one vocabulary of op kinds and task categories.

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
ADAM_CPU/ADAM_GPU  ()                                               parameters updated (fp32)
ALLREDUCE,
REDUCE_SCATTER,
ALLGATHER          (ranks,)                                         bytes per rank (full tensor)
=================  ===============================================  ==========================
"""

from __future__ import annotations

from enum import StrEnum


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
    """What a scheduled task is, for reports and for joining predicted with measured totals."""

    FWD = "fwd"
    BWD = "bwd"
    RECOMPUTE = "recompute"
    H2D = "h2d"
    D2H = "d2h"
    OPTIM_CPU = "optim_cpu"
    OPTIM_GPU = "optim_gpu"
    COMM = "comm"
    OTHER = "other"


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


# The classes a real process holds beyond the ideal model states and working buffers.
PROCESS_CLASSES = frozenset({MemClass.CUDA_CONTEXT, MemClass.PINNED_ROUNDING, MemClass.FRAMEWORK_BUFFERS,
                             MemClass.PROCESS_BASELINE})
