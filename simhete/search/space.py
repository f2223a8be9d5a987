"""Sweep files: a base scenario, axes over scenario keys, a strategy, optional memory limits.

    name: LLaMA-2-13B on one GPU
    base: ../scenarios/llama2-13b_h100-pcie_zero-offload.yaml   # a path, or a scenario mapping
    axes:
      policy: [gpu-only, zero-offload]                    # a list
      train.micro_batch: {range: {start: 1, stop: 16, factor: 2}}   # 1, 2, 4, 8, 16
      knobs.reduce_bucket_size: {sample: {low: 1e7, high: 1e9, n: 4, log: true, seed: 0}}
    strategy: grid                                        # or {name: random, samples: 50, seed: 0}
                                                          # or {name: optimize, budget: 60, restarts: 1}
    limits: {gpu_memory: 70GiB}                           # optional: filters best / Pareto

Loaded in stages like a scenario: parse YAML → validate the shape → load the base → check every
axis key names a scenario key and every axis value alone gives a valid scenario. Errors name the
sweep file and the dotted key (``axes.train.micro_batch[2]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from simhete.config import Strict, load_yaml, parse_bytes, validate
from simhete.errors import ConfigError
from simhete.scenario import HardwareRef, ModelRef, Scenario, ScenarioFile, TrainShape, load_scenario, \
    scenario_from_dict

MAX_AXIS_VALUES = 100_000


class RangeSpec(Strict):
    """Inclusive arithmetic (``step``) or geometric (``factor``) progression from start to stop."""

    start: float
    stop: float
    step: float | None = Field(None, gt=0)
    factor: float | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _one(self) -> "RangeSpec":
        if (self.step is None) == (self.factor is None):
            raise ValueError("give exactly one of step or factor")
        if self.stop < self.start:
            raise ValueError("stop must be >= start")
        if self.factor is not None and self.start <= 0:
            raise ValueError("a geometric range needs start > 0")
        return self


class SampleSpec(Strict):
    """``n`` values drawn uniformly (or log-uniformly) from [low, high] with a fixed seed."""

    low: float
    high: float
    n: int = Field(gt=0, le=MAX_AXIS_VALUES)
    log: bool = False
    integer: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _bounds(self) -> "SampleSpec":
        if self.high <= self.low:
            raise ValueError("high must be > low")
        if self.log and self.low <= 0:
            raise ValueError("log sampling needs low > 0")
        return self


class RangeAxis(Strict):
    range: RangeSpec


class SampleAxis(Strict):
    sample: SampleSpec


class Strategy(Strict):
    name: Literal["grid", "random", "optimize"] = "grid"
    samples: int | None = Field(None, gt=0)
    """random: number of distinct grid points drawn."""
    seed: int = 0
    budget: int | None = Field(None, gt=0)
    """optimize: the most points evaluated (cached points count too)."""
    restarts: int = Field(0, ge=0)
    """optimize: extra coordinate searches from random starting points."""

    @model_validator(mode="after")
    def _needs(self) -> "Strategy":
        if self.name == "random" and self.samples is None:
            raise ValueError("strategy random needs samples")
        if self.name != "random" and self.samples is not None:
            raise ValueError(f"samples only applies to strategy random, not {self.name}")
        if self.name != "optimize" and (self.budget is not None or self.restarts):
            raise ValueError(f"budget and restarts only apply to strategy optimize, not {self.name}")
        return self


class Limits(Strict):
    """Memory limits a configuration must respect to count as best / on a Pareto front."""

    gpu_memory: int | None = None
    host_memory: int | None = None

    @field_validator("gpu_memory", "host_memory", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return None if v is None else parse_bytes(v)


class SweepFile(Strict):
    name: str = ""
    description: str = ""
    base: str | dict[str, Any]
    axes: dict[str, list[Any] | RangeAxis | SampleAxis] = Field(min_length=1)
    strategy: Literal["grid", "random", "optimize"] | Strategy = "grid"
    limits: Limits = Field(default_factory=Limits)


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep: the base scenario, the expanded axes (key → values) and the strategy."""

    name: str
    base: Scenario
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    strategy: Strategy
    limits: Limits
    file: str | None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.axes)

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)


def load_sweep(path: str | Path, base_hook: Callable[[Scenario], Scenario] | None = None) -> Sweep:
    """Load and check a sweep file; ``base_hook`` transforms the base scenario first (the CLI's
    ``--deepspeed`` applies a DeepSpeed config there)."""
    data = load_yaml(path, "sweep file")
    return sweep_from_dict(data, str(path), base_hook)


def sweep_from_dict(data: dict[str, Any], file: str | None = None,
                    base_hook: Callable[[Scenario], Scenario] | None = None) -> Sweep:
    sf = validate(SweepFile, data, file)
    base = _load_base(sf.base, file)
    if base_hook is not None:
        base = base_hook(base)
    strategy = sf.strategy if isinstance(sf.strategy, Strategy) else Strategy(name=sf.strategy)
    axes = tuple((key, expand_axis(spec, file, f"axes.{key}")) for key, spec in sf.axes.items())
    for key, values in axes:
        check_axis(base, key, values, file)
    name = sf.name or (Path(file).stem if file else base.name)
    return Sweep(name, base, axes, strategy, sf.limits, file)


def _load_base(ref: str | dict[str, Any], file: str | None) -> Scenario:
    if isinstance(ref, dict):
        return scenario_from_dict(ref, file)
    p = Path(ref)
    if not p.is_absolute() and file:
        p = Path(file).parent / p
    from simhete.fileio import is_file
    if not is_file(p):
        raise ConfigError(file, "base", ref, allowed="a scenario YAML path (relative to the sweep file) "
                                                     "or an inline scenario mapping")
    return load_scenario(p)


def expand_axis(spec: list[Any] | RangeAxis | SampleAxis, file: str | None, key: str) -> tuple[Any, ...]:
    """The axis' values, in order; ints stay ints when every bound is integral."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(file, key, problem="an axis needs at least one value")
        return tuple(spec)
    if isinstance(spec, RangeAxis):
        r = spec.range
        integral = all(float(x).is_integer() for x in (r.start, r.stop, r.step or r.factor))
        out: list[float] = []
        x, k = r.start, 0
        while x <= r.stop * (1 + 1e-12) and len(out) <= MAX_AXIS_VALUES:
            out.append(x)
            k += 1
            x = r.start + k * r.step if r.step is not None else r.start * r.factor ** k
        if len(out) > MAX_AXIS_VALUES:
            raise ConfigError(file, f"{key}.range", problem=f"more than {MAX_AXIS_VALUES} values")
        return tuple(int(round(v)) if integral else v for v in out)
    s = spec.sample
    rng = np.random.default_rng(s.seed)
    u = rng.random(s.n)
    if s.log:
        vals = np.exp(math.log(s.low) + u * (math.log(s.high) - math.log(s.low)))
    else:
        vals = s.low + u * (s.high - s.low)
    if s.integer:
        return tuple(int(round(float(v))) for v in vals)
    return tuple(float(v) for v in vals)


# Scenario keys an axis may name: top-level fields, and the fields of the nested mappings.
_NESTED: dict[str, type[Strict]] = {"train": TrainShape, "model": ModelRef, "hardware": HardwareRef}
_TOP = tuple(f for f in ScenarioFile.model_fields if f not in ("name", "description", "replay"))


def check_axis(base: Scenario, key: str, values: tuple[Any, ...], file: str | None) -> None:
    """The key names a scenario key and every value alone makes a valid scenario (knob values are
    checked per point: whether a knob is valid depends on the point's policy)."""
    parts = key.split(".")
    head = parts[0]
    allowed = ", ".join([*_TOP, *(f"{p}.<{'|'.join(m.model_fields)}>" for p, m in _NESTED.items()),
                         "knobs.<knob>"])
    ok = head in _TOP and (
        len(parts) == 1
        or (head == "knobs" and len(parts) == 2)
        or (head in _NESTED and len(parts) == 2 and parts[1] in _NESTED[head].model_fields))
    if not ok:
        raise ConfigError(file, f"axes.{key}", problem=f"not a scenario key; allowed: {allowed}")
    if head == "knobs":
        return
    from simhete.policy import get_policy
    from simhete.sim import resolve_model, resolve_profile

    for i, v in enumerate(values):
        try:
            s = base.with_changes(**{key: v})
            if head == "policy":
                get_policy(s.data.policy, s.file)
            elif head == "model":
                resolve_model(s)
            elif head == "hardware":
                resolve_profile(s)
        except ConfigError as e:
            bad = repr(e.value)
            bad = bad if len(bad) <= 60 else bad[:57] + "..."
            why = e.problem or (f"bad value {bad}" + (f"; allowed: {e.allowed}" if e.allowed else ""))
            rv = repr(v)
            rv = rv if len(rv) <= 60 else rv[:57] + "..."
            raise ConfigError(file, f"axes.{key}[{i}]", problem=f"{rv}: {why}") from None
