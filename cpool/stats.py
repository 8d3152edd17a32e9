"""pool.stats(): a snapshot of what a pool is doing, cheap enough to call in
a loop.  The counters live where they change (the workers' slots in the
control segment, the parent's queue; see src/stats.c): nothing polls, and a
pool that is never asked pays nothing for them.

    >>> print(pool.stats())           # doctest: +SKIP
    tasks: 3 queued, 2 running, 118 done, 0 failed, 1 lost, 1 retried, 0 timed out
    slot  pid    state  tasks  busy s  idle s  current s  rss MiB  respawns
       0  4121   ready     61    5.02    0.01       0.30     14.2         0
       1  4187   ready     57    4.87    0.02       0.41     14.0         1

A task is what a worker runs at once: one apply, or one chunk of a map.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["PoolStats", "WorkerStats"]


@dataclass(frozen=True)
class WorkerStats:
    """One worker slot: the worker running there now, and the slot's
    history (respawns)."""

    slot: int
    pid: Optional[int]       # None while there is none
    state: str               # "starting", "ready", "dead" (being replaced), "none"
    tasks_done: int          # by this worker, as the parent has taken them
    busy: float              # seconds this worker ran tasks (finished ones)
    idle: float              # seconds it waited for tasks since it was ready
    current: Optional[float]  # seconds its current task has run; None: idle
    rss: Optional[int]       # resident memory in bytes; None: no live worker
    respawns: int            # workers forked for this slot after the first


@dataclass(frozen=True)
class PoolStats:
    """A pool's tasks and workers at one moment."""

    queued: int    # not started: in the parent's queue or a worker's ring (and,
                   # for a moment, one answered whose result is not taken yet)
    running: int   # started by a worker, not answered
    done: int      # answered with a result
    failed: int    # answered with an exception (the task raised)
    lost: int      # failed because the worker running them died
    retried: int   # sent again after their worker died (retries=)
    timed_out: int  # items that ran past their time limit (task_timeout=)
    steals: int    # taken back from a busy worker's ring for an idle one
    workers: Tuple[WorkerStats, ...]

    @classmethod
    def _from_core(cls, d):
        workers = tuple(WorkerStats(**w) for w in d.pop("workers"))
        return cls(workers=workers, **d)

    def __str__(self):
        lines = [f"tasks: {self.queued} queued, {self.running} running, "
                 f"{self.done} done, {self.failed} failed, {self.lost} lost, "
                 f"{self.retried} retried, {self.timed_out} timed out",
                 "slot  pid      state     tasks   busy s   idle s  current s"
                 "  rss MiB  respawns"]
        for w in self.workers:
            cur = "-" if w.current is None else f"{w.current:.2f}"
            rss = "-" if w.rss is None else f"{w.rss / 2 ** 20:.1f}"
            lines.append(f"{w.slot:4}  {w.pid or '-':<7}  {w.state:<8} {w.tasks_done:6}"
                         f" {w.busy:8.2f} {w.idle:8.2f} {cur:>10} {rss:>8}"
                         f"  {w.respawns:8}")
        return "\n".join(lines)
