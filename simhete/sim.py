"""The pipeline, one direction of flow: scenario → workload + profile → policy → Schedule →
engine → Timeline → Summary. Every command (simulate, compare, sweep, plan, validate) goes
through :func:`resolve` and :func:`run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from simhete import cache
from simhete.engine import simulate
from simhete.engine.timeline import Timeline
from simhete.errors import ConfigError, SimheteError
from simhete.hw.cost import CostModel
from simhete.hw.profile import PROFILES_DIR, load_profile
from simhete.policy import Context, get_policy
from simhete.report.metrics import Summary, summarize
from simhete.report.pcie import ops_pcie_bytes, pcie_task_arrays
from simhete.scenario import HardwareRef, Scenario
from simhete.search.candidates import choose_schedule
from simhete.schedule import Schedule, check_schedule
from simhete.workload import build_workload, from_hf_config, get_model


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    context: Context
    schedule: Schedule
    timeline: Timeline
    summary: Summary


def resolve_model(s: Scenario) -> Any:
    m = s.data.model
    if isinstance(m, str):
        return get_model(m, file=s.file, key="model")
    if (m.preset is None) == (m.hf_config is None):
        raise ConfigError(s.file, "model", problem="give exactly one of model.preset or model.hf_config")
    if m.hf_config is not None:
        p = Path(m.hf_config)
        if not p.is_absolute() and s.file:
            p = Path(s.file).parent / p
        spec = from_hf_config(p)
    else:
        spec = get_model(m.preset, file=s.file, key="model.preset")
    over = {k: v for k, v in m.model_dump(exclude_none=True).items() if k not in ("preset", "hf_config")}
    if "bias" in over:  # model.bias sets every block linear's bias, the per-part flags included
        over.update(qkv_bias=None, out_bias=None, mlp_bias=None)
    if over:
        try:
            spec = dataclasses.replace(spec, name=spec.name + "*", **over)
        except ConfigError as e:   # ModelSpec's own check names the field: put it under model.
            raise ConfigError(s.file, f"model.{e.key}" if e.key else "model",
                              problem=e.problem or f"bad value {e.value!r}; allowed: {e.allowed}") from None
        except (ValueError, TypeError) as e:
            raise ConfigError(s.file, "model", over, allowed=str(e)) from None
    return spec


@lru_cache(maxsize=64)
def _profile(name: str, mtime: float, file: str | None, key: str) -> Any:
    return load_profile(name, file=file, key=key)


@lru_cache(maxsize=256)
def _profile_with(name: str, mtime: float, file: str | None, key: str, gpus: int | None,
                  gpu_memory: int | None, host_memory: int | None, pcie_gbps: float | None) -> Any:
    prof = _profile(name, mtime, file, key)
    if any(x is not None for x in (gpus, gpu_memory, host_memory, pcie_gbps)):
        try:
            prof = prof.with_overrides(gpus=gpus, gpu_memory=gpu_memory, host_memory=host_memory,
                                       pcie_gbps=pcie_gbps)
        except ConfigError as e:   # the override is the scenario's doing: name the scenario
            raise ConfigError(file, "hardware", problem=f"override does not fit profile {name}: "
                              f"{e.key}: {e.problem or f'bad value {e.value!r}; allowed: {e.allowed}'}") from None
    return prof


def _stat(path: Path) -> Any:
    """``path.stat()``, or None when there is no such file to read — also for a name the OS refuses
    (too long, embedded NUL): load_profile then reports the name as unknown in one line."""
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


def resolve_profile(s: Scenario) -> Any:
    """The scenario's profile; parsed profiles are cached per file and modification time (sweeps
    resolve the same profile thousands of times; profiles are immutable)."""
    h = s.data.hardware
    ref = h if isinstance(h, HardwareRef) else HardwareRef(profile=h)
    base = Path(s.file).parent if s.file else None
    name = ref.profile
    if base is not None and (name.endswith(".yaml") or "/" in name) and not Path(name).is_absolute():
        cand = base / name
        name = str(cand) if _stat(cand) is not None else name
    key = "hardware" if isinstance(h, str) else "hardware.profile"
    path = Path(name) if (name.endswith((".yaml", ".yml")) or "/" in name) else PROFILES_DIR / f"{name}.yaml"
    st = _stat(path)
    mtime = st.st_mtime if st is not None and path.is_file() else -1.0
    if mtime >= 0:
        from simhete.fileio import note_input
        note_input(path)          # read now or from the cache: an input of this run either way
    return _profile_with(name, mtime, s.file, key, ref.gpus, ref.gpu_memory, ref.host_memory, ref.pcie_gbps)


EAGER_ATTENTION = ("hf-eager", "fused-eager-attn")
"""Frameworks whose attention is a chain of eager ops, never a fused kernel."""


def flash_attention(choice: str, device_type: str, spec: Any, framework: str = "fused") -> bool:
    """Which attention kernel runs (see TrainShape.attention): a fused one (True) or the unfused
    scores-and-softmax path (False: Transformers' eager attention under ``hf-eager``, Megatron-LM's
    unfused attention ops under ``fused-eager-attn``, torch SDPA's math path otherwise).
    ``hf-eager`` and ``fused-eager-attn`` never run a fused kernel; ``attention: flash`` with
    them is a contradiction, refused by :func:`attention_kernel`."""
    if choice != "auto":
        return choice == "flash"
    if framework in EAGER_ATTENTION:
        return False
    return not (device_type == "cpu" and spec.attn_dropout)


# PyTorch's SDPA kernel choice on CUDA (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp):
# the flash kernel needs sm80 or newer (check_flash_attention_hardware_support: check_sm_version
# <sm80, sm121>), the memory-efficient kernel sm50 or newer (check_mem_efficient_hardware_support:
# <sm50, sm121>); FlashAttention-2 itself supports Ampere and newer
# (Dao 2023, flash-attn README "Ampere, Ada, or Hopper GPUs").
FLASH_MIN_CC = 8.0


def attention_kernel(s: Scenario, prof: Any, spec: Any) -> tuple[bool, int]:
    """(fused attention?, log-sum-exp alignment) for the scenario's framework, attention choice
    and device; a one-line ConfigError for combinations that cannot run."""
    tr, fw = s.data.train, s.data.framework
    if fw == "hf-eager" and tr.attention == "flash":
        raise ConfigError(s.file, "train.attention", "flash", allowed=(
            "auto or math with framework hf-eager (Transformers' eager attention has no fused "
            "kernel); use framework hf-sdpa or hf-flash2 for a fused one"))
    if fw == "fused-eager-attn" and tr.attention == "flash":
        raise ConfigError(s.file, "train.attention", "flash", allowed=(
            "auto or math with framework fused-eager-attn (Megatron-LM's unfused attention ops); "
            "use framework fused for a flash kernel"))
    flash = flash_attention(tr.attention, prof.device_type, spec, fw)
    if prof.device_type != "cuda" or fw == "fused" or not flash:
        return flash, 1
    cc = getattr(prof.gpu, "compute_capability", None)   # absent: a GPU of sm80 or newer
    old_gpu = cc is not None and float(cc) < FLASH_MIN_CC
    if tr.dtype == "fp32":
        # flash kernels take fp16/bf16 only (sdp_utils.cpp check_dtypes_low_precision;
        # flash-attn likewise): SDPA runs the memory-efficient kernel on fp32
        if fw == "hf-flash2":
            raise ConfigError(s.file, "framework", fw, allowed=(
                "fused, fused-eager-attn, hf-eager or hf-sdpa with train.dtype fp32: FlashAttention-2 "
                "takes fp16/bf16 only"))
        return flash, 32
    if not old_gpu:
        return flash, 1
    if fw == "hf-flash2":
        raise ConfigError(s.file, "framework", fw, allowed=(
            f"fused, fused-eager-attn, hf-eager or hf-sdpa on {prof.name} (compute capability {cc}): "
            f"FlashAttention-2 needs {FLASH_MIN_CC} or newer"))
    # hf-sdpa below sm80: SDPA runs the memory-efficient kernel (no s×s storage, log-sum-exp
    # padded to 32 queries: _efficient_attention_forward's kAlignLSE)
    return flash, 32


def check_seq_len(spec: Any, seq_len: int, file: str | None, key: str) -> None:
    """A model with learned positions has ``max_seq`` of them: a longer sequence is a one-line
    error naming where the length came from (the scenario's ``train.seq_len``, plan's ``--seq``)."""
    if spec.pos == "learned" and seq_len > spec.max_seq:
        raise ConfigError(file, key, seq_len,
                          allowed=f"at most {spec.max_seq}: {spec.name} has {spec.max_seq} learned positions")


def resolve(s: Scenario, profile: Any = None) -> tuple[Context, Any]:
    """Build the policy's Context (and the policy instance) for a scenario."""
    spec = resolve_model(s)
    prof = profile if profile is not None else resolve_profile(s)
    tr = s.data.train
    cls = get_policy(s.data.policy, s.file)
    if tr.precision == "pure" and tr.dtype != "fp32" and cls.pure_precision:
        raise ConfigError(s.file, "train.precision", "pure",
                          allowed=f"mixed with policy {cls.name} ({cls.pure_precision})")
    check_seq_len(spec, tr.seq_len, s.file, "train.seq_len")
    flash, lse_align = attention_kernel(s, prof, spec)
    if tr.attention_kernel is not None:
        if not flash:
            raise ConfigError(s.file, "train.attention_kernel", tr.attention_kernel, allowed=(
                "no attention_kernel: this scenario's attention is unfused (framework hf-eager, "
                "attention math, or a CPU device with attention dropout)"))
        prof = prof.with_attention_kernel(tr.attention_kernel, s.file)
    if tr.recompute == "op" and not flash:
        raise ConfigError(s.file, "train.recompute", tr.recompute, allowed=(
            "full: per-op selective checkpointing saves a fused attention kernel's output, and this "
            "scenario's attention is unfused (framework hf-eager, attention math, or a CPU device "
            "with attention dropout)"))
    try:
        wl = build_workload(spec, tr.micro_batch, tr.seq_len, tr.dtype, flash_attention=flash,
                            framework=s.data.framework, lse_align=lse_align, precision=tr.precision,
                            cuda=prof.device_type == "cuda", recompute=tr.recompute)
    except ConfigError as exc:
        if exc.file is None and exc.key == "train.recompute":
            raise ConfigError(s.file, exc.key, tr.recompute, allowed=exc.allowed) from None
        raise
    policy = cls(cls.knobs(s.data.knobs, s.file))
    n_gpus = prof.gpu.count
    if n_gpus > 1 and not cls.multi_gpu:
        raise ConfigError(s.file, "hardware", f"{n_gpus} GPUs",
                          allowed=f"policy {cls.name} is single-GPU here; use gpus: 1")
    ctx = Context(s, spec, wl, prof, CostModel(prof), n_gpus, s.data.iterations)
    return ctx, policy


def run(s: Scenario, engine: str = "fast", profile: Any = None, check: bool = True, memo: bool = False) -> Result:
    """Simulate a scenario. ``check`` runs the dry-run checker on the policy's schedule first
    (sweeps turn it off for speed; every policy is property-tested to build valid schedules).
    ``memo`` (sweeps): reuse prices and timelines this process computed for an earlier point
    (:func:`run_schedule`); the result is the same."""
    ctx, policy = resolve(s, profile)
    sched = choose_schedule(policy, ctx)
    problems = check_schedule(sched, capacity=False) if check else []
    if problems:  # a policy bug, not a user error: say exactly what is wrong
        raise SimheteError(f"policy {policy.name} built an invalid schedule: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return run_schedule(s, ctx, sched, engine, memo)


def durations(cost: CostModel, sched: Schedule) -> np.ndarray:
    """``cost.durations(sched)`` (the same floats, and the same ops priced: each distinct ops tuple
    once), priced per entry of the table's distinct ops and gathered: a table bound from a
    structure knows its distinct ops without a pass over its tasks."""
    palette, at = sched.table.distinct_ops()
    return np.array(list(map(cost.ops_seconds, palette)), dtype=np.float64)[at]


MODEL_OPS_KEPT = 1 << 16    # ops tuples a kept CostModel may price before it is replaced by a fresh one
PROFILES_PER_PALETTE = 4    # profiles whose prices a palette keeps (a hardware sweep alternates them)


def kept_model(profile: Any) -> CostModel:
    """A CostModel of ``profile`` kept on it (``profile.memo``) for sweeps: it prices each ops
    tuple once over all the points it serves. Bounded: replaced by a fresh one past
    :data:`MODEL_OPS_KEPT` priced tuples (prices do not depend on what a model priced before)."""
    return _kept(profile)[0]


def _kept(profile: Any) -> tuple[CostModel, dict]:
    """The kept model of ``profile`` and its entries per ops tuple (by content: equal tuples price
    equally): (price, provenance, H2D bytes, D2H bytes)."""
    memo = profile.memo
    got = memo.get("sim.kept")
    if got is None or got[2] != cache.generation or len(got[0]._task_cache) > MODEL_OPS_KEPT \
            or len(got[1]) > MODEL_OPS_KEPT:
        got = memo["sim.kept"] = (CostModel(profile), {}, cache.generation)
    return got[0], got[1]


def memo_durations(cost: CostModel, sched: Schedule) -> tuple[np.ndarray, tuple]:
    """:func:`durations` priced on the kept model of ``cost``'s profile (:func:`kept_model`), and
    the provenance of the distinct ops tuples priced, merged: ``cost.flags_with`` it is
    ``cost.flags`` as if ``cost`` itself had priced the schedule. Prices depend only on the
    profile and the ops, so they are the floats ``cost`` would give."""
    durs, prov, _ = _memo_palette(cost.profile, sched)
    return durs, prov


def _memo_palette(prof: Any, sched: Schedule) -> tuple[np.ndarray, tuple, tuple[np.ndarray, np.ndarray]]:
    """(durations, merged provenance, (H2D, D2H) bytes per palette entry) of ``sched``'s distinct
    ops tuples. Each tuple is priced (and its PCIe bytes summed) once per kept model; the prices
    of a palette are kept on it (``Palette.derived``, for the last few profiles), which the
    tables of one structure bound to one size table share, and a palette made of parts (the
    structure's fixed tuples, the size table's per-block ones) is priced per part, each part's
    prices kept on it."""
    palette, at = sched.table.distinct_ops()
    got = _priced(prof, palette)
    if got.merged is None:
        provs = got.provenance
        got.merged = (frozenset().union(*(p[0] for p in provs)), frozenset().union(*(p[1] for p in provs)))
    return got.seconds[at], got.merged, (got.h2d, got.d2h)


@dataclass(slots=True)
class _Prices:
    """A palette's entries priced on one profile's kept model (kept on the palette)."""

    profile: Any
    seconds: np.ndarray           # per entry
    provenance: list              # per entry
    h2d: np.ndarray               # PCIe bytes per entry
    d2h: np.ndarray
    merged: tuple | None = None   # the entries' provenance merged, made on first use


def _priced(prof: Any, palette: Any) -> _Prices:
    """``palette``'s entries priced on ``prof``'s kept model, kept on the palette."""
    kept_prices = palette.derived.setdefault("sim.prices", [])
    for e in kept_prices:
        if e.profile is prof:
            return e
    if palette.parts is not None:
        parts, pick = palette.parts
        ps = [_priced(prof, p) for p in parts]
        provs = [x for p in ps for x in p.provenance]
        got = _Prices(prof, np.concatenate([p.seconds for p in ps])[pick], list(map(provs.__getitem__, pick.tolist())),
                      np.concatenate([p.h2d for p in ps])[pick], np.concatenate([p.d2h for p in ps])[pick])
    else:
        kept, entries = _kept(prof)
        # a palette may list a tuple more than once (a workload's per-block tuples): look each
        # tuple object up once (the palette holds them while this runs)
        ids = list(map(id, palette))
        found = dict(zip(ids, palette))
        for k, ops in found.items():
            e = entries.get(ops)
            if e is None:
                e = entries[ops] = (kept.ops_seconds(ops), kept.provenance(ops), *ops_pcie_bytes(ops))
            found[k] = e
        es = list(map(found.__getitem__, ids))
        got = _Prices(prof, np.array([e[0] for e in es], dtype=np.float64), [e[1] for e in es],
                      np.array([e[2] for e in es], dtype=np.int64), np.array([e[3] for e in es], dtype=np.int64))
    if len(kept_prices) >= PROFILES_PER_PALETTE:
        del kept_prices[0]
    kept_prices.append(got)
    return got


def run_schedule(s: Scenario, ctx: Context, sched: Schedule, engine: str = "fast", memo: bool = False) -> Result:
    """Simulate ``sched`` and summarise it. ``memo``: prices from :func:`memo_durations`, and the
    timeline of an earlier run of this very Schedule object with this engine, kept on it
    (``sched.derived``; points whose knob values alias get the same schedule from their
    policy's kept structure) when its durations and interference rules are equal: the same timeline, which is
    immutable."""
    cost = ctx.cost
    provs: tuple = ()
    palette_bytes = None
    if memo:
        durs, prov, palette_bytes = _memo_palette(cost.profile, sched)
        provs = (prov,)
        rules = cost.interference()
        derived = sched.derived
        got = derived.get(("sim.timeline", engine))
        if got is not None and got[0] == rules and np.array_equal(got[1], durs):
            tl = got[2]
        else:
            tl = simulate(sched, durs, rules, engine=engine)
            derived[("sim.timeline", engine)] = (rules, durs, tl)
    else:
        tl = simulate(sched, durations(cost, sched), cost.interference(), engine=engine)
    wl = ctx.workload
    per_iter = ctx.n_gpus * ctx.grad_accum   # micro-batches per iteration, all GPUs together
    summary = summarize(
        tl, tokens_per_iter=wl.tokens_per_iter * per_iter,
        samples_per_iter=s.data.train.micro_batch * per_iter,
        model_flops_per_iter=wl.model_flops_per_iter * per_iter,
        peak_flops_per_gpu=cost.peak_flops(s.data.train.dtype), n_gpus=ctx.n_gpus,
        pool_capacity=dict(sched.pools), task_bytes=pcie_task_arrays(sched, palette_bytes),
        flags=sorted(cost.flags_with(*provs)), meta={"scenario": s.name, "policy": s.data.policy,
                                                 "model": ctx.spec.name, "hardware": ctx.profile.name})
    return Result(s, ctx, sched, tl, summary)
