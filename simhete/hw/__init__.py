"""simhete.hw: hardware profiles (schema + loader) and the cost model that prices ops."""

from simhete.hw.cost import CostModel
from simhete.hw.profile import HardwareProfile, Quantity, list_profiles, load_profile

__all__ = ["CostModel", "HardwareProfile", "Quantity", "list_profiles", "load_profile"]
