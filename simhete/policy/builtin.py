"""Imports every shipped policy so the registry knows it."""

from simhete.policy import gpu_only, zero_offload  # noqa: F401
