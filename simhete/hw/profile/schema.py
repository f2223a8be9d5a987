"""The whole hardware profile (``hwprofiles/<name>.yaml``): its sections, its provenance walk and
what-if copies. Units live in key names: ``_gbps`` is 10^9 bytes/s, ``_us`` microseconds,
``_bytes`` bytes, ``tflops`` 10^12 FLOP/s. The full schema is documented in docs/profiles.md.
"""

from __future__ import annotations

import fnmatch
from functools import cached_property
from typing import Any, Iterator, Literal

from pydantic import Field, PrivateAttr, model_validator

from simhete.config import Strict, validate
from simhete.errors import ConfigError
from simhete.hw.profile.gpu import AttentionKernels, Gpu
from simhete.hw.profile.host import Host
from simhete.hw.profile.links import Collectives, Interference, Links, Topology
from simhete.hw.profile.quantity import Provenance
from simhete.hw.profile.tables import PricingTables

_DERIVED = ("pricing", "attention_variants", "memo")   # kept on a profile object, dropped by copies and pickles


def _streams(gpus: int) -> list[str]:
    """Every stream name a schedule can use (simhete.schedule.model.STREAM_RE) for ``gpus`` GPUs."""
    out = [f"gpu{i}.{q}" for i in range(gpus) for q in ("compute", "h2d", "d2h", "comm")]
    return out + ["cpu.optim", "nvlink", "nvme"]


class HardwareProfile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    validated: bool = False
    device_type: Literal["cuda", "cpu"] = "cuda"
    gpu: Gpu
    host: Host
    links: Links | None = None
    collectives: Collectives | None = None
    topology: Topology | None = None
    # a plain default, which pydantic copies per instance: with default_factory=list, building the
    # schema asks inspect for list's signature, which compiles the tokenizer's regexes (~10 ms)
    interference: list[Interference] = []

    _file: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _checks(self) -> "HardwareProfile":
        if self.device_type == "cuda" and self.links is None:
            raise ValueError("device_type cuda needs links: {h2d, d2h, duplex_factor}")
        streams = _streams(self.gpu.count)
        for i, rule in enumerate(self.interference):
            for role in ("victim", "aggressor"):
                glob = getattr(rule, role)
                if not fnmatch.filter(streams, glob):
                    raise ValueError(f"interference[{i}].{role} {glob!r} matches no stream "
                                     f"(streams look like gpu0.compute, gpu0.h2d, cpu.optim)")
        return self

    @property
    def file(self) -> str | None:
        """The YAML file this profile was loaded from, if any."""
        return self._file

    # -- derived for pricing ------------------------------------------------------------------

    @cached_property
    def pricing(self) -> PricingTables:
        """The profile's numbers in the form :class:`simhete.hw.cost.CostModel` reads them,
        derived on first use and kept on this profile object: a profile is immutable (a frozen
        model), so every cost model of it shares them (a sweep builds a model per point). A copy
        does not inherit them (see ``__copy__``): ``model_copy(update=...)`` has other numbers."""
        return PricingTables(self)

    @cached_property
    def attention_variants(self) -> dict[str, "HardwareProfile"]:
        """The copies :meth:`with_attention_kernel` made of this profile, by kernel name: one per
        kernel, kept on this profile object (like :attr:`pricing`), so every scenario naming a
        kernel on this profile gets the same copy and its memoised prices."""
        return {}

    @cached_property
    def memo(self) -> dict[str, Any]:
        """What other layers derive from this profile alone and keep on it (keys name their
        owner, e.g. ``"sim.kept"``: :func:`simhete.sim.kept_model`'s cost model and its prices per
        ops tuple): it dies with this profile object, and copies and pickles start without it."""
        return {}

    def __copy__(self) -> "HardwareProfile":
        out = super().__copy__()
        for k in _DERIVED:
            out.__dict__.pop(k, None)
        return out

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> "HardwareProfile":
        out = super().__deepcopy__(memo)
        for k in _DERIVED:
            out.__dict__.pop(k, None)
        return out

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k not in _DERIVED}
        return state

    # -- provenance ---------------------------------------------------------------------------

    def quantities(self) -> Iterator[tuple[str, Provenance]]:
        """Every provenance-carrying node (quantities and tables) with its dotted key."""
        yield from _walk(self, "")

    def provenance_flags(self) -> list[str]:
        """Every number not measured on the device, as ``"dotted.key (source)"``, sorted."""
        flags = {f"{k} ({p.source})" for k, p in self.quantities() if not p.calibrated}
        _, used, default = self.host.adam_rate()
        if default is not None:
            flags.add(default)
        for key, prov in used:      # e.g. a per-core rate taken from the simd class (not in the profile)
            if not prov.calibrated:
                flags.add(f"{key} ({prov.source})")
        return sorted(flags)

    # -- what-if ------------------------------------------------------------------------------

    def with_attention_kernel(self, name: str, file: str | None = None,
                              key: str = "train.attention_kernel") -> "HardwareProfile":
        """A copy whose ``gpu.attention`` rates are those of ``gpu.attention.kernels.<name>``
        (a scenario that names the attention kernel its framework runs), made once per kernel
        (:attr:`attention_variants`); a one-line ConfigError naming ``file``/``key`` when this
        profile lists no such kernel."""
        got = self.attention_variants.get(name)
        if got is not None:
            return got
        att = self.gpu.attention
        kern = getattr(att.kernels, name, None) if att is not None and att.kernels is not None else None
        if kern is None:
            have = [k for k in AttentionKernels.model_fields
                    if att is not None and att.kernels is not None and getattr(att.kernels, k) is not None]
            raise ConfigError(file, key, name, allowed=(
                f"a kernel listed in {self.name}'s gpu.attention.kernels: {', '.join(have)}" if have
                else f"none: profile {self.name} lists no gpu.attention.kernels"))
        data = self.model_dump(exclude_none=True)
        data["gpu"]["attention"] = {**kern.model_dump(exclude_none=True),
                                    "kernels": att.kernels.model_dump(exclude_none=True)}
        out = validate(HardwareProfile, data, self._file)
        out._file = self._file
        self.attention_variants[name] = out
        return out

    def with_overrides(self, *, gpus: int | None = None, gpu_memory: int | None = None,
                       host_memory: int | None = None, pcie_gbps: float | None = None) -> "HardwareProfile":
        """A copy scaled for a what-if scenario, re-validated.

        ``pcie_gbps`` replaces the pinned H2D and D2H bandwidth (marked ``assumed``: a what-if is
        not a measurement); pageable links keep their values.
        """
        data = self.model_dump(exclude_none=True)
        if gpus is not None:
            data["gpu"]["count"] = gpus
        if gpu_memory is not None:
            data["gpu"]["memory_bytes"] = gpu_memory
        if host_memory is not None:
            data["host"]["memory_bytes"] = host_memory
        if pcie_gbps is not None:
            if data.get("links") is None:
                raise ConfigError(self._file, "hardware.pcie_gbps", pcie_gbps,
                                  allowed="only for device_type cuda profiles with links")
            for d in ("h2d", "d2h"):
                link = data["links"][d]["pinned"]
                link["bandwidth_gbps"] = {"value": float(pcie_gbps), "source": "assumed",
                                          "ref": f"what-if override pcie_gbps={pcie_gbps}"}
                link.pop("curve", None)
        out = validate(HardwareProfile, data, self._file)
        out._file = self._file
        return out


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Provenance]]:
    if isinstance(node, Provenance):
        yield prefix, node
        return
    if isinstance(node, Strict):
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{i}]")
