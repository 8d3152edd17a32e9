"""Type stubs of cpool.results.  The result objects are
multiprocessing.pool's classes (their subclasses, at run time too), generic
as typeshed types them, and awaitable (``await r`` is r.get() without
blocking an event loop); the constructors, which cpool calls and users
never do, are cpool's own."""
import multiprocessing.pool as _mp_pool
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from typing_extensions import Self

from ._cpool import Core

__all__ = ["ApplyResult", "AsyncResult", "MapResult"]

_T = TypeVar("_T")

class ApplyResult(_mp_pool.ApplyResult[_T]):
    def __init__(self, cache: dict[int, Any], callback: Callable[[_T], object] | None,
                 error_callback: Callable[[BaseException], object] | None,
                 core: Core | None = None) -> None: ...
    def __await__(self) -> Generator[Any, None, _T]: ...
    # ApplyResult[int] at run time is the class itself (multiprocessing's: a
    # types.GenericAlias); the type checker's ApplyResult[int] is the same.
    def __class_getitem__(cls, item: Any) -> type[Self]: ...  # type: ignore[override]

AsyncResult = ApplyResult

class MapResult(ApplyResult[list[_T]], _mp_pool.MapResult[_T]):
    def __init__(self, cache: dict[int, Any], chunksize: int, length: int,
                 callback: Callable[[list[_T]], object] | None,
                 error_callback: Callable[[BaseException], object] | None,
                 core: Core | None = None, chunks: int | None = None) -> None: ...
