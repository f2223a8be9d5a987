"""Finding and loading hardware profiles: shipped names, ``extends:`` chains (deep merge) and
checks that every ``raw`` file a measured number names exists."""

from __future__ import annotations

from pathlib import Path

from simhete.config import load_yaml, validate
from simhete.errors import ConfigError
from simhete.hw.profile.schema import HardwareProfile

# <repo>/hwprofiles, next to the package (editable install / source checkout).
PROFILES_DIR = Path(__file__).resolve().parents[3] / "hwprofiles"

def list_profiles() -> list[str]:
    """Profile names: ``hwprofiles/*.yaml`` by stem, calibrated ones as ``measured/<stem>``."""
    names = [p.stem for p in PROFILES_DIR.glob("*.yaml")]
    names += [f"measured/{p.stem}" for p in (PROFILES_DIR / "measured").glob("*.yaml")]
    return sorted(names)


def _is_file(p: Path) -> bool:
    """``p.is_file()``, False also for a name the OS refuses (too long, embedded NUL), which
    pathlib raises for: such a name is then reported as an unknown profile in one line."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


MAX_EXTENDS = 4   # a profile extends a profile that extends ...: at most this deep


def _with_base(data: dict, path: Path, seen: tuple[str, ...] = ()) -> dict:
    """``data`` with its ``extends: <profile name>`` resolved: the base profile's mapping (itself
    resolved) deep-merged under this one — mappings merge key by key, anything else (numbers,
    lists, quantities given as scalars) is replaced. A testbed (host, links, GPU count) thus
    states only what differs from the GPU's own profile, and the GPU's numbers live in one file.
    The base is looked up among the shipped profiles, then beside the extending file."""
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(str(path), "extends", base_name, allowed="the name of another profile")
    here = str(path.resolve())
    if here in seen or len(seen) >= MAX_EXTENDS:
        raise ConfigError(str(path), "extends", base_name,
                          problem=f"extends {base_name!r} forms a cycle or a chain deeper than {MAX_EXTENDS}")
    cand = [PROFILES_DIR / f"{base_name}.yaml", path.parent / f"{base_name}.yaml", path.parent / base_name]
    base_path = next((c for c in cand if _is_file(c)), None)
    if base_path is None:
        raise ConfigError(str(path), "extends", base_name, allowed="a profile name: " + ", ".join(list_profiles()))
    base = _with_base(load_yaml(base_path, "hardware profile"), base_path, seen + (here,))
    return _deep_merge(base, data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "value" not in v:
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_profile(name_or_path: str | Path, file: str | None = None, key: str | None = None) -> HardwareProfile:
    """Load a profile by bare name (``h100-sxm``) or by path.

    ``file``/``key`` name where the reference came from (a scenario), for the error when the
    name is unknown.
    """
    s = str(name_or_path)
    valid = list_profiles()
    if s in valid:
        path = PROFILES_DIR / f"{s}.yaml"
    elif s.endswith((".yaml", ".yml")) or _is_file(Path(s)):
        path = Path(s)
    else:
        raise ConfigError(file, key, s, allowed="a profile path or one of: " + ", ".join(valid))
    data = _with_base(load_yaml(path, "hardware profile"), path)
    prof = validate(HardwareProfile, data, str(path))
    for k, p in prof.quantities():
        if p.raw is not None and not (path.parent / p.raw).is_file():
            raise ConfigError(str(path), f"{k}.raw", p.raw,
                              allowed="a raw data file that exists, relative to the profile file")
    prof._file = str(path)
    return prof
