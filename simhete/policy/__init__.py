"""Policies: (model, hardware, knobs) → Schedule. See docs/policies.md."""

from simhete.policy.base import Builder, Context, Policy
from simhete.policy.registry import get_policy, list_policies, register

__all__ = ["Builder", "Context", "Policy", "get_policy", "list_policies", "register"]
