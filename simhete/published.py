"""Published end-to-end measurements (``scenarios/published/``): their schema, the prediction of
each published figure, the error, and the suite's error per figure group and hardware class.

A published case is a normal scenario plus a ``published:`` block (docs/validation.md,
"Published measurements"). These figures validate the simulator; nothing here feeds back into a
profile.

Error of one figure: ``(predicted - published) / published``, in percent, for every kind. For
time (``iteration_time``) a positive error means the simulator predicts a slower run; for
throughput kinds (tokens/s, samples/s, TFLOPS, MFU) a positive error means it predicts a faster
run; for memory kinds it predicts more memory, for ``largest_model`` a larger model.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from simhete.config import Strict, load_yaml, validate
from simhete.errors import ConfigError
from simhete.search.largest import LARGEST_MAX_DEPTH, LARGEST_MAX_TRIALS, largest_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = "scenarios/published"
SUMMARY_FILE = "suite-error.yaml"
NOT_EXPRESSIBLE_FILE = "not-expressible.yaml"

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

# Hardware class of a GPU model string (profile ``gpu.model``): the first pattern that matches.
# A CPU acting as the device is the class "CPU"; a model matching none is its own class.
HW_CLASSES: tuple[tuple[str, str], ...] = (
    (r"\bGH200\b", "GH200"), (r"\bH200\b", "H200"), (r"\bH100\b", "H100"), (r"\bA100\b", "A100"),
    (r"\bV100\b", "V100"), (r"\bP100\b", "P100"), (r"RTX\s*4090", "RTX 4090"),
    (r"RTX\s*3090", "RTX 3090"), (r"RTX\s*A6000|\bA6000\b", "RTX A6000"), (r"\bL40S?\b", "L40"),
    (r"\bL4\b", "L4"), (r"\bA40\b", "A40"), (r"\bA10G?\b", "A10"), (r"\bT4\b", "T4"),
)



def hardware_class(profile: Any) -> str:
    """``A100`` for "NVIDIA A100-PCIE-40GB", ``CPU`` for a CPU device (see :data:`HW_CLASSES`)."""
    if getattr(profile, "device_type", "cuda") == "cpu":
        return "CPU"
    model = str(profile.gpu.model)
    for pat, cls in HW_CLASSES:
        if re.search(pat, model, re.IGNORECASE):
            return cls
    return model


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


# -- the suite -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    case: str
    file: str
    hardware: str            # hardware class
    kind: str
    group: str
    unit: str
    published: float         # in ``unit``
    predicted: float | None  # in ``unit``; None: OOM (or nothing fits, for largest_model)
    note: str = ""
    detail: str = ""         # the memory measure, or "per GPU" for a throughput
    source: str = ""         # the case's published.source and published.url
    url: str = ""

    @property
    def error_pct(self) -> float | None:
        """(predicted - published) / published × 100; None when there is no prediction (a miss)."""
        if self.predicted is None:
            return None
        return (self.predicted - self.published) / self.published * 100.0

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind

    def to_dict(self) -> dict[str, Any]:
        e = self.error_pct
        return {"case": self.case, "file": self.file, "hardware": self.hardware, "kind": self.kind,
                "group": self.group, "unit": self.unit, "published": self.published,
                "predicted": _r(self.predicted) if self.predicted is not None else OOM,
                "error_pct": _r(e) if e is not None else None, "detail": self.detail, "note": self.note}


@dataclass(frozen=True)
class Suite:
    directory: str
    rows: list[Row]
    not_expressible: list[NotExpressible] = field(default_factory=list)

    @property
    def cases(self) -> list[str]:
        return sorted({r.case for r in self.rows})

    def aggregates(self) -> dict[str, Any]:
        """Per group, then per hardware class and group: n, OOM misses, median and max |error| %."""
        out: dict[str, Any] = {"groups": {}, "hardware": {}}
        for g in GROUPS:
            rows = [r for r in self.rows if r.group == g]
            if rows:
                out["groups"][g] = stats(rows)
        for hw in sorted({r.hardware for r in self.rows}):
            per = {}
            for g in GROUPS:
                rows = [r for r in self.rows if r.group == g and r.hardware == hw]
                if rows:
                    per[g] = stats(rows)
            out["hardware"][hw] = per
        return out

    def to_dict(self) -> dict[str, Any]:
        agg = self.aggregates()
        return {"directory": self.directory, "error": "(predicted - published) / published, percent",
                "rows": [r.to_dict() for r in self.rows], "groups": _json_stats(agg["groups"]),
                "hardware": {h: _json_stats(v) for h, v in agg["hardware"].items()},
                "not_expressible": [n.model_dump() for n in self.not_expressible]}


def stats(rows: list[Row]) -> dict[str, Any]:
    """n, misses (no prediction: OOM where the source ran), median and max |error| % — a miss
    counts as an infinite error, so misses raise the median and make the max infinite."""
    errs = [abs(e) if (e := r.error_pct) is not None else math.inf for r in rows]
    return {"n": len(rows), "misses": sum(1 for r in rows if r.predicted is None),
            "median": statistics.median(errs), "max": max(errs)}


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def _json_stats(groups: dict[str, Any]) -> dict[str, Any]:
    return {g: {k: (None if isinstance(v, float) and math.isinf(v) else (_r(v) if isinstance(v, float) else v))
                for k, v in st.items()} for g, st in groups.items()}


def case_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name not in (SUMMARY_FILE, NOT_EXPRESSIBLE_FILE))


def resolve_dir(d: str | None) -> Path:
    """The suite directory: as given (relative to the working directory), or the default
    ``scenarios/published`` here, else the repository's."""
    if d is None or d == DEFAULT_DIR:
        p = Path(DEFAULT_DIR)
        return p if p.is_dir() else REPO_ROOT / DEFAULT_DIR
    return Path(d)


def run_suite(directory: Path, engine: str = "fast", *, largest_max_trials: int = LARGEST_MAX_TRIALS,
              progress: Any = None) -> Suite:
    """Every case of ``directory``: its figures, published and predicted."""
    from simhete.scenario import load_scenario
    from simhete.sim import run

    from simhete.fileio import is_dir, is_file

    if not is_dir(directory):
        raise ConfigError(str(directory), None, problem="published suite directory not found")
    files = case_files(directory)
    ne_path = directory / NOT_EXPRESSIBLE_FILE
    ne = load_not_expressible(ne_path) if is_file(ne_path) else []
    if not files and not ne:
        raise ConfigError(str(directory), None, problem="no published cases (*.yaml) in this directory")
    # every file is checked before anything is simulated: a bad file fails at once
    cases = []
    for f in files:
        s = load_scenario(f)
        cases.append((s, parse_published(load_yaml(f, "scenario file").get("published"), str(f))))
    rows: list[Row] = []
    for i, (s, pub) in enumerate(cases):
        res = run(s, engine=engine)
        hw = hardware_class(res.context.profile)
        case = Path(s.file).stem
        for fig in pub.figures:
            group, units = KINDS[fig.kind]
            factor = units[fig.unit]
            note = fig.note
            if fig.kind == "largest_model":
                lg = largest_model(s, engine, max_trials=largest_max_trials)
                pred: float | str = OOM if lg.params is None else float(lg.params)
                if not lg.complete or lg.capped:
                    note = (note + "; " if note else "") + (
                        "search stopped by its trial cap: a lower bound" if not lg.complete
                        else f"depth {LARGEST_MAX_DEPTH} (the cap) fits: a lower bound")
            else:
                pred = predict(fig, res.summary)
            detail = fig.measure or ("per GPU" if fig.per_gpu else "")
            rows.append(Row(case, str(s.file), hw, fig.kind, group, fig.unit, fig.value,
                            None if pred == OOM else float(pred) / factor, note, detail,
                            pub.source, pub.url))
        if progress is not None:
            progress(i + 1, len(cases))
    return Suite(str(directory), rows, ne)


# -- the documented figures (suite-error.yaml) ---------------------------------------------------


def summary_document(suite: Suite) -> dict[str, Any]:
    agg = suite.aggregates()

    def clean(groups: dict[str, Any]) -> dict[str, Any]:
        return {g: {"n": st["n"], "misses": st["misses"], "median": _yaml_num(st["median"]),
                    "max": _yaml_num(st["max"])} for g, st in groups.items()}
    return {"error": "|predicted - published| / published, percent; a miss (OOM predicted) counts as infinite",
            "cases": suite.cases, "groups": clean(agg["groups"]),
            "hardware": {h: clean(v) for h, v in agg["hardware"].items()}}


def _yaml_num(x: float) -> float:
    return x if math.isinf(x) else round(x, 2)


def write_summary(suite: Suite, path: Path) -> str | None:
    """Write ``suite-error.yaml`` atomically; returns the previous file's group line (or None)."""
    from simhete.fileio import write_atomic

    old = None
    if path.is_file():
        try:
            prev = yaml.safe_load(path.read_text()) or {}
            old = group_text(prev.get("groups") or {})
        except yaml.YAMLError:
            old = "(unreadable)"
    head = ("# The published suite's measured error, written by `simhete validate --published "
            "--write-summary`.\n# tests/test_published.py fails if a group's median |error| rises "
            "above these figures or a case disappears.\n")
    write_atomic(path, head + yaml.safe_dump(summary_document(suite), sort_keys=False, width=100))
    return old


def read_summary(path: Path | None = None) -> dict[str, Any] | None:
    path = path if path is not None else REPO_ROOT / DEFAULT_DIR / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(str(path), None, problem="malformed YAML; regenerate it with "
                          "`simhete validate --published --write-summary`") from None
    return data if isinstance(data, dict) else None


def _pct(x: Any) -> str:
    return "OOM" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.1f} %"


def group_text(groups: dict[str, Any]) -> str:
    """``median 9.1 %, max 21.0 % over 12 figures (time); ...``"""
    parts = []
    for g in GROUPS:
        st = groups.get(g)
        if st:
            miss = f", {st['misses']} predicted OOM" if st.get("misses") else ""
            parts.append(f"median {_pct(st['median'])}, max {_pct(st['max'])} over {st['n']} "
                         f"figure{'s' if st['n'] != 1 else ''}{miss} ({g})")
    return "; ".join(parts)


def suite_error_for(profile: Any, path: Path | None = None) -> dict[str, Any]:
    """What the published suite measured on ``profile``'s hardware class: ``{hardware, groups,
    line}`` (groups empty when the suite has no case on that class)."""
    hw = hardware_class(profile)
    doc = read_summary(path)
    groups = ((doc or {}).get("hardware") or {}).get(hw) or {}
    if doc is None:
        line = (f"published suite on {hw}: no measured suite error ({DEFAULT_DIR}/{SUMMARY_FILE} "
                "missing)")
    elif not groups:
        line = f"published suite on {hw}: no published case on this hardware class"
    else:
        line = f"published suite on {hw}: {group_text(groups)}"
    return {"hardware": hw, "groups": {g: {k: (None if isinstance(v, float) and math.isinf(v) else v)
                                           for k, v in st.items()} for g, st in groups.items()},
            "line": line}
