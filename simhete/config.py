"""Config loading in stages — read, parse YAML/JSON, validate with pydantic, build — with one-line errors.

One input layer reads every file simhete takes (scenario, sweep, profile YAML; Hugging Face and
DeepSpeed JSON): :func:`read_input` reads the bytes and decodes UTF-8 (a binary file, Latin-1 or
UTF-16 text, a directory or an unreadable file is a one-line error); :func:`load_yaml` and
:func:`load_json` bound the nesting depth (:data:`MAX_DEPTH`) and, for YAML, the size the aliases
expand to (:data:`MAX_NODES`, against "billion laughs") while parsing, and refuse duplicate keys,
and for JSON ``NaN``/``Infinity`` and numbers that overflow.

Every component's YAML schema is a pydantic model with ``extra="forbid"`` (unknown keys are
errors), no booleans where a number belongs, and no NaN or infinity in a number.
:func:`validate` turns pydantic's report into a :class:`ConfigError` naming the file, the dotted
key, the bad value and what is allowed.
"""

from __future__ import annotations

import json
import math
import re
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from simhete.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# libyaml's parser with PyYAML's safe constructor and resolver: the same values as yaml.safe_load,
# ~10x faster (a hardware profile took ~15 ms to parse in pure Python; a sweep process reads a
# profile and a scenario before its first point)
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 64               # nesting of mappings and lists in any input file
MAX_NODES = 1_000_000        # values a YAML document may expand to, its aliases expanded
MAX_INPUT_BYTES = 64 * 2**20  # simhete's inputs are small text files
MAX_BYTES = 2**60            # a memory size (1 EiB): beyond any machine

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


class Strict(BaseModel):
    """Base for config schemas: unknown keys are errors, no NaN or infinity in a float, and a
    boolean is refused where the key does not take one (pydantic would read ``true`` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) and info.field_name and not _takes_bool(cls, info.field_name):
            raise ValueError("a number or name, not a boolean (true/false)")
        return v


@lru_cache(maxsize=None)
def _takes_bool(cls: type[BaseModel], name: str) -> bool:
    f = cls.model_fields.get(name)
    return f is None or _admits_bool(f.annotation)


def _admits_bool(ann: Any) -> bool:
    if ann is bool or ann is Any or ann is object:
        return True
    if get_origin(ann) is Literal:
        return any(isinstance(a, bool) for a in get_args(ann))
    if get_origin(ann) in (list, tuple, dict, set, frozenset):   # a container never takes a bare bool
        return False
    return any(_admits_bool(a) for a in get_args(ann))


def parse_bytes(value: Any) -> int:
    """``80GiB`` → 85899345920, ``512 GB`` → 512e9, ``1e9`` → 10**9, ints pass through."""
    too_big = "a size up to 2**60 bytes (1 EiB), like 80GiB, 512GB or 1e9"
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        if value > MAX_BYTES:
            raise ValueError(too_big)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(too_big)
        if value < 0 or value != int(value):
            raise ValueError("a whole, non-negative number of bytes")
        if value > MAX_BYTES:
            raise ValueError(too_big)
        return int(value)
    if isinstance(value, str):
        m = _BYTES_RE.match(value)
        if m:
            x = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
            if not math.isfinite(x) or x > MAX_BYTES:
                raise ValueError(too_big)
            return int(x)
    raise ValueError("a size like 80GiB, 512GB, 1e9 or an integer number of bytes")


def read_input(path: str | Path, what: str = "file") -> str:
    """The text of an input file: read as bytes, decoded as UTF-8; anything else is a ConfigError."""
    from simhete.fileio import note_input

    p = Path(path)
    file = str(p)
    try:
        is_dir = stat.S_ISDIR(p.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(file, None, problem=f"{what} not found") from None
    except OSError as e:             # a name too long for the file system, a loop of links, ...
        raise ConfigError(file, None, problem=f"cannot read the {what}: {e.strerror}") from None
    except ValueError:               # a NUL byte, which no file name holds ("\0" in YAML)
        raise ConfigError(repr(file), None, problem=f"no {what} has a NUL byte in its name") from None
    if is_dir:
        raise ConfigError(file, None, problem=f"{what} is a directory, not a file")
    try:
        if p.stat().st_size > MAX_INPUT_BYTES:
            raise ConfigError(file, None, problem=f"{what} is over {MAX_INPUT_BYTES // 2**20} MiB; simhete's "
                                                  "inputs are small text files")
        raw = p.read_bytes()
    except PermissionError:
        raise ConfigError(file, None, problem=f"cannot read the {what}: permission denied") from None
    except OSError as e:
        raise ConfigError(file, None, problem=f"cannot read the {what}: {e.strerror}") from None
    note_input(p)
    if raw[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(file, None, problem=f"{what} is UTF-16 or UTF-32 text (it starts with a byte-order "
                                              "mark); save it as UTF-8")
    if b"\0" in raw:
        raise ConfigError(file, None, problem=f"{what} is a binary file, not UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(file, None, problem=(
            f"{what} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}; Latin-1 or "
            "another encoding?); save it as UTF-8")) from None


class _NoDuplicates:
    """A YAML constructor mixin: a key given twice in one mapping is an error (not: the last wins)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)  # type: ignore[attr-defined]
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:
                    continue        # an unhashable key: the base constructor reports it
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (a key may appear once in a mapping)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


class _FastLoader(_NoDuplicates, _FAST_LOADER):  # type: ignore[valid-type,misc]
    pass


class _PyLoader(_NoDuplicates, yaml.SafeLoader):
    pass


for _L in (_FastLoader, _PyLoader):
    _L.add_constructor("tag:yaml.org,2002:map", yaml.SafeLoader.construct_yaml_map)


def _check_events(text: str, file: str) -> None:
    """Walk the YAML events (nothing is built): nesting over MAX_DEPTH, or aliases expanding the
    document past MAX_NODES values, is a ConfigError before any object is made."""
    sizes: list[list[Any]] = [[0, None]]      # per open collection: [values inside, its anchor]
    anchors: dict[str, int] = {}
    for ev in yaml.parse(text, Loader=_FAST_LOADER):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            sizes.append([1, ev.anchor])
            if len(sizes) - 1 > MAX_DEPTH:
                line = ev.start_mark.line + 1 if ev.start_mark else "?"
                raise ConfigError(file, None, problem=f"nested more than {MAX_DEPTH} levels deep (line {line})")
            continue
        if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            n, anchor = sizes.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            n, anchor = 1, ev.anchor
        elif isinstance(ev, yaml.AliasEvent):
            n, anchor = anchors.get(ev.anchor or "", 1), None
        else:
            continue
        if anchor is not None:
            anchors[anchor] = n
        sizes[-1][0] += n
        if sizes[-1][0] > MAX_NODES:
            raise ConfigError(file, None, problem=(
                f"expands to more than {MAX_NODES:,} values (aliases of aliases, as in a "
                "\"billion laughs\" document?)"))


def load_yaml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """Read a YAML mapping through the input layer; unreadable, badly encoded, too deep, too
    large once its aliases expand, malformed, with a duplicate key, or not a mapping at the top
    level: a one-line ConfigError."""
    p = Path(path)
    text = read_input(p, what)
    data = parse_yaml(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError(str(p), None, problem=f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_yaml(text: str, file: str | None) -> Any:
    """YAML text to values, with the input layer's bounds (depth, alias expansion, duplicates)."""
    try:
        _check_events(text, file or "")
        return yaml.load(text, Loader=_FastLoader)
    except yaml.YAMLError:
        # parsed again by the pure-Python loader: its error is the one reported (libyaml words
        # errors otherwise), or its value should it accept what libyaml does not
        try:
            return yaml.load(text, Loader=_PyLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            reason = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(file, None, problem=f"malformed YAML at {where}{reason}") from None
        except RecursionError:
            raise ConfigError(file, None, problem=f"nested more than {MAX_DEPTH} levels deep") from None


def _json_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (checked before json parses recursively)."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """Read a JSON object through the input layer: as :func:`load_yaml`, and ``NaN``,
    ``Infinity`` and numbers too large for a float are errors."""
    p = Path(path)
    file = str(p)
    text = read_input(p, what)
    if _json_depth(text) > MAX_DEPTH:
        raise ConfigError(file, None, problem=f"nested more than {MAX_DEPTH} levels deep")

    def constant(name: str) -> Any:
        raise ConfigError(file, None, problem=f"{name} is not a JSON number; give a finite number")

    def num(s: str) -> float:
        x = float(s)
        if not math.isfinite(x):
            raise ConfigError(file, None, problem=f"the number {s[:40]} is too large for a float")
        return x

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ConfigError(file, None, problem=f"duplicate key {k!r} (a key may appear once in an object)")
            out[k] = v
        return out
    try:
        data = json.loads(text, parse_constant=constant, parse_float=num, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(file, None, problem=f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:       # an integer of more than 4,300 digits
        raise ConfigError(file, None, problem=f"a number is too long: {str(e).split(';')[0]}") from None
    except RecursionError:
        raise ConfigError(file, None, problem=f"nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(data, dict):
        raise ConfigError(file, None, problem="expected a JSON object at the top level")
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
