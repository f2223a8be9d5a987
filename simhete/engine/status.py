"""What the fast engine's compiled event loop (:func:`simhete.engine._compiled.run_loop`) returns,
so :mod:`simhete.engine.fast` turns it into the Timeline or error the SimPy reference gives.

The result is ``(status, t, info, start, end, finished, ev_pool, ev_t, ev_bytes, n_ev, peak,
peak_cls, in_use, live_pool, live_bytes)``: per task start/end and whether it finished; the memory
events in order (pool, time, bytes in use after; first ``n_ev`` entries); per pool the peak and its
class breakdown and the bytes in use at the end; per buffer its pool (``-1``: not live) and bytes.
``info`` depends on ``status``:
"""

OK = 0              # every task ran
OOM = 1             # info = (blocked head task, first pool where it does not fit, bytes it asks there)
DOUBLE_ALLOC = 2    # info = (task, buffer it allocates that is still live)
FREE_UNKNOWN = 3    # info = (task, buffer it frees that is not live)
STUCK = 4           # nothing runs, nothing is ready, tasks remain: a dependency cycle
