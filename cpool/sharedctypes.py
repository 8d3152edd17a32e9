"""Value, Array, RawValue, RawArray, Lock and RLock in shared memory that can
go anywhere: the multiprocessing.sharedctypes surface, with storage that
pickles by reference.

The memory is a set of arenas (memfds: nothing is left in /dev/shm, however
the program ends) that any process can map; so a Value or Array can be a Pool
task argument, or an argument of a Process under fork, spawn or forkserver,
and every process sees the same memory.  multiprocessing's can only be
inherited.  Locks are robust process-shared mutexes in those arenas: when a
holder dies, the next acquire() takes the lock over (and ``lock.owner_died``
says so) instead of blocking forever.
"""
import ctypes
import os
import threading
import weakref

from . import _cpool

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized",
           "Lock", "RLock", "Synchronized", "SynchronizedArray",
           "SynchronizedString"]

typecode_to_type = {
    'c': ctypes.c_char, 'u': ctypes.c_wchar,
    'b': ctypes.c_byte, 'B': ctypes.c_ubyte,
    'h': ctypes.c_short, 'H': ctypes.c_ushort,
    'i': ctypes.c_int, 'I': ctypes.c_uint,
    'l': ctypes.c_long, 'L': ctypes.c_ulong,
    'q': ctypes.c_longlong, 'Q': ctypes.c_ulonglong,
    'f': ctypes.c_float, 'd': ctypes.c_double,
}

# -- arenas and allocation ----------------------------------------------------

_ALIGN = 16
_ARENA_SIZE = 1 << 20
_arenas = weakref.WeakValueDictionary()   # token -> Arena, in this process


def _attach_arena(pid, fd, token, size):
    """Unpickle an arena: the one this process has, or map the sender's."""
    arena = _arenas.get(token)
    if arena is None:
        arena = _cpool.Arena._attach(pid, fd, token, size)
        _arenas[token] = arena
    return arena


def _new_arena(size):
    arena = _cpool.Arena(size)
    _arenas[arena.token] = arena
    return arena


class _Heap:
    """Bump allocation in arenas of this process.  Memory is never reused
    inside an arena (another process may still use a block this one
    dropped); an arena goes when nothing in any object refers to it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._arena = None
        self._pos = 0

    def malloc(self, size):
        need = max(_ALIGN, (size + _ALIGN - 1) // _ALIGN * _ALIGN)
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not hand out blocks of its parent's
                # current arena: both would allocate the same offsets.
                self._pid, self._arena = os.getpid(), None
            if need > _ARENA_SIZE // 4:
                return _new_arena(need), 0
            if self._arena is None or self._pos + need > self._arena.size:
                self._arena, self._pos = _new_arena(_ARENA_SIZE), 0
            offset = self._pos
            self._pos += need
            return self._arena, offset


_heap = _Heap()

# -- ctypes objects in arenas ---------------------------------------------------

_shared_types = {}


def _shared_type(type_):
    """A subclass of the ctypes type whose instances pickle by reference."""
    try:
        return _shared_types[type_]
    except KeyError:
        pass
    ns = {"__reduce__": _reduce_ctype, "__module__": type_.__module__,
          "_cpool_base": type_}
    if issubclass(type_, ctypes._SimpleCData):
        ns["__repr__"] = lambda self: f"{type_.__name__}({self.value!r})"
    shared = type(type_.__name__, (type_,), ns)
    _shared_types[type_] = shared
    return shared


def _reduce_ctype(obj):
    arena, offset = obj._cpool_ref
    base = type(obj)._cpool_base
    if issubclass(base, ctypes.Array):
        return _rebuild_ctype, (base._type_, arena, offset, base._length_)
    return _rebuild_ctype, (base, arena, offset, None)


def _rebuild_ctype(type_, arena, offset, length):
    if length is not None:
        type_ = type_ * length
    obj = _shared_type(type_).from_buffer(arena, offset)
    obj._cpool_ref = (arena, offset)
    return obj


def _new_value(type_):
    size = ctypes.sizeof(type_)
    arena, offset = _heap.malloc(size)
    obj = _rebuild_ctype(type_, arena, offset, None)
    ctypes.memset(ctypes.addressof(obj), 0, size)
    return obj


def RawValue(typecode_or_type, *args):
    """A ctypes object allocated from shared memory (no lock)."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """A ctypes array allocated from shared memory (no lock)."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new_value(type_ * size_or_initializer)
    result = _new_value(type_ * len(size_or_initializer))
    result.__init__(*size_or_initializer)
    return result


def _wrap(obj, lock):
    if lock is False:
        return obj
    if lock in (True, None):
        lock = RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock)


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """A shared ctypes value behind a lock (an RLock unless given one, or
    none with lock=False).  ``ctx`` is accepted for multiprocessing's sake."""
    return _wrap(RawValue(typecode_or_type, *args), lock)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A shared ctypes array behind a lock, as Value."""
    return _wrap(RawArray(typecode_or_type, size_or_initializer), lock)


def copy(obj):
    """A shared copy of a ctypes object."""
    new_obj = _new_value(type(obj)._cpool_base if hasattr(type(obj), "_cpool_base")
                         else type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


# -- locks --------------------------------------------------------------------

class Lock(_cpool.SharedLock):
    """A non-recursive lock in shared memory: multiprocessing.Lock's API
    (acquire(block=True, timeout=None), release, context manager), robust
    against a holder that dies, and picklable by reference."""

    _recursive = False

    def __new__(cls):
        arena, offset = _heap.malloc(64)
        return super().__new__(cls, arena, offset, cls._recursive, True)

    def __reduce__(self):
        return _rebuild_lock, (type(self), self.arena, self.offset)

    def __repr__(self):
        return f"<cpool.{type(self).__name__} at {self.offset:#x} of arena {self.arena.token:#x}>"


class RLock(Lock):
    """A recursive lock in shared memory (multiprocessing.RLock's API)."""

    _recursive = True


def _rebuild_lock(cls, arena, offset):
    self = _cpool.SharedLock.__new__(cls, arena, offset, cls._recursive, False)
    return self


# -- synchronized wrappers --------------------------------------------------------

Synchronized = _cpool.Synchronized


class SynchronizedArray(_cpool.Synchronized):
    """An Array behind its lock: len, indexing and slicing under the lock."""

    def __len__(self):
        return len(self.get_obj())

    def __getitem__(self, i):
        with self:
            return self.get_obj()[i]

    def __setitem__(self, i, value):
        with self:
            self.get_obj()[i] = value

    def __getslice__(self, start, stop):
        with self:
            return self.get_obj()[start:stop]

    def __setslice__(self, start, stop, values):
        with self:
            self.get_obj()[start:stop] = values


class SynchronizedString(SynchronizedArray):
    """A char Array behind its lock: .value (up to the first NUL) and .raw."""

    @property
    def raw(self):
        with self:
            return self.get_obj().raw

    @raw.setter
    def raw(self, value):
        with self:
            self.get_obj().raw = value


def _field_property(name):
    def get(self):
        with self:
            return getattr(self.get_obj(), name)

    def set(self, value):
        with self:
            setattr(self.get_obj(), name, value)

    return property(get, set)


_class_cache = {}


def synchronized(obj, lock=None, ctx=None):
    """Wrap a shared ctypes object with a lock (a new RLock by default)."""
    assert not isinstance(obj, _cpool.Synchronized), "object already synchronized"
    if lock is None:
        lock = RLock()
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    cls = getattr(type(obj), "_cpool_base", type(obj))
    try:
        scls = _class_cache[cls]
    except KeyError:
        d = {name: _field_property(name) for name, *_ in cls._fields_}
        scls = _class_cache[cls] = type("Synchronized" + cls.__name__,
                                        (_cpool.Synchronized,), d)
    return scls(obj, lock)


# What the extension calls back (it never imports the package): an arena and a
# Synchronized pickle by reference to these.
_cpool._set_hooks(attach_arena=_attach_arena, synchronized=synchronized)
