"""Published end-to-end measurements (``scenarios/published/``): the suite of published cases, the
error of each figure, and the suite's error per figure group and hardware class (the schema of a
``published:`` block and the prediction of each figure: :mod:`simhete.published_figures`).

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
from typing import Any

import yaml

from simhete.config import load_yaml
from simhete.errors import ConfigError
from simhete.published_figures import (GROUPS, KINDS, OOM, NotExpressible, load_not_expressible, parse_published,
                                       predict)
from simhete.search.largest import LARGEST_MAX_DEPTH, LARGEST_MAX_TRIALS, largest_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = "scenarios/published"
SUMMARY_FILE = "suite-error.yaml"
NOT_EXPRESSIBLE_FILE = "not-expressible.yaml"

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
        # libyaml's parser where PyYAML has it (the same safe constructors): plan and compare read
        # this file on every run, and the pure-Python parser takes ~30 ms for it
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
