"""Type stubs of cpool.futures: cpool.ProcessPoolExecutor, a
concurrent.futures.ProcessPoolExecutor, and its Future (checked by
tests/test_stubs.py)."""
import concurrent.futures
import concurrent.futures.process
import multiprocessing.context
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from typing_extensions import ParamSpec

__all__ = ["ProcessPoolExecutor", "Future"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

class Future(concurrent.futures.Future[_T]):
    def __init__(self, feeder: Any, state: str = ...) -> None: ...

class ProcessPoolExecutor(concurrent.futures.process.ProcessPoolExecutor):
    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]: ...
    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
    def __del__(self) -> None: ...
