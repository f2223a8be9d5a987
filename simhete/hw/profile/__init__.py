"""Hardware profiles: the schema of ``hwprofiles/<name>.yaml`` (quantity, gpu, host, links,
schema) and its loader; ``tables`` holds what pricing derives from a profile, once per profile.
The full schema is documented in docs/profiles.md."""

from simhete.hw.profile.gpu import BlockTable, Gpu
from simhete.hw.profile.host import ADAM_ACCESSES_PER_PARAM, ADAM_PER_CORE, DRAM_STREAM_FRACTION, Host
from simhete.hw.profile.links import Link, Links
from simhete.hw.profile.loader import PROFILES_DIR, list_profiles, load_profile
from simhete.hw.profile.quantity import DTYPES, Curve, Provenance, Quantity
from simhete.hw.profile.schema import HardwareProfile

__all__ = ["ADAM_ACCESSES_PER_PARAM", "ADAM_PER_CORE", "DRAM_STREAM_FRACTION", "DTYPES", "PROFILES_DIR",
           "BlockTable", "Curve", "Gpu", "HardwareProfile", "Host", "Link", "Links", "Provenance",
           "Quantity", "list_profiles", "load_profile"]
