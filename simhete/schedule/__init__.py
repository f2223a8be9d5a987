"""Schedule: plain data shared by the engine and the replay (see model.py)."""

from simhete.schedule.check import check_schedule, dependency_graph
from simhete.schedule.model import Alloc, Op, Schedule, Task
from simhete.schedule.structure import SizeRef, Structure
from simhete.schedule.text import format_schedule, parse_schedule

__all__ = ["Alloc", "Op", "Schedule", "SizeRef", "Structure", "Task", "check_schedule", "dependency_graph",
           "format_schedule", "parse_schedule"]
