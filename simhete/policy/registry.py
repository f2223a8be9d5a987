"""Policy registry keyed by the exact string used in scenario YAML (``policy: zero-offload``)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Callable

from simhete.config import one_of

if TYPE_CHECKING:
    from simhete.policy.base import Policy

_REGISTRY: dict[str, type["Policy"]] = {}


def register(name: str) -> Callable[[type["Policy"]], type["Policy"]]:
    def deco(cls: type["Policy"]) -> type["Policy"]:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


# The module of each shipped policy, so that asking for one imports only it (a sweep process of one
# policy does not import the others); simhete.policy.builtin imports them all.
BUILTIN_MODULES = {"autohete": "autohete", "chunked": "chunked", "gpu-only": "gpu_only",
                   "stronghold": "stronghold", "zero-infinity": "zero_infinity", "zero-offload": "zero_offload"}


def get_policy(name: str, file: str | None = None, key: str = "policy") -> type["Policy"]:
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and name in BUILTIN_MODULES:
        import_module(f"simhete.policy.{BUILTIN_MODULES[name]}")
        cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    _load_builtin()                 # an unknown name: the error lists every policy
    one_of(name, list(_REGISTRY), file, key, "policies")
    return _REGISTRY[name]


def list_policies() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import simhete.policy.builtin  # noqa: F401  (registers every shipped policy)
