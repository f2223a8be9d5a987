"""Config loading in stages — parse YAML, validate with pydantic, build — with one-line errors.

Every component's YAML schema is a pydantic model with ``extra="forbid"`` (unknown keys are
errors). :func:`validate` turns pydantic's report into a :class:`ConfigError` naming the file, the
dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from simhete.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# libyaml's parser with PyYAML's safe constructor and resolver: the same values as yaml.safe_load,
# ~10x faster (a hardware profile took ~15 ms to parse in pure Python; a sweep process reads a
# profile and a scenario before its first point)
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


class Strict(BaseModel):
    """Base for config schemas: unknown keys are errors, values are not silently coerced from str."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_bytes(value: Any) -> int:
    """``80GiB`` → 85899345920, ``512 GB`` → 512e9, ``1e9`` → 10**9, ints pass through."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        if value < 0 or value != int(value):
            raise ValueError("a whole, non-negative number of bytes")
        return int(value)
    if isinstance(value, str):
        m = _BYTES_RE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    raise ValueError("a size like 80GiB, 512GB, 1e9 or an integer number of bytes")


def load_yaml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """Read a YAML mapping; missing file, malformed YAML or a non-mapping top level is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), None, problem=f"{what} not found")
    text = p.read_text()
    try:
        data = yaml.load(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        # parsed again by the pure-Python loader: its error is the one reported (libyaml words
        # errors otherwise), or its value should it accept what libyaml does not
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            reason = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(str(p), None, problem=f"malformed YAML at {where}{reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(p), None, problem=f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate(model: type[M], data: Any, file: str | None, prefix: str = "") -> M:
    """Validate ``data`` against ``model``; the first problem becomes a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # with a union (hardware: name | mapping) pydantic reports every branch; the deepest
        # location is the branch the user meant (a mapping with one bad key, not "not a string")
        errors = e.errors()
        err = max(errors, key=lambda x: len(x["loc"]))
        branches = _branch_tags()
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (
            "[" in p or p.startswith("function-") or p in branches)))
        key = ".".join(x for x in (prefix, dotted(loc)) if x)
        if err["type"] == "extra_forbidden":
            fields = ", ".join(sorted(_allowed_keys(model, loc[:-1])))
            raise ConfigError(file, key, problem=f"unknown key; allowed keys here: {fields}") from None
        if err["type"] == "missing":
            raise ConfigError(file, key, problem="required key is missing") from None
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ").removeprefix("Input should be ")
        value = err.get("input")
        if isinstance(value, (dict, list)):   # a check across several keys: say what is wrong, not the mapping
            raise ConfigError(file, key, problem=msg) from None
        raise ConfigError(file, key, value, allowed=msg) from None


def _branch_tags() -> set[str]:
    """Names pydantic puts in an error location for the branch of a union: types and schema classes."""
    names = {"str", "int", "float", "bool", "list", "dict", "none"}
    todo = [Strict]
    while todo:
        c = todo.pop()
        names.add(c.__name__)
        todo += c.__subclasses__()
    return names


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            continue
        f = cur.model_fields.get(part)
        if f is None:
            break
        ann = f.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
            for sub in getattr(cand, "__args__", ()):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    cur = sub
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def one_of(name: str, valid: list[str] | tuple[str, ...], file: str | None, key: str, what: str) -> str:
    """Registry lookup: unknown names list the valid ones."""
    if name not in valid:
        raise ConfigError(file, key, name, allowed=f"one of the {what}: " + ", ".join(sorted(valid)))
    return name
