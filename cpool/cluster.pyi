"""Type stubs of cpool.cluster: cpool.Pool on a Dask cluster
(``cpool.Pool(cluster=...)`` makes a ClusterPool; users never name it)."""
from collections.abc import Callable, Iterable
from typing import Any, Final

from distributed import Client

from .pool import Pool

__all__ = ["ClusterPool"]

SCATTER_MIN: Final[int]

class ClusterPool(Pool):
    cluster: Client
    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any | None = None, *, retries: int = 0,
                 max_memory_per_child: int | None = None,
                 task_timeout: float | None = None,
                 cluster: str | Client | None = None) -> None: ...
