"""The iterators of imap and imap_unordered: the input read lazily, a bounded
window of chunks ahead of the consumer, and the outcomes (delivered by the C
collector through ``_set``, as for results.py's objects) handed out in input
or completion order."""
import itertools
import threading
import weakref
from _thread import allocate_lock as _allocate_lock
from time import monotonic as _monotonic

import multiprocessing.pool as _mp_pool

from . import _aio
from .errors import (ST_ERR, ST_LOCAL, ST_MIXED, ST_OK, ST_TERMINATED, TimeoutError,
                     _outcome)
from .results import _job_counter

__all__ = ["IMapIterator", "IMapUnorderedIterator"]

# How far an imap reads ahead of its consumer, by default (buffersize=None).
# Chunks in flight (queued or running), per worker: enough to keep every
# worker busy, whatever the consumer is waiting for.
IMAP_WINDOW_PER_WORKER = 4
# Results held for the consumer (arrived, not yet taken): reading stops while
# they reach either bound, so a slow item holds up the workers only once
# this much has piled up behind it, and an endless input stays in bounded
# memory.
IMAP_HOLD_ITEMS = 100_000
IMAP_HOLD_BYTES = 64 << 20   # of pickled results

class _Failed:
    """A failed chunk, taken: next() raises exc once the buffer before it is
    empty; `ends`:
    the iteration ends with it (chunks of more than one item, as
    multiprocessing's chunked imap, a generator over the chunks, does)."""

    __slots__ = ("exc", "ends")

    def __init__(self, exc, ends):
        self.exc = exc
        self.ends = ends


class _Pieces:
    """The outcome of a chunk some of whose items ran past their time limit:
    runs of values and the items' errors, in item order, taken one piece
    at a time (items[pos] next).  Each piece is an outcome as _ready holds
    one, (ok, values or _Failed, nbytes)."""

    __slots__ = ("items", "pos")

    def __init__(self, job, idx, value, nbytes):
        values, errors = value
        self.items, self.pos, lo = [], 0, 0
        for i in sorted(errors):
            if i > lo:
                self.items.append((True, values[lo:i], 0))
            self.items.append((False, _Failed(_outcome(job, idx, ST_ERR, errors[i])[1],
                                              False), 0))
            lo = i + 1
        if lo < len(values):
            self.items.append((True, values[lo:], 0))
        ok, v, _ = self.items[0]
        self.items[0] = (ok, v, nbytes)


class IMapIterator(_mp_pool.IMapIterator):
    """The iterator of imap: results in input order (a
    multiprocessing.pool.IMapIterator to isinstance; none of its code runs).  The input is read
    lazily, ahead of the consumer, so an endless generator works
    (multiprocessing reads it all first).

    How far ahead: with ``buffersize`` (as CPython 3.15 defines it), at most
    that many chunks submitted and not yet taken by the consumer.  Without
    it, ``IMAP_WINDOW_PER_WORKER`` chunks per worker in flight, and more as
    results arrive, as long as the results held for the consumer stay under
    ``IMAP_HOLD_ITEMS`` items and ``IMAP_HOLD_BYTES`` bytes of pickles: a
    slow item does not leave the other workers idle.  The input is read in
    the consumer's thread (while it waits in next(), too).  close() and
    join() on an iterator not yet exhausted read the rest of its input and
    run it (the work was submitted; multiprocessing reads it all at imap()
    time), whatever buffersize says."""

    _ordered = True
    _defer = False
    _aw = None  # asyncio futures awaiting the next outcome (cpool._aio)

    def __init__(self, pool, func, iterable, chunksize, star, buffersize=None,
                 opts=(0, 0)):
        self._pool = weakref.ref(pool)
        self._opts = opts        # (retries, time limit in ns): Pool._opts
        self._core = pool._core
        self._cache = pool._cache
        # `with self._lock` rather than `with self._cond`: the same lock,
        # without Condition's Python-level __enter__/__exit__ per item.
        self._lock = _allocate_lock()
        self._cond = threading.Condition(self._lock)
        self._feed_lock = threading.Lock()
        self._job = next(_job_counter)
        self._chunksize = chunksize
        self._star = star
        self._buffersize = buffersize
        # The in-flight bound, and how much room there must be before the
        # input is read again (a batch at a time: one submission each).
        self._window = buffersize or max(2, IMAP_WINDOW_PER_WORKER * pool._processes)
        self._refill = max(1, self._window // 2)
        self._held_bytes = 0     # pickled size of the results held
        self._blob = pool._func_blob(func)   # (by value when it must be: cpool._cloud)
        self._input = iter(iterable)
        self._submitted = 0      # chunks read from the input and queued
        self._delivered = 0      # chunks whose outcome arrived
        self._consumed = 0       # chunks the consumer has taken
        self._length = None      # total chunks, once the input is exhausted
        # Outcomes not yet taken, by chunk index (imap) or by arrival
        # number _head.._tail-1 (imap_unordered): dict stores, which a
        # signal handler cannot interrupt half-way (see ApplyResult._set).
        self._ready = {}
        self._head = self._tail = 0
        self._last = -1
        # The rest of the chunks taken: _bufl[_bufi:_bufn].  Taken from
        # without a lock by plain subscripts and stores, between which no
        # signal handler and no other thread runs (after a call one may: a
        # Ctrl-C there would lose the value).
        self._bufl, self._bufi, self._bufn = [], 0, 0
        self._fail = None        # a failed chunk taken, raised after the buffer
        self._sleepers = 0       # consumers waiting on _cond
        self._cache[self._job] = self
        pool._lazy.add(self)
        self._feed()

    def __iter__(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        """next(), without blocking the event loop: ``async for x in
        pool.imap(...)``.  The input is read here, in the loop's thread, as
        next() reads it."""
        while True:
            seen = self._delivered
            try:
                return self.next(0)
            except StopIteration:
                raise StopAsyncIteration from None
            except TimeoutError:
                pass
            fut = _aio.future()
            with self._lock:
                if self._delivered != seen:
                    continue    # an outcome came meanwhile: look again
                _aio.park(self, fut)
            await fut

    def _notify(self):
        """An outcome or the end is in: wake the consumers.  The caller holds
        _lock."""
        if self._sleepers:
            self._cond.notify_all()
        aw = self._aw
        if aw is not None:
            self._aw = None
            _aio.wake_all(aw)

    # -- feeding (the consumer's thread, or join()) --

    def _room(self):
        """How many chunks may be read now (<= 0: none)."""
        if self._buffersize is not None:
            return self._buffersize - (self._submitted - self._consumed)
        if ((self._delivered - self._consumed) * self._chunksize >= IMAP_HOLD_ITEMS or
                self._held_bytes >= IMAP_HOLD_BYTES):
            return 0
        return self._window - (self._submitted - self._delivered)

    def _feed(self, everything=False):
        """Read input ahead of the consumer, as far as _room() allows, once
        there is room for half a window: a batch of chunks in one
        submission, so one lock, one dispatch and one wake-up per batch, not
        per chunk."""
        if not everything and (self._length is not None or self._room() < self._refill):
            return  # the common case, checked again under the lock below
        with self._feed_lock:
            if self._length is not None:
                return
            if not everything and self._room() < self._refill:
                return
            while self._length is None:
                room = self._room()
                if not everything and room <= 0:
                    return
                chunks, stop = [], None
                while len(chunks) < (64 if everything else room):
                    try:
                        chunk = list(itertools.islice(self._input, self._chunksize))
                    except BaseException as e:
                        stop = e
                        break
                    if not chunk:
                        stop = StopIteration
                        break
                    chunks.append(chunk)
                if chunks and not self._submit(chunks):
                    return
                if stop is StopIteration:
                    self._end_input(self._submitted)
                elif stop is not None:
                    idx = self._submitted
                    self._end_input(idx + 1)
                    self._set(idx, ST_LOCAL, stop, _local=True)
                if stop is not None or not everything:
                    return

    def _submit(self, chunks):
        """Queue chunks as tasks submitted, submitted+1, ...; False if the
        pool is terminating (the input then ends with that error)."""
        first = self._submitted
        pool = self._pool()
        if pool is None or pool._terminating():
            self._submitted += 1
            self._set(first, ST_TERMINATED, None, _local=True)
            self._end_input(first + 1)
            return False
        flat = chunks[0] if len(chunks) == 1 else [x for c in chunks for x in c]
        try:   # all or nothing: only the last chunk can be short
            self._core.submit_chunks(self._job, self._blob, flat, self._chunksize,
                                     self._star, first, False, *self._opts)
            self._submitted += len(chunks)
            return True
        except Exception:
            pass
        except BaseException as e:
            self._interrupted(first, e)
            raise
        # One of them cannot be pickled: that chunk fails, the others run (as
        # multiprocessing does); find it by sending them singly.
        for i, chunk in enumerate(chunks):
            try:
                # (cut as one chunk: it has at most chunksize items, and the
                # job's chunksize is what a time limit's item index needs)
                self._core.submit_chunks(self._job, self._blob, chunk, self._chunksize,
                                         self._star, first + i, False, *self._opts)
            except Exception as e:
                self._set(first + i, ST_LOCAL, e, _local=True)
            except BaseException as e:
                self._interrupted(first + i, e)
                raise
            self._submitted += 1
        return True

    def _interrupted(self, idx, exc):
        """Ctrl-C (or another BaseException) while chunk idx was submitted:
        the input read for it is lost, so the iteration ends there, with that
        error, instead of waiting forever for chunks never queued."""
        self._submitted = idx + 1
        self._end_input(idx + 1)
        err = RuntimeError(f"reading the input of imap was interrupted at chunk {idx}")
        err.__cause__ = exc
        self._set(idx, ST_LOCAL, err, _local=True)

    def _end_input(self, length):
        with self._lock:
            self._length = length
            self._input = None
            self._check_complete()
            self._notify()

    def _stop(self):
        """The pool is terminating: read no more input."""
        with self._lock:
            if self._length is None:
                self._length = self._submitted
                self._input = None
                self._check_complete()
                self._notify()

    def _check_complete(self):
        if self._length is not None and self._delivered >= self._length:
            if self._cache.pop(self._job, None) is not None:
                self._core.kick()

    # -- results (the collector's thread) --

    def _set(self, idx, status, value, nbytes=0, _local=False):
        if status == ST_OK:
            got = (True, value, nbytes)
        elif status == ST_MIXED:
            got = _Pieces(self._job, idx, value, nbytes)
        else:
            got = (False, _Failed(_outcome(self._job, idx, status, value)[1],
                                  self._chunksize > 1), nbytes)
        with self._lock:
            # Not a repeat (see ApplyResult._set).  Only the collector's
            # deliveries are ever repeated, and before any later one of its
            # own: an outcome made here, in the consumer's thread (_local),
            # must not move _last.
            if _local or idx != self._last:
                self._held_bytes += nbytes
                if self._ordered:
                    self._ready[idx] = got
                else:
                    self._ready[self._tail] = got
                    self._tail += 1
                self._delivered += 1
                if not _local:
                    self._last = idx
            if self._length is not None:
                self._check_complete()
            self._notify()

    # -- consuming --

    def _take(self):
        """Move the next outcome, if it has arrived, from _ready to the
        buffer (its values; a failed chunk's _Failed to _fail), which is
        empty; True if it did.  The caller holds _lock.  A signal handler runs only at a call or a
        loop edge: there is none between taking the outcome out of _ready
        and storing it in the buffer, and the buffer is where next() takes
        from, so a Ctrl-C anywhere loses nothing."""
        key = self._consumed if self._ordered else self._head
        ready = self._ready
        if key not in ready:
            return False
        got = ready[key]
        if got.__class__ is _Pieces:
            ok, val, nbytes = got.items[got.pos]
            k = len(val) if ok else 0  # the last calls before anything moves
            more = got.pos + 1 < len(got.items)
            got.pos += 1               # (the chunk stays first in line while more)
        else:
            ok, val, nbytes = got
            k = len(val) if ok else 0  # the last call before the outcome moves
            more = False
        if not more:
            del ready[key]
            if not self._ordered:
                self._head += 1
            self._consumed += 1
        self._held_bytes -= nbytes
        if ok:
            self._bufl, self._bufi, self._bufn = val, 0, k
        else:
            self._fail = val
        return True

    def _end_with_failure(self):
        """A failed chunk ends the iteration: nothing after it is kept or
        read (again harmless: a Ctrl-C may make next() call this twice)."""
        self._stop()
        with self._lock:
            self._consumed = self._length = max(self._consumed, self._length)
            self._ready.clear()

    def next(self, timeout=None):
        deadline = None
        while True:
            bufl, i = self._bufl, self._bufi
            if i < self._bufn:  # taken already: no lock, and no call before it moves on
                self._bufi = i + 1
                return bufl[i]
            failed = self._fail
            if failed is not None:  # after the values before it
                if failed.ends:
                    self._end_with_failure()
                self._fail = None   # no call between here and the raise
                raise failed.exc
            if timeout is not None and deadline is None:
                deadline = _monotonic() + timeout
            waiting = took = False
            delivered = self._core.delivered    # before the look: see _collect_until
            with self._lock:
                took = self._take()
                if not took:
                    if self._length is not None and self._consumed >= self._length:
                        self._check_complete()  # again, in case a Ctrl-C cut it short
                        raise StopIteration
                    if self._submitted > self._consumed or self._length is not None:
                        left = None if deadline is None else deadline - _monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError
                        seen = self._delivered
                        waiting = True
                    # else nothing in flight: read more input first
            if waiting:
                # Collect in this thread (without _lock: delivering takes
                # it).  If another thread collects, wait on _cond for it.
                if self._core.collect(left, delivered) <= 0:
                    with self._lock:
                        if self._delivered == seen:
                            self._sleepers += 1
                            try:
                                self._cond.wait(left)
                            finally:
                                self._sleepers -= 1
                # Results arrived while the next one in line did not: keep
                # the other workers busy meanwhile.
                if self._length is None and self._room() >= self._refill:
                    self._feed()
                continue
            # A chunk was taken (or none is in flight): read more input once
            # there is room for half a window (_feed checks again, under its
            # lock; what was taken waits in the buffer).
            if self._length is None and self._room() >= self._refill:
                self._feed()

    __next__ = next

class IMapUnorderedIterator(IMapIterator, _mp_pool.IMapUnorderedIterator):
    """The iterator of imap_unordered: results in completion order."""

    _ordered = False


class _WithProgress:
    """What an imap iterator called with progress= adds (see
    cpool._progress): it counts the items of each chunk delivered, in the
    delivering thread, and shows the count.  Classes of their own, so that
    an imap without progress= pays nothing for it.  A chunk counts once its
    outcome is in, whether its items succeeded or failed; not when the pool
    was terminated first, nor an error of the input (no items).  A bar ends
    when every result has arrived, when next() raises anything but
    TimeoutError (the end of the iteration, a task's error, a Ctrl-C), or
    when the pool is terminated."""

    def __init__(self, pool, func, iterable, chunksize, star, buffersize, opts,
                 progress):
        self._progress = progress
        self._read = 0          # chunks read from the input (submitted or not)
        self._short = (-1, 0)   # (index, items) of the short last chunk
        super().__init__(pool, func, iterable, chunksize, star, buffersize, opts)

    def _submit(self, chunks):
        n = len(chunks[-1])
        if n < self._chunksize:
            self._short = (self._submitted + len(chunks) - 1, n)
        self._read = self._submitted + len(chunks)
        return super()._submit(chunks)

    def _set(self, idx, status, value, nbytes=0, _local=False):
        if status == ST_OK:
            k = len(value)
        elif status == ST_MIXED:
            k = len(value[0])
        elif status == ST_TERMINATED or idx >= self._read:
            k = 0
        else:
            k = self._short[1] if idx == self._short[0] else self._chunksize
        p = self._progress
        # Counted once, in call-free steps, as IMapIterator._set stores (a
        # repeated delivery after a Ctrl-C: see ApplyResult._set).
        if _local or idx != p.last:
            if not _local:
                p.last = idx
            p.done += k
        IMapIterator._set(self, idx, status, value, nbytes, _local)
        p.show(final=self._length is not None and self._delivered >= self._length)

    def next(self, timeout=None):
        try:
            return IMapIterator.next(self, timeout)   # (super(): a cost per item)
        except TimeoutError:
            raise
        except BaseException:
            self._progress.end()
            raise

    __next__ = next

    def _stop(self):
        super()._stop()
        self._progress.end()


class _IMapIteratorWithProgress(_WithProgress, IMapIterator):
    pass


class _IMapUnorderedIteratorWithProgress(_WithProgress, IMapUnorderedIterator):
    pass
