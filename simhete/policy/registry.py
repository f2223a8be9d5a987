"""Policy registry keyed by the exact string used in scenario YAML (``policy: zero-offload``)."""

from __future__ import annotations

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


def get_policy(name: str, file: str | None = None, key: str = "policy") -> type["Policy"]:
    _load_builtin()
    one_of(name, list(_REGISTRY), file, key, "policies")
    return _REGISTRY[name]


def list_policies() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import simhete.policy.builtin  # noqa: F401  (registers every shipped policy)
