"""The workload model: ModelSpec (architecture), presets, HF config import, per-block ops and memory."""

from simhete.workload.hf import from_hf_config
from simhete.workload.ops import BlockWork, Workload, build_workload
from simhete.workload.presets import (family_models, get_model, gpt_like, list_families,
                                      list_models)
from simhete.workload.spec import ModelSpec

__all__ = ["BlockWork", "ModelSpec", "Workload", "build_workload", "family_models",
           "from_hf_config", "get_model", "gpt_like", "list_families", "list_models"]
