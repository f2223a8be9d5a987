"""Numbers with provenance: the value types every hardware profile is built of.

Every number that is a fact about hardware is a :class:`Quantity` — a value with its provenance
(``measured`` with the raw data, ``datasheet``, ``paper``, ``reported`` with where it was reported,
or ``assumed`` with the reasoning). Only ``measured`` counts as calibrated. A :class:`Curve` is a
measured size-dependent rate with one provenance for all its points.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from simhete.config import Strict, parse_bytes

# measured:  timed on this device by a microbenchmark whose raw output is kept (raw, device, driver,
#            torch, date required)
# datasheet: a vendor's specification (a theoretical or rated figure)
# paper:     a peer-reviewed or archived paper (arXiv), cited in ``ref``
# reported:  a figure reported by a named public source that is neither a datasheet nor a paper — a
#            GitHub issue or discussion thread, a vendor blog, a team member's reading without the
#            raw benchmark output — with ``ref`` saying where
# assumed:   reasoning, given in ``ref``
Source = Literal["measured", "datasheet", "paper", "reported", "assumed"]
DType = Literal["bf16", "fp16", "tf32", "fp32"]
DTYPES: tuple[str, ...] = ("bf16", "fp16", "tf32", "fp32")
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
_Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]

MEASURED_KEYS: tuple[str, ...] = ("raw", "device", "driver", "torch", "date")


class Provenance(Strict):
    """Where a number (or a table of numbers) comes from.

    ``measured`` must name the raw data file (``raw``, relative to the profile file), the
    ``device``, the ``driver`` (for a CPU device: ``n/a (CPU device)``), the ``torch`` version and
    the ``date``; ``host`` is optional. Every source needs a ``ref``: the citation, where a
    ``reported`` figure was reported, or the reasoning behind an ``assumed`` one.
    """

    source: Source
    ref: str = Field(min_length=1)
    raw: str | None = None
    device: str | None = None
    driver: str | None = None
    torch: str | None = None
    date: str | None = None
    host: str | None = None

    @model_validator(mode="after")
    def _measured_has_raw(self) -> "Provenance":
        if self.source == "measured":
            missing = [k for k in MEASURED_KEYS if not getattr(self, k)]
            if missing:
                raise ValueError(f"source measured needs {', '.join(MEASURED_KEYS)}; missing: "
                                 + ", ".join(missing) + " (a figure without its raw benchmark output "
                                 "and full provenance is source reported, with ref saying where)")
        return self

    @property
    def calibrated(self) -> bool:
        """Only a number measured on this device is calibrated; datasheet, paper, reported and
        assumed numbers are listed as uncalibrated wherever a prediction rests on them."""
        return self.source == "measured"


class Quantity(Provenance):
    """A hardware number with provenance: ``{value, source, ref, ...}``."""

    value: _Num


class PositiveQ(Quantity):
    value: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


class NonNegQ(Quantity):
    value: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class FractionQ(Quantity):
    """A fraction in (0, 1] (efficiencies, duplex factor)."""

    value: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)]


class SlowdownQ(Quantity):
    """A slowdown factor ≥ 1."""

    value: Annotated[float, Field(strict=True, ge=1, allow_inf_nan=False)]


class BytesQ(Provenance):
    """A byte count with provenance; ``value`` accepts ``1GiB``-style strings."""

    value: Bytes

class Curve(Provenance):
    """Size-dependent rate measured end to end: ``points = [[size, rate], ...]`` — bytes and GB/s
    for links and memory-bound ops."""

    points: list[tuple[int, float]] = Field(min_length=2)

    @field_validator("points")
    @classmethod
    def _sorted_positive(cls, v: list[tuple[int, float]]) -> Any:
        sizes = [p[0] for p in v]
        if any(b <= 0 or g <= 0 for b, g in v):
            raise ValueError("bytes and gbps must be > 0")
        if sizes != sorted(set(sizes)):
            raise ValueError("points must be sorted by bytes, without repeats")
        return v
