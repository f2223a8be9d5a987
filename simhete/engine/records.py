"""Building the Timeline's records quickly.

``Record(...)`` on a frozen slots dataclass runs ``object.__setattr__`` once per field, which costs
about as much as simulating the task. Records carry no ``__post_init__``, so setting the slot
descriptors of a bare instance builds an equal object (same fields, same ``==`` and hash) at about
half the cost; tests/test_engine_props.py checks them equal to the SimPy engine's ``Record(...)``.
"""

from __future__ import annotations

from typing import Sequence

from simhete.engine.timeline import Record
from simhete.schedule import Task

_SETTERS = tuple(getattr(Record, f).__set__ for f in Record.__slots__)
assert Record.__slots__ == ("name", "stream", "cat", "it", "block", "start", "end")


def finished_records(tasks: Sequence[Task], start: Sequence[float], end: Sequence[float | None]
                     ) -> tuple[Record, ...]:
    """Records of the tasks whose ``end`` is set, in task order."""
    set_name, set_stream, set_cat, set_it, set_block, set_start, set_end = _SETTERS
    new = object.__new__
    out = []
    append = out.append
    for t, s, e in zip(tasks, start, end):
        if e is None:
            continue
        r = new(Record)
        set_name(r, t.name)
        set_stream(r, t.stream)
        set_cat(r, t.cat)
        set_it(r, t.it)
        set_block(r, t.block)
        set_start(r, s)
        set_end(r, e)
        append(r)
    return tuple(out)
