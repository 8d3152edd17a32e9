"""The result objects of apply_async and map_async, which the C collector
fills in.

The delivery protocol (src/deliver.c): for each task's outcome the collector
calls ``job._set(index, status, value, nbytes)`` on the object registered
under the job's number in the pool's cache, holding the GIL (nbytes: the
size of the result's pickle, 0 when it did not come from a worker); ``job._defer`` true means
"only the collector thread may deliver to me" (the job has callbacks, which
must not run inside a caller's get()).  A caller waiting in get() collects for
itself through ``core.collect()`` (``_collect_until``).
"""
import itertools
import sys
import traceback
from _thread import allocate_lock as _allocate_lock
from time import monotonic as _monotonic

import multiprocessing.pool as _mp_pool

from . import _aio
from ._cpool import _place
from .errors import ST_ERR, ST_MIXED, ST_OK, ST_TERMINATED, TimeoutError, _outcome

__all__ = ["ApplyResult", "AsyncResult", "MapResult"]


def _call_back(fn, arg):
    """Run a user callback; one that raises is reported, as threading
    reports an uncaught exception, and never stops later results."""
    try:
        fn(arg)
    except BaseException:
        print(f"Exception in cpool callback {fn!r}:", file=sys.stderr)
        traceback.print_exc()


_job_counter = itertools.count(1)


class ApplyResult(_mp_pool.ApplyResult):
    """The result of apply_async.  A multiprocessing.pool.ApplyResult to
    isinstance and type checkers; none of its code runs (every method is
    cpool's, and its __init__ is never called).  Awaitable: ``await r`` is
    r.get() without blocking the event loop (see cpool._aio)."""

    _aw = None  # asyncio futures awaiting the outcome (cpool._aio)

    def __init__(self, cache, callback, error_callback, core=None):
        # A bare lock, held until the outcome is in, is all the event we need
        # (threading.Event is a Condition and a Lock: several times the cost
        # for each of a hundred thousand apply_async calls).
        self._core = core
        # Callbacks run on cpool's collector thread, never inside a caller's
        # get() that collects for itself: such outcomes are left to it.
        self._defer = callback is not None or error_callback is not None
        self._done = _allocate_lock()
        self._done.acquire()
        self._ready = False
        self._job = next(_job_counter)
        self._cache = cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None
        self._released = False
        cache[self._job] = self

    def ready(self):
        return self._ready

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        if self._ready:
            return
        if self._core is not None:
            # Collect in this thread while waiting: the result comes straight
            # from the worker's ring, not through the collector thread.
            deadline = None if timeout is None else _monotonic() + timeout
            if _collect_until(self._core, lambda: self._ready, deadline):
                return
            if deadline is not None:
                timeout = deadline - _monotonic()
        if timeout is None:
            with self._done:        # released for every other waiter too,
                pass                # even if Ctrl-C lands here
        elif timeout > 0 and self._done.acquire(True, timeout):
            self._done.release()

    def get(self, timeout=None):
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def __await__(self):
        # Parked, then checked: _complete sets _ready before it reads _aw,
        # so either it wakes this future or the check sees the outcome.
        while not self._ready:
            fut = _aio.future()
            _aio.park(self, fut)
            if self._ready:
                break
            yield from fut.__await__()
        return self.get()

    def _abandon(self):
        self._cache.pop(self._job, None)

    def _complete(self):
        """The outcome is in and its callback has run: wake the waiters and
        leave the cache, each step once, however often this is called."""
        self._ready = True
        if not self._released:
            self._released = True
            self._done.release()
        self._cache.pop(self._job, None)
        aw = self._aw
        if aw is not None:      # (woken again if a Ctrl-C cut this short: harmless)
            _aio.wake_all(aw)
            self._aw = None

    def _finish(self):
        if self._success:
            if self._callback is not None:
                _call_back(self._callback, self._value)
        elif self._error_callback is not None:
            _call_back(self._error_callback, self._value)
        self._complete()

    # An outcome may be delivered twice.  A thread that collects for itself
    # while it waits runs _set, and if it is the main thread a Ctrl-C can
    # land inside; cpool's collector thread (where no signal handler runs)
    # then delivers the same outcome again.  Signal handlers run only at
    # calls and loop edges, so the _set methods change their state in
    # call-free steps and skip what an interrupted delivery already did.
    # (Outcomes with callbacks are only ever delivered by the collector.)

    def _set(self, idx, status, value, nbytes=0):
        if self._ready:
            self._complete()  # a repeat: finish what was interrupted
            return
        if status == ST_OK:
            self._success, self._value = True, value
        else:
            self._success, self._value = _outcome(self._job, idx, status, value)
        self._finish()

    @classmethod
    def __class_getitem__(cls, item):
        """ApplyResult[T] (in annotations) is ApplyResult itself at run time."""
        return cls


AsyncResult = ApplyResult


class MapResult(ApplyResult, _mp_pool.MapResult):
    """The result of map_async/starmap_async: one list, filled chunk by chunk;
    the first failing chunk fails it (as multiprocessing does)."""

    def __init__(self, cache, chunksize, length, callback, error_callback, core=None,
                 chunks=None):
        super().__init__(cache, callback, error_callback, core)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._last = -1  # the chunk delivered last (see ApplyResult._set)
        if chunksize <= 0:
            self._number_left = 0
            self._complete()
        elif chunks is None:  # chunksize items a chunk, the last one shorter
            self._cut = (chunksize, 0)
            self._number_left = length // chunksize + bool(length % chunksize)
        else:  # chunks chunks, the first length % chunks one item longer
            self._cut = divmod(length, chunks)
            self._number_left = chunks

    def _start(self, idx):
        """Where chunk idx starts in the result list (submit_chunks cuts so)."""
        size, longer = self._cut
        return idx * size + min(idx, longer)

    def _set(self, idx, status, value, nbytes=0):
        if self._ready:
            self._complete()  # a repeat, or a chunk after a failed one
            return
        if idx != self._last:
            if status == ST_MIXED:  # items that ran out of time: the first fails it
                status, value = ST_ERR, value[1][min(value[1])]
            if status == ST_OK:  # moved in: a repeat changes nothing
                _place(self._value, self._start(idx), value)
            else:
                ok, err = _outcome(self._job, idx, status, value)
                self._success, self._value = ok, err
            self._last = idx
            self._number_left -= 1
        if self._number_left == 0 or not self._success:
            self._finish()


class _MapResultWithProgress(MapResult):
    """The MapResult of a map called with progress= (see cpool._progress):
    counts the items of each chunk delivered, in the delivering thread, and
    shows the count.  A class of its own, so that a map without progress=
    pays nothing for it.  A chunk counts once its outcome is in, whether
    its items succeeded or failed; not when the pool was terminated first."""

    def __init__(self, cache, chunksize, length, callback, error_callback, core,
                 progress, chunks=None):
        self._progress = progress
        self._items = length
        super().__init__(cache, chunksize, length, callback, error_callback, core,
                         chunks)
        if self._ready:     # nothing to map: done at once
            progress.show(final=True)

    def _set(self, idx, status, value, nbytes=0):
        if status == ST_OK:
            k = len(value)
        elif status == ST_MIXED:
            k = len(value[0])
        elif status == ST_TERMINATED:
            k = 0
        else:
            k = min(self._start(idx + 1), self._items) - self._start(idx)
        p = self._progress
        # Counted once, in call-free steps, as MapResult._set stores (a
        # repeated delivery after a Ctrl-C: see ApplyResult._set).
        if not self._ready and idx != p.last:
            p.last = idx
            p.done += k
        MapResult._set(self, idx, status, value, nbytes)
        if not self._ready:
            p.show()

    def _finish(self):
        # The last count, and the bar finished, before the callbacks run and
        # the waiters wake: what they print comes after it.
        self._progress.show(final=True)
        MapResult._finish(self)

    def wait(self, timeout=None):
        try:
            MapResult.wait(self, timeout)
        except BaseException:   # a Ctrl-C: the traceback on a line of its own
            self._progress.end()
            raise

    def _abandon(self):
        MapResult._abandon(self)
        self._progress.end()



def _collect_until(core, done, deadline):
    """Collect results in this thread until done() or the deadline: True if
    done(), False if the caller must wait as usual (the deadline passed, or
    another thread collects, or this one cannot).  The core's delivery count
    is read before each look, so that an outcome the collector thread
    delivers between the look and collect() makes collect() return, instead
    of waiting for news that will not come."""
    while True:
        seen = core.delivered
        if done():
            return True
        left = None
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                return False
        if core.collect(left, seen) <= 0:
            return done()
