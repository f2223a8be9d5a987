"""The policy registry: the one table from the name a scenario gives (``policy: zero-offload``)
to its :class:`~simhete.policy.base.Policy` class. Every command reads it: the scenario's
``policy``, ``simhete compare`` (all policies, ``--policies``), ``simhete plan``, sweeps and the
error that lists the policies for an unknown name.

A policy enters the table when its class is defined under ``@register("name")``. The shipped
ones are also listed in :data:`SHIPPED` with the module that defines each, so that asking for one
imports only that module (a sweep process of one policy does not import the others) and listing
them imports them all. A policy defined anywhere else registers itself when its module is
imported, at run time (docs/adding-a-policy.md); from then on it is in the table like the shipped
ones.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Callable

from simhete.config import one_of

if TYPE_CHECKING:
    from simhete.policy.base import Policy

_REGISTRY: dict[str, type["Policy"]] = {}

# name -> module under simhete.policy, in the order `simhete plan` tries them when it asks whether
# anything fits (the most memory-frugal and cheapest to simulate first; AutoHete, which solves
# MILPs, last; a policy registered at run time comes after these)
SHIPPED: dict[str, str] = {"zero-infinity": "zero_infinity", "zero-offload": "zero_offload", "chunked": "chunked",
                           "stronghold": "stronghold", "zero-2": "zero2", "gpu-only": "gpu_only",
                           "autohete": "autohete"}


def register(name: str) -> Callable[[type["Policy"]], type["Policy"]]:
    """Class decorator: enter the class in the table under ``name`` (also set as its ``name``)."""
    def deco(cls: type["Policy"]) -> type["Policy"]:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def get_policy(name: str, file: str | None = None, key: str = "policy") -> type["Policy"]:
    """The class registered as ``name``; an unknown name is a one-line ConfigError (``file``,
    ``key``) listing every policy."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and name in SHIPPED:
        import_module(f"simhete.policy.{SHIPPED[name]}")
        cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    load_shipped()                  # an unknown name: the error lists every policy
    one_of(name, list(_REGISTRY), file, key, "policies")
    return _REGISTRY[name]


def list_policies() -> list[str]:
    """Every registered policy's name, sorted: the shipped ones and any registered at run time."""
    load_shipped()
    return sorted(_REGISTRY)


def load_shipped() -> None:
    """Import every shipped policy's module (each registers itself)."""
    for module in SHIPPED.values():
        import_module(f"simhete.policy.{module}")
