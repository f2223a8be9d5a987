"""Sweep points: axis values → a validated scenario and a stable identity.

A point's identity is the SHA-256 of its *resolved* configuration — the validated scenario, the
policy's knobs with defaults filled in, the model's architecture and the hardware profile's
content — in canonical JSON. Two spellings of the same configuration (a knob left at its default
or given explicitly) are one point; recalibrating a profile makes new points. The results store is
keyed by it, so ``--resume`` skips exactly the configurations already simulated.

Knobs: the base scenario's knobs carry over to a point whose policy has a knob of that name
(those foreign to the point's policy are dropped, as ``simhete compare`` does); knobs set by an
axis always apply, and one the point's policy does not have makes the point an invalid
combination, recorded with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from simhete.errors import ConfigError
from simhete.scenario import Scenario

ID_CHARS = 20   # 80 bits of SHA-256: collisions are not a concern for any feasible sweep


@dataclass(frozen=True)
class Point:
    """One configuration of a sweep. ``scenario`` is None for an invalid combination (``error``)."""

    idx: int
    params: dict[str, Any]
    id: str
    scenario: Scenario | None
    error: str | None = None


class Resolver:
    """Builds points from axis values; caches model and profile digests (one load per name)."""

    def __init__(self, base: Scenario, keys: Sequence[str]) -> None:
        self.base = base
        self.keys = tuple(keys)
        self._digests: dict[str, Any] = {}

    def point(self, idx: int, values: Sequence[Any]) -> Point:
        params = dict(zip(self.keys, values))
        try:
            s = self.scenario(params)
            resolved = self.resolved(s)
        except ConfigError as e:
            raw = {"invalid": True, "base": _dump(self.base), "params": params}
            return Point(idx, params, digest(raw), None, str(e))
        return Point(idx, params, digest(resolved), s)

    def scenario(self, params: dict[str, Any]) -> Scenario:
        from simhete.policy import get_policy

        changes = {k: v for k, v in params.items() if not k.startswith("knobs")}
        policy = changes.get("policy", self.base.data.policy)
        if "knobs" in params:
            knobs = dict(params["knobs"] or {})
        else:
            fields = get_policy(policy, self.base.file).Knobs.model_fields
            knobs = {k: v for k, v in self.base.data.knobs.items() if k in fields}
        for k, v in params.items():
            if k.startswith("knobs."):
                knobs[k.removeprefix("knobs.")] = v
        return self.base.with_changes(**changes, knobs=knobs)

    def resolved(self, s: Scenario) -> dict[str, Any]:
        """The canonical resolved configuration of ``s`` (raises ConfigError if it is invalid)."""
        from simhete.policy import get_policy

        cls = get_policy(s.data.policy, s.file)
        knobs = cls.knobs(s.data.knobs, s.file).model_dump(mode="json")
        out = _dump(s)
        out["knobs"] = knobs
        out["model_spec"] = self._cached("model", s.data.model, s, _model_digest)
        out["hardware_digest"] = self._cached("hardware", s.data.hardware, s, _profile_digest)
        return out

    def _cached(self, kind: str, ref: Any, s: Scenario, fn: Any) -> Any:
        # a name is its own key (asked at every point); a mapping is keyed by its canonical JSON
        key = (kind, ref) if isinstance(ref, str) else (kind, json.dumps(ref.model_dump(mode="json"), sort_keys=True))
        if key not in self._digests:
            self._digests[key] = fn(s)
        return self._digests[key]


def _dump(s: Scenario) -> dict[str, Any]:
    return s.data.model_dump(mode="json", exclude_none=True)


def _model_digest(s: Scenario) -> dict[str, Any]:
    from simhete.sim import resolve_model
    return dataclasses.asdict(resolve_model(s))


def _profile_digest(s: Scenario) -> str:
    from simhete.sim import resolve_profile
    return digest(resolve_profile(s).model_dump(mode="json"))


# what json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str) makes, with the encoder
# made once: json.dumps builds a new one per call, a third of the call for a point's ~850-byte
# configuration (the text, hence every id, is the same)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    text = _CANONICAL.encode(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_CHARS]
