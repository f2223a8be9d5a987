"""Imports every shipped policy so the registry knows it."""

from simhete.policy import autohete, chunked, gpu_only, stronghold, zero_infinity, zero_offload  # noqa: F401
