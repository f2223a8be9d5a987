"""The ``replay:`` section of a scenario: the scaled-down shape that ``simhete validate`` runs.

    replay:
      n_layers: 2          # transformer blocks (default: keep the scenario's)
      hidden: 128          # heads and ffn width are scaled with it unless given
      heads: 4
      vocab: 512
      micro_batch: 2
      seq_len: 64
      dtype: fp32          # working precision of the replay (fp32 or bf16)
      seed: 0              # weights, data and dropout masks
      lr: 0.01             # Adam learning rate (same in the replay and the reference loop)

The scaled scenario is what is *both* simulated and replayed: the policy builds one Schedule for
it, the engine predicts it, the replay runs it. No torch here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simhete.config import Strict, validate
from simhete.errors import ConfigError
from simhete.scenario import Scenario


class ReplayShape(Strict):
    n_layers: int | None = Field(None, ge=1, le=64)
    hidden: int | None = Field(None, ge=8, le=8192)
    heads: int | None = Field(None, ge=1)
    kv_heads: int | None = Field(None, ge=1)
    ffn_hidden: int | None = Field(None, ge=1)
    vocab: int | None = Field(None, ge=2)
    micro_batch: int | None = Field(None, ge=1, le=1024)
    seq_len: int | None = Field(None, ge=2, le=65536)
    dtype: Literal["fp32", "bf16"] = "fp32"
    seed: int = Field(0, ge=0)
    lr: float = Field(1e-2, gt=0, le=1)


def replay_shape(s: Scenario) -> ReplayShape:
    """The scenario's validated ``replay:`` section (all defaults when absent)."""
    return validate(ReplayShape, s.data.replay or {}, s.file, prefix="replay")


def scaled_scenario(s: Scenario, iterations: int | None = None) -> Scenario:
    """The scenario with the replay shape applied (model size, train shape, dtype, iterations).

    Heads, key/value heads and the FFN width keep the original model's ratios unless given, so a
    scaled LLaMA stays a LLaMA (GQA, SwiGLU ratio) and a scaled GPT stays a GPT.
    """
    from simhete.sim import resolve_model

    r = replay_shape(s)
    if s.data.train.recompute != "full":   # the replay's recompute re-runs its torch block whole
        raise ConfigError(s.file, "train.recompute", s.data.train.recompute, allowed=(
            "full for a replay: it recomputes whole blocks; per-op selective checkpointing is "
            "simulated only"))
    spec = resolve_model(s)
    hidden = r.hidden or spec.hidden
    if r.heads is not None:
        heads = r.heads
    elif r.hidden is not None:
        heads = max(1, hidden // spec.head_dim) if hidden % spec.head_dim == 0 else 1
    else:
        heads = spec.n_heads
    kv = r.kv_heads
    if kv is None:   # keep the query heads per K/V head (at least one K/V head, dividing heads)
        kv = max(1, heads * spec.n_kv_heads // spec.n_heads)
        while heads % kv:
            kv -= 1
    ffn = r.ffn_hidden or max(1, round(hidden * spec.ffn_hidden / spec.hidden))
    if hidden % heads:
        raise ConfigError(s.file, "replay.heads", heads, allowed=f"a divisor of hidden={hidden}")
    if heads % kv:
        raise ConfigError(s.file, "replay.kv_heads", kv, allowed=f"a divisor of heads={heads}")
    changes: dict[str, object] = {
        "model.n_layers": r.n_layers or spec.n_layers, "model.hidden": hidden, "model.n_heads": heads,
        "model.n_kv_heads": kv, "model.ffn_hidden": ffn, "model.vocab": r.vocab or spec.vocab,
        "train.micro_batch": r.micro_batch or s.data.train.micro_batch,
        "train.seq_len": r.seq_len or s.data.train.seq_len, "train.dtype": r.dtype,
    }
    if iterations is not None:
        changes["iterations"] = iterations
    return s.with_changes(**changes)
