"""Published figures (``scenarios/published/``): their kinds and units, the ``published:`` block's
schema and checks, and the prediction of each figure from a simulation summary. The suite that
runs the cases and measures the error is :mod:`simhete.published`.

A published case is a normal scenario plus a ``published:`` block (docs/validation.md,
"Published measurements"). These figures validate the simulator; nothing here feeds back into a
profile.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from simhete.config import Strict, validate
from simhete.errors import ConfigError

# kind -> (group, {unit: factor to the canonical unit}). Canonical units: seconds, tokens/s,
# samples/s, TFLOPS, a fraction (MFU), bytes, parameters.
_MEM_UNITS = {"GiB": 2**30, "GB": 1e9, "MiB": 2**20, "MB": 1e6}
KINDS: dict[str, tuple[str, dict[str, float]]] = {
    "iteration_time": ("time", {"s": 1.0, "ms": 1e-3}),
    "tokens_per_s": ("time", {"tokens/s": 1.0}),
    "samples_per_s": ("time", {"samples/s": 1.0}),
    "tflops_per_gpu": ("time", {"TFLOPS": 1.0}),
    "mfu": ("time", {"%": 1e-2}),
    "peak_gpu_memory": ("memory", _MEM_UNITS),
    "peak_host_memory": ("memory", _MEM_UNITS),
    "largest_model": ("memory", {"B": 1e9}),
}
GROUPS = ("time", "memory")
THROUGHPUT_KINDS = ("tokens_per_s", "samples_per_s")          # may be per GPU or whole job
MEASURES = {"peak_gpu_memory": ("allocated", "reserved", "device"), "peak_host_memory": ("rss",)}
DEFAULT_MEASURE = {"peak_gpu_memory": "allocated", "peak_host_memory": "rss"}

# What each memory measure leaves out of the simulated peak, by memory class name (names, not
# MemClass members: a class absent from this version's MemClass is simply never in a breakdown).
# allocated = torch.cuda.max_memory_allocated: tensors only; reserved = max_memory_reserved: plus
# the caching allocator's reserved-but-unallocated blocks; device = nvidia-smi: plus the CUDA
# context and library workspaces; rss = the host process: everything booked on the host.
MEASURE_EXCLUDES: dict[str, tuple[str, ...]] = {
    "allocated": ("cuda_context", "allocator_slack"),
    "reserved": ("cuda_context",),
    "device": (),
    "rss": (),
}


# -- schema --------------------------------------------------------------------------------------


class Figure(Strict):
    kind: Literal["iteration_time", "tokens_per_s", "samples_per_s", "tflops_per_gpu", "mfu",
                  "peak_gpu_memory", "peak_host_memory", "largest_model"]
    value: float
    unit: str
    per_gpu: bool | None = None
    measure: str | None = None
    note: str = ""

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError("a positive number")
        return v


class Published(Strict):
    source: str = Field(min_length=1)
    url: str = Field(min_length=1)
    conditions: str = Field(min_length=1)
    assumed: str
    figures: list[Figure] = Field(min_length=1)


class NotExpressible(Strict):
    source: str = Field(min_length=1)
    url: str = Field(min_length=1)
    figure: str = Field(min_length=1)
    why: str = Field(min_length=1)


def check_figure(f: Figure, file: str | None, key: str) -> Figure:
    """The checks across a figure's keys (unit per kind, measure and per_gpu where they apply);
    returns the figure with ``per_gpu`` and ``measure`` defaulted."""
    units = KINDS[f.kind][1]
    if f.unit not in units:
        raise ConfigError(file, f"{key}.unit", f.unit, allowed=f"for kind {f.kind}: {', '.join(units)}")
    if f.measure is not None and f.kind not in MEASURES:
        raise ConfigError(file, f"{key}.measure", f.measure,
                          allowed=f"only for kinds {', '.join(MEASURES)}; remove it for kind {f.kind}")
    if f.measure is not None and f.measure not in MEASURES[f.kind]:
        raise ConfigError(file, f"{key}.measure", f.measure, allowed=f"for kind {f.kind}: "
                          f"{', '.join(MEASURES[f.kind])}")
    if f.per_gpu is not None and f.kind not in THROUGHPUT_KINDS:
        raise ConfigError(file, f"{key}.per_gpu", f.per_gpu,
                          allowed=f"only for kinds {', '.join(THROUGHPUT_KINDS)}; remove it for kind {f.kind}")
    upd: dict[str, Any] = {}
    if f.kind in THROUGHPUT_KINDS and f.per_gpu is None:
        upd["per_gpu"] = False
    if f.kind in MEASURES and f.measure is None:
        upd["measure"] = DEFAULT_MEASURE[f.kind]
    return f.model_copy(update=upd) if upd else f


def parse_published(data: Any, file: str | None) -> Published:
    """The ``published:`` block of a scenario file, checked; ConfigError naming the dotted key."""
    if data is None:
        raise ConfigError(file, "published", problem="required key is missing; a published case "
                          "needs a published: block (source, url, conditions, assumed, figures)")
    if isinstance(data, dict) and data.get("figures") == []:
        raise ConfigError(file, "published.figures", [], allowed="one or more figures {kind, value, unit}")
    pub = validate(Published, data, file, prefix="published")
    figs = [check_figure(f, file, f"published.figures[{i}]") for i, f in enumerate(pub.figures)]
    return pub.model_copy(update={"figures": figs})


def load_not_expressible(path: Path) -> list[NotExpressible]:
    """``not-expressible.yaml``: a list of {source, url, figure, why}."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), None, problem=f"malformed YAML{where}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(str(path), None, problem=f"expected a list of {{source, url, figure, why}}, "
                          f"got {type(data).__name__}")
    return [validate(NotExpressible, d, str(path), prefix=f"[{i}]") for i, d in enumerate(data)]


# -- prediction ----------------------------------------------------------------------------------


OOM = "OOM"


def memory_peak(summary: Any, pool: str, measure: str) -> float | None:
    """Peak bytes of ``pool`` ("gpu": the largest over the GPUs; "cpu": the host) as ``measure``
    sees it: the simulated peak less the classes the measure does not see
    (:data:`MEASURE_EXCLUDES`). ``None`` when the summary has no peak (a run that stopped at once)."""
    drop = MEASURE_EXCLUDES[measure]
    vals = [p.peak_bytes - sum(p.peak_by_class_bytes.get(c, 0) for c in drop)
            for name, p in summary.memory.items()
            if (name.startswith("gpu") if pool == "gpu" else name == pool)]
    best = max(vals, default=0)
    return float(best) if best > 0 else None


def predict(fig: Figure, summary: Any) -> float | str:
    """The predicted value of ``fig`` in its canonical unit (see :data:`KINDS`), or ``"OOM"``.
    ``largest_model`` is not predicted from one summary (see
    :func:`simhete.search.largest.largest_model`)."""
    k = fig.kind
    if k in ("peak_gpu_memory", "peak_host_memory"):
        got = memory_peak(summary, "gpu" if k == "peak_gpu_memory" else "cpu", fig.measure or DEFAULT_MEASURE[k])
        return OOM if got is None else got
    if not summary.fits:
        return OOM
    if k == "iteration_time":
        return float(summary.iter_time_s)
    if k in THROUGHPUT_KINDS:
        v = summary.tokens_per_s if k == "tokens_per_s" else summary.samples_per_s
        return float(v) / (summary.n_gpus if fig.per_gpu else 1)
    if k == "tflops_per_gpu":
        return float(summary.tflops_per_gpu)
    if k == "mfu":
        return float(summary.mfu)
    raise ValueError(f"no prediction from a summary for kind {k}")
