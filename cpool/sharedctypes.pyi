"""Type stubs of cpool.sharedctypes.

The functions have typeshed's multiprocessing.sharedctypes signatures and
return multiprocessing's types (Synchronized[T], SynchronizedArray[T],
SynchronizedString): cpool's wrappers have their surface, so code annotated
with those types keeps checking when ``import multiprocessing as mp``
becomes ``import cpool as mp``.  (At run time they are cpool's classes,
which isinstance() tells apart.)  ``lock=`` also takes cpool's own Lock and
RLock, which are classes of their own: robust locks with ``owner_died``.

Where typeshed's overloads are wrong (``Array(..., lock=False)`` is a ctypes
array, not its element type) these say what the call returns.
"""
import ctypes
import multiprocessing.synchronize
from _ctypes import _CData
from collections.abc import Sequence
from ctypes import _SimpleCData, c_char
from multiprocessing.context import BaseContext
from multiprocessing.sharedctypes import (
    Synchronized as Synchronized,
    SynchronizedArray as SynchronizedArray,
    SynchronizedBase,
    SynchronizedString as SynchronizedString,
)
from typing import Any, Literal, TypeVar, overload
from typing_extensions import Self, TypeAlias

from ._cpool import SharedLock

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized",
           "Lock", "RLock", "Synchronized", "SynchronizedArray",
           "SynchronizedString"]

_T = TypeVar("_T")
_CT = TypeVar("_CT", bound=_CData)

class Lock(SharedLock):
    """A non-recursive lock in shared memory (multiprocessing.Lock's API),
    robust against a holder that dies, picklable by reference."""
    def __new__(cls) -> Self: ...

class RLock(Lock):
    """A recursive lock in shared memory (multiprocessing.RLock's API)."""

# What lock= takes: multiprocessing's locks (as typeshed says) or cpool's.
_LockLike: TypeAlias = multiprocessing.synchronize.Lock | multiprocessing.synchronize.RLock | Lock

@overload
def RawValue(typecode_or_type: type[_CT], *args: Any) -> _CT: ...
@overload
def RawValue(typecode_or_type: str, *args: Any) -> Any: ...

@overload
def RawArray(typecode_or_type: type[_CT], size_or_initializer: int | Sequence[Any]) -> ctypes.Array[_CT]: ...
@overload
def RawArray(typecode_or_type: str, size_or_initializer: int | Sequence[Any]) -> Any: ...

@overload
def Value(typecode_or_type: type[_CT], *args: Any, lock: Literal[False],
          ctx: BaseContext | None = None) -> _CT: ...
@overload
def Value(typecode_or_type: type[_CT], *args: Any, lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedBase[_CT]: ...
@overload
def Value(typecode_or_type: str, *args: Any, lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedBase[Any]: ...
@overload
def Value(typecode_or_type: str | type[_CData], *args: Any, lock: bool | _LockLike = True,
          ctx: BaseContext | None = None) -> Any: ...

@overload
def Array(typecode_or_type: type[_CT], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[False], ctx: BaseContext | None = None) -> ctypes.Array[_CT]: ...
@overload
def Array(typecode_or_type: type[c_char], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedString: ...
@overload
def Array(typecode_or_type: type[_SimpleCData[_T]], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedArray[_T]: ...
@overload
def Array(typecode_or_type: str, size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedArray[Any]: ...
@overload
def Array(typecode_or_type: str | type[_CData], size_or_initializer: int | Sequence[Any], *,
          lock: bool | _LockLike = True, ctx: BaseContext | None = None) -> Any: ...

def copy(obj: _CT) -> _CT: ...

@overload
def synchronized(obj: _SimpleCData[_T], lock: _LockLike | None = None,
                 ctx: Any | None = None) -> Synchronized[_T]: ...
@overload
def synchronized(obj: ctypes.Array[c_char], lock: _LockLike | None = None,
                 ctx: Any | None = None) -> SynchronizedString: ...
@overload
def synchronized(obj: ctypes.Array[_SimpleCData[_T]], lock: _LockLike | None = None,
                 ctx: Any | None = None) -> SynchronizedArray[_T]: ...
@overload
def synchronized(obj: _CT, lock: _LockLike | None = None,
                 ctx: Any | None = None) -> SynchronizedBase[_CT]: ...
