"""DeepSpeed config import: a ``ds_config.json`` → the matching simhete policy, knobs and train shape.

Every key of the JSON ends up in exactly one of three lists, all printed: *mapped* (with the
simhete key it became), *no effect* (known DeepSpeed keys that do not change time or memory in
this model, e.g. learning rate, loss scaling, logging) and *unsupported* (keys that would change
time or memory but that simhete does not model, or keys it does not know). Nothing is silently
ignored. The full table is in docs/deepspeed.md.

Policy: ZeRO stage 1/2 with ``offload_optimizer.device: cpu`` is ``zero-offload``; stage 3 is
``zero-infinity`` with ``offload_param`` and ``offload_optimizer`` set to the two devices (ZeRO-3
partitions the 16-bit parameters whatever is offloaded: stage3.py ``DeepSpeedZeroOptimizer_Stage3``
with ``offload_param`` none keeps each rank's shard on its GPU); stage 2 without offload is
``zero-2``; stage 0–1 without offload is ``gpu-only`` (stage 1's optimizer-state partitioning is
not modelled: gpu-only holds the whole optimizer on every GPU). NVMe offload is an error (not
modelled yet).

``"auto"`` values: DeepSpeed itself rejects them; they come from the Hugging Face Trainer
integration, which fills them from its own arguments and the model config
(transformers ``HfTrainerDeepSpeedConfig.trainer_config_finalize``): ``reduce_bucket_size`` =
hidden², ``stage3_prefetch_bucket_size`` = 0.9·hidden², ``stage3_param_persistence_threshold`` =
10·hidden; batch sizes, gradient accumulation and bf16/fp16 come from the Trainer's arguments —
here they keep the scenario's values (``train.micro_batch``, ``train.grad_accum``, ``train.dtype``).

It lives in simhete.search beside space.py and compare.py: like them it turns a scenario into a
variation of it (policy, knobs, train shape) and sits above simhete.sim, whose model resolution
it needs for the Trainer's ``"auto"`` sizes; the policy layer below may not reach the simulator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from simhete.errors import ConfigError
from simhete.scenario import Scenario

AUTO = "auto"

# Keys that do not change simulated time or memory: optimisation hyper-parameters, numerics,
# logging, checkpoint I/O. Prefix match on the dotted key.
NO_EFFECT = (
    "optimizer.params", "scheduler", "gradient_clipping", "steps_per_print", "wall_clock_breakdown",
    "fp16.loss_scale", "fp16.initial_scale_power", "fp16.loss_scale_window", "fp16.hysteresis",
    "fp16.min_loss_scale", "fp16.consecutive_hysteresis", "fp16.auto_cast", "prescale_gradients",
    "gradient_predivide_factor", "zero_allow_untested_optimizer", "dump_state", "flops_profiler",
    "tensorboard", "wandb", "csv_monitor", "comms_logger", "memory_breakdown",
    "zero_optimization.stage3_gather_16bit_weights_on_model_save",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save",
    "zero_optimization.contiguous_gradients", "zero_optimization.round_robin_gradients",
    "zero_optimization.elastic_checkpoint", "zero_optimization.load_from_fp32_weights",
    "zero_optimization.ignore_unused_parameters", "zero_optimization.legacy_stage1",
    "activation_checkpointing.profile", "activation_checkpointing.synchronize_checkpoint_boundary",
    "activation_checkpointing.contiguous_memory_optimization", "activation_checkpointing.number_checkpoints",
    "zero_optimization.offload_optimizer.buffer_count", "zero_optimization.offload_optimizer.fast_init",
    "zero_optimization.offload_param.nvme_path", "zero_optimization.offload_optimizer.nvme_path", "checkpoint",
)
# Single-GPU simulations have no data-parallel communication: these only matter with several GPUs.
MULTI_GPU_ONLY = (
    "zero_optimization.allgather_partitions", "zero_optimization.allgather_bucket_size",
    "zero_optimization.reduce_scatter", "activation_checkpointing.partition_activations",
    "communication_data_type",
)
ADAM = ("adam", "adamw", "cpuadam", "fusedadam", "deepspeedcpuadam")


@dataclass
class DeepSpeedImport:
    """The scenario with the DeepSpeed config applied, and what happened to every key."""

    scenario: Scenario
    policy: str
    mapped: list[tuple[str, str]] = field(default_factory=list)        # (ds key, "simhete key = value")
    no_effect: list[str] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)   # (ds key, why)

    def notes(self) -> list[str]:
        out = [f"deepspeed: {k} → {v}" for k, v in self.mapped]
        if self.no_effect:
            out.append("deepspeed: no effect on simulated time or memory: " + ", ".join(self.no_effect))
        out += [f"deepspeed: UNSUPPORTED {k}: {why}" for k, why in self.unsupported]
        return out

    def print_notes(self, stream: Any = None) -> None:
        for line in self.notes():
            print(line, file=stream or sys.stderr)


def apply_deepspeed(scenario: Scenario, path: str | Path) -> Scenario:
    """``scenario`` with the DeepSpeed config at ``path`` applied; the key report goes to stderr."""
    imp = import_deepspeed(scenario, path)
    imp.print_notes()
    return imp.scenario


def load_ds_json(path: str | Path) -> dict[str, Any]:
    from simhete.config import load_json

    return load_json(path, "DeepSpeed config")


def import_deepspeed(scenario: Scenario, path: str | Path) -> DeepSpeedImport:
    return map_deepspeed(scenario, load_ds_json(path), str(path))


def map_deepspeed(scenario: Scenario, ds: dict[str, Any], file: str | None = None) -> DeepSpeedImport:
    """Map the DeepSpeed dict ``ds`` onto ``scenario`` (see the module docstring)."""
    from simhete.policy import get_policy
    from simhete.sim import resolve_model

    m = _Mapper(ds, file)
    hidden = resolve_model(scenario).hidden
    zero = m.section("zero_optimization")
    stage = m.take("zero_optimization.stage", 0, lambda v: type(v) is int and v in (0, 1, 2, 3), "0, 1, 2 or 3")
    for sec in ("offload_optimizer", "offload_param"):   # DeepSpeed wants an object: {"device": "cpu", ...}
        key = f"zero_optimization.{sec}"
        if key in m.leaves and m.leaves[key] not in (None, {}):
            raise ConfigError(file, key, m.leaves[key], allowed='an object such as {"device": "cpu"}')
    opt_dev = m.take("zero_optimization.offload_optimizer.device", "none",
                     lambda v: v in ("none", "cpu", "nvme"), "none, cpu or nvme")
    par_dev = m.take("zero_optimization.offload_param.device", "none",
                     lambda v: v in ("none", "cpu", "nvme"), "none, cpu or nvme")
    for dev, key in ((opt_dev, "offload_optimizer"), (par_dev, "offload_param")):
        if dev == "nvme":
            raise ConfigError(file, f"zero_optimization.{key}.device", "nvme",
                              allowed="none or cpu (the NVMe tier is not modelled yet)")
    if opt_dev == "cpu" and stage == 0:
        raise ConfigError(file, "zero_optimization.offload_optimizer.device", "cpu",
                          allowed="none unless zero_optimization.stage is 1, 2 or 3 (DeepSpeed offloads "
                                  "the optimizer only under ZeRO)")
    if par_dev == "cpu" and stage != 3:
        raise ConfigError(file, "zero_optimization.offload_param.device", "cpu",
                          allowed="none unless zero_optimization.stage is 3 (DeepSpeed offloads "
                                  "parameters only with ZeRO-3)")
    if stage == 3:
        policy = "zero-infinity"
    elif opt_dev == "cpu":
        policy = "zero-offload"
    elif stage == 2:
        policy = "zero-2"
    else:
        policy = "gpu-only"
    decided = [k for k in ("zero_optimization.stage", "zero_optimization.offload_optimizer.device",
                           "zero_optimization.offload_param.device") if m.has(k)]
    m.mapped.append((", ".join(decided) or "zero_optimization (absent)",
                     f"policy = {policy} (stage {stage}, optimizer on {opt_dev}, params on {par_dev})"))
    knob_fields = get_policy(policy, file, "zero_optimization").Knobs.model_fields
    knobs: dict[str, Any] = {}

    def knob(ds_key: str, name: str, value: Any) -> None:
        if name in knob_fields:
            knobs[name] = value
            m.mapped.append((ds_key, f"knobs.{name} = {value!r}"))
        else:
            m.unsupported.append((ds_key, f"policy {policy} has no knob {name!r}"))

    if policy == "zero-infinity":
        for dev, sec in ((par_dev, "offload_param"), (opt_dev, "offload_optimizer")):
            key = f"zero_optimization.{sec}.device"
            knob(key if m.has(key) else key + " (absent: none)", sec, dev)

    # pin_memory: one simhete knob for both offload sections; DeepSpeed's default is false
    # (deepspeed/runtime/zero/offload_config.py: ``pin_memory: bool = False``).
    pins = {}
    for sec in ("offload_optimizer", "offload_param"):
        key = f"zero_optimization.{sec}.pin_memory"
        if m.has(key):
            pins[key] = m.take(key, False, lambda v: isinstance(v, bool), "true or false")
    if len(set(pins.values())) > 1:
        m.unsupported.append((" and ".join(pins), "different pin_memory per section; simhete has one "
                                                  "pin_memory knob — the optimizer section's value is used"))
    if policy not in ("gpu-only", "zero-2"):
        first = next(iter(pins), None)
        said = " and ".join(pins) if len(set(pins.values())) == 1 else first   # both sections agree: name both
        knob(said or "zero_optimization.offload_*.pin_memory (absent: DeepSpeed default)", "pin_memory",
             pins[first] if first else False)
    else:
        m.no_effect.extend(f"{k} (no offload)" for k in pins)

    if m.has("zero_optimization.offload_optimizer.ratio"):
        ratio = m.take("zero_optimization.offload_optimizer.ratio", 1.0,
                       lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                       "a number in [0, 1]")
        knob("zero_optimization.offload_optimizer.ratio", "ratio", float(ratio))

    overlap_default = stage == 3
    if m.has("zero_optimization.overlap_comm"):
        ov = m.take("zero_optimization.overlap_comm", overlap_default, lambda v: isinstance(v, bool), "true or false")
        if policy == "gpu-only":
            m.no_effect.append("zero_optimization.overlap_comm")
        else:
            knob("zero_optimization.overlap_comm", "overlap_comm", ov)
    elif policy != "gpu-only" and "overlap_comm" in knob_fields:
        knob("zero_optimization.overlap_comm (absent: DeepSpeed default)", "overlap_comm", overlap_default)

    size_knobs = {
        "reduce_bucket_size": ("reduce_bucket_size", hidden * hidden),
        "stage3_prefetch_bucket_size": ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
        "stage3_param_persistence_threshold": ("stage3_param_persistence_threshold", 10 * hidden),
        "stage3_max_live_parameters": ("stage3_max_live_parameters", None),
        "stage3_max_reuse_distance": ("stage3_max_reuse_distance", None),
        "sub_group_size": ("sub_group_size", None),
        "offload_param.buffer_count": ("param_buffer_count", None),
        "offload_param.buffer_size": ("param_buffer_size", None),
        "offload_param.max_in_cpu": ("max_in_cpu", None),
    }
    for ds_name, (name, auto) in size_knobs.items():
        key = f"zero_optimization.{ds_name}"
        if not m.has(key):
            continue
        raw = m.take(key, None, lambda v: v == AUTO or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0),
                     "a non-negative number" + (" or \"auto\"" if auto is not None else ""))
        if raw == AUTO:
            if auto is None:
                raise ConfigError(file, key, raw, allowed="a number (the Hugging Face Trainer fills "
                                                          "\"auto\" only for the hidden-size-based keys)")
            m.mapped.append((key, f"\"auto\" = {auto} (Hugging Face Trainer rule from hidden={hidden})"))
            raw = auto
        if policy == "gpu-only":
            m.no_effect.append(key + " (no offload)")
        elif name in knob_fields and knob_fields[name].annotation is float:
            knob(key, name, float(raw))
        else:
            knob(key, name, raw)

    if zero is not None:
        for k in m.unseen("zero_optimization"):
            m.classify(k)

    # activation checkpointing: DeepSpeed only configures it; the model decides where to call it.
    ac = m.section("activation_checkpointing")
    if ac is not None:
        cpu_ckpt = m.take("activation_checkpointing.cpu_checkpointing", False,
                          lambda v: isinstance(v, bool), "true or false") if m.has("activation_checkpointing.cpu_checkpointing") else False
        knob("activation_checkpointing", "checkpointing", "full")
        if cpu_ckpt:
            m.unsupported.append(("activation_checkpointing.cpu_checkpointing",
                                  "checkpoints kept on the GPU (moving the block inputs to the CPU is not modelled)"))
        for k in m.unseen("activation_checkpointing"):
            m.classify(k)

    changes: dict[str, Any] = {"policy": policy}
    mb = m.batch("train_micro_batch_size_per_gpu", scenario.data.train.micro_batch)
    gas = m.batch("gradient_accumulation_steps", scenario.data.train.grad_accum)
    if mb is not None:
        changes["train.micro_batch"] = mb
    if gas is not None:
        changes["train.grad_accum"] = gas
    if m.has("train_batch_size"):
        from simhete.sim import resolve_profile

        tbs = m.take("train_batch_size", None,
                     lambda v: v == AUTO or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
                     "a positive integer or \"auto\"")
        world = resolve_profile(scenario).gpu.count
        mb_, gas_ = mb or scenario.data.train.micro_batch, gas or scenario.data.train.grad_accum
        if tbs != AUTO and tbs != mb_ * gas_ * world:
            raise ConfigError(file, "train_batch_size", tbs,
                              allowed=f"train_micro_batch_size_per_gpu × gradient_accumulation_steps × "
                                      f"GPUs = {mb_} × {gas_} × {world}")
        m.mapped.append(("train_batch_size", "consistent with micro-batch × accumulation × GPUs (checked)"))

    dtype = m.dtype(scenario.data.train.dtype)
    if dtype is not None:
        changes["train.dtype"] = dtype
    if m.has("bf16.check_grad_overflow"):
        knob("bf16.check_grad_overflow", "check_grad_overflow",
             m.take("bf16.check_grad_overflow", True, lambda v: isinstance(v, bool), "true or false"))

    if m.has("optimizer.type"):
        t = m.take("optimizer.type", "Adam", lambda v: isinstance(v, str), "an optimizer name")
        if str(t).lower().replace("_", "") in ADAM:
            m.mapped.append(("optimizer.type", f"{t} (simhete prices Adam/AdamW)"))
            if "optimizer" in knob_fields:
                # engine.py _configure_basic_optimizer: FusedAdam on the GPU, torch's Adam/AdamW
                # (its foreach default) with params.torch_adam
                key = "optimizer.params.torch_adam"
                torch_adam = m.take(key, False, lambda v: isinstance(v, bool), "true or false") if m.has(key) else False
                knob(key if m.has(key) else "optimizer.type (DeepSpeed builds FusedAdam)", "optimizer",
                     "foreach" if torch_adam else "fused")
        else:
            m.unsupported.append(("optimizer.type", f"{t}: simhete prices Adam/AdamW only"))
    elif "optimizer" in knob_fields:
        m.mapped.append(("optimizer (absent)", "the client's optimizer runs (the Hugging Face Trainer's is torch "
                                               "AdamW: knobs.optimizer foreach); knobs.optimizer kept"))
    for k in m.unseen(""):
        m.classify(k)

    keep = {k: v for k, v in scenario.data.knobs.items() if k in knob_fields and k not in knobs}
    changes["knobs"] = {**keep, **knobs}
    try:
        out = scenario.with_changes(**changes)
        get_policy(policy).knobs(out.data.knobs, file)
    except ConfigError as e:
        raise ConfigError(file, e.key, problem=f"mapped onto the scenario: {e}") from None
    return DeepSpeedImport(out, policy, m.mapped, m.no_effect, m.unsupported)


class _Mapper:
    """Walks the DeepSpeed dict by dotted keys, remembering which leaves were consumed."""

    def __init__(self, ds: dict[str, Any], file: str | None) -> None:
        self.ds, self.file = ds, file
        self.leaves = dict(_flatten(ds))
        self.seen: set[str] = set()
        self.mapped: list[tuple[str, str]] = []
        self.no_effect: list[str] = []
        self.unsupported: list[tuple[str, str]] = []

    def section(self, key: str) -> dict[str, Any] | None:
        v = self.ds.get(key)
        if v is not None and not isinstance(v, dict):
            raise ConfigError(self.file, key, v, allowed="a JSON object")
        return v

    def has(self, key: str) -> bool:
        return key in self.leaves

    def take(self, key: str, default: Any, ok: Callable[[Any], bool], allowed: str) -> Any:
        if key not in self.leaves:
            return default
        self.seen.add(key)
        v = self.leaves[key]
        if not ok(v):
            raise ConfigError(self.file, key, v, allowed=allowed)
        return v

    def unseen(self, prefix: str) -> list[str]:
        p = prefix + "." if prefix else ""
        return [k for k in self.leaves if k.startswith(p) and k not in self.seen]

    def classify(self, key: str) -> None:
        self.seen.add(key)
        if any(key == n or key.startswith(n + ".") for n in NO_EFFECT):
            self.no_effect.append(key)
        elif any(key == n or key.startswith(n + ".") for n in MULTI_GPU_ONLY):
            self.no_effect.append(key + " (single GPU: no data-parallel communication)")
        else:
            self.unsupported.append((key, "not modelled by simhete"))

    def batch(self, key: str, auto: Any) -> Any:
        if not self.has(key):
            return None
        v = self.take(key, None, lambda v: v == AUTO or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
                      "a positive integer or \"auto\"")
        if v == AUTO:
            self.mapped.append((key, f"\"auto\" = {auto} (kept from the scenario, as the Trainer fills it "
                                     "from its own arguments)"))
            return auto
        self.mapped.append((key, f"train.micro_batch = {v}" if "micro" in key else f"train.grad_accum = {v}"))
        return v

    def dtype(self, current: str) -> str | None:
        en: dict[str, Any] = {}
        for d in ("bf16", "fp16"):
            key = f"{d}.enabled"
            if self.has(key):
                en[d] = self.take(key, False, lambda v: isinstance(v, bool) or v == AUTO, "true, false or \"auto\"")
            if isinstance(self.ds.get(d), bool):   # legacy "bf16": true
                en[d] = self.ds[d]
                self.seen.add(d)
        keys = ", ".join(f"{d}.enabled" if isinstance(self.ds.get(d), dict) else d for d in en)
        on = [d for d, v in en.items() if v is True]
        if len(on) > 1:
            raise ConfigError(self.file, "bf16.enabled", True, allowed="not together with fp16.enabled "
                                                                     "(DeepSpeed rejects both)")
        if on:
            self.mapped.append((keys, f"train.dtype = {on[0]}"))
            return on[0]
        if any(v == AUTO for v in en.values()):
            self.mapped.append((keys, f"\"auto\" = {current} (kept from the scenario)"))
            return None
        if en:   # explicitly disabled: DeepSpeed trains in fp32
            self.mapped.append((keys, "false → train.dtype = fp32"))
            return "fp32"
        return None


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out += _flatten(v, key)
        else:
            out.append((key, v))
    return out
