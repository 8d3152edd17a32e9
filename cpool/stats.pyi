"""Type stubs of cpool.stats: pool.stats()'s snapshot."""
from dataclasses import dataclass
from typing import Any

__all__ = ["PoolStats", "WorkerStats"]

@dataclass(frozen=True)
class WorkerStats:
    slot: int
    pid: int | None
    state: str
    tasks_done: int
    busy: float
    idle: float
    current: float | None
    rss: int | None
    respawns: int

@dataclass(frozen=True)
class PoolStats:
    queued: int
    running: int
    done: int
    failed: int
    lost: int
    retried: int
    timed_out: int
    steals: int
    workers: tuple[WorkerStats, ...]
    @classmethod
    def _from_core(cls, d: dict[str, Any]) -> PoolStats: ...
