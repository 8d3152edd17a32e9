"""Type stubs of cpool.imap: the iterators of imap and imap_unordered,
multiprocessing.pool's (subclasses, at run time too), generic as typeshed
types them; next(timeout) and iteration are theirs, and ``async for``."""
import multiprocessing.pool as _mp_pool
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from typing_extensions import Self

from .pool import Pool

__all__ = ["IMapIterator", "IMapUnorderedIterator"]

_T = TypeVar("_T")

IMAP_WINDOW_PER_WORKER: int
IMAP_HOLD_ITEMS: int
IMAP_HOLD_BYTES: int

class IMapIterator(_mp_pool.IMapIterator[_T]):
    def __init__(self, pool: Pool, func: Callable[..., _T], iterable: Iterable[Any],
                 chunksize: int, star: bool, buffersize: int | None = None,
                 opts: tuple[int, int] = (0, 0)) -> None: ...
    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> _T: ...

class IMapUnorderedIterator(IMapIterator[_T], _mp_pool.IMapUnorderedIterator[_T]): ...
