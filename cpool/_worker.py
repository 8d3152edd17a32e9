"""What runs inside the workers (and the template process): a new worker's
set-up, and the pickling of large objects and of errors.  cpool._cpool calls
these; the pool hands them over (Core() and _set_hooks), so that C never
imports the package."""
import io
import os
import pickle
import signal
import sys
import traceback

from . import _cpool
from .errors import TaskTimeoutError

_NO_VALUE = object()


def _worker_bootstrap(slot):
    """A new worker's Python-side set-up, before the initializer."""
    pool = sys.modules.get("cpool.pool")
    if pool is not None:
        pool._live_pools.clear()    # the parent's pools are not ours to terminate
    mpp = sys.modules.get("multiprocessing.process")
    if mpp is not None:
        proc = mpp.current_process()
        proc._name = f"CPoolWorker-{slot + 1}"
        proc._identity = (slot + 1,)
        proc._parent_pid = os.getppid()
        mpp._children = set()
    mpu = sys.modules.get("multiprocessing.util")
    if mpu is not None:
        mpu._finalizer_registry.clear()
        mpu._run_after_forkers()
    try:
        if sys.stdin is not None:
            sys.stdin.close()
            sys.stdin = open(os.devnull)
    except (OSError, ValueError):
        pass
    signal.signal(_cpool.STOP_SIGNAL, _on_stop)


def _on_stop(signum, frame):
    """The parent asks the item running now to stop: it ran past its time
    limit (task_timeout=).  Raised inside the task, so its finally: blocks
    run; a late signal (the item ended meanwhile) is ignored."""
    stop = _cpool._stop_requested()
    if stop is not None:
        raise TaskTimeoutError._make(*stop, killed=False)


def _timed_out(exc, pid, item, elapsed, timeout):
    """(exception, remote traceback text) for an item of a chunk that ran
    past its time limit: exc, raised in it, or (None) one for an item whose
    worker was killed running it."""
    if exc is None:
        return TaskTimeoutError._make(pid, item, elapsed, timeout, killed=True), None
    return exc, _traceback_text(exc)



class _Big:
    """A large bytes/bytearray, pickled as a protocol-5 buffer (out of band:
    cpool copies it once, straight into shared memory).  bytes and bytearray
    never go out of band by themselves, and Pickler.reducer_override is not
    consulted for them; so _pack_oob's persistent_id stands this in for them."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        # Rebuilt by cpool's C helper: copied without the GIL, into pages
        # faulted in at once (a fresh 200 MiB bytes otherwise takes 51,200
        # page faults).
        return _cpool._rebuild, (pickle.PickleBuffer(self.obj), type(self.obj))


class _Pickler(pickle.Pickler):
    """A pickler whose persistent_id an instance sets (the C Pickler's is
    read-only from 3.13)."""


class _Unpickler(pickle.Unpickler):
    """Loads what _pack_oob wrote: there a persistent id is a large bytes or
    bytearray itself, rebuilt from its out-of-band buffer by _Big."""

    def persistent_load(self, pid):
        return pid


def _pack_oob(obj):
    """(pickle, [buffers], copied) of an object holding large buffers (called
    from C only for those): protocol 5, the buffers out of band.  Every large
    bytes or bytearray it holds, at any depth, goes out of band once, however
    many references to it there are: the pickler's persistent_id turns each
    into a _Big, the same one for the same object, which the pickler memoizes
    as it memoizes anything (sharing and identity are pickle's own).
    copied: every buffer is a _Big's, which the receiver copies out (no
    object keeps a view of the shared memory it came in)."""
    f, bufs = io.BytesIO(), []
    p = _Pickler(f, 5, buffer_callback=bufs.append)
    p.persistent_id, bigs = _cpool._oob_ids(_Big)
    p.dump(obj)
    return f.getbuffer(), bufs, len(bufs) == len(bigs)


def _load_oob(data, buffers):
    """What _pack_oob wrote, from data (the pickle) and buffers (views of the
    out-of-band buffers)."""
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


# the extension calls them; it never imports us
_cpool._set_hooks(pack_oob=_pack_oob, load_oob=_load_oob, timed_out=_timed_out)


class _ShortRepr:
    """A value whose repr is cut short: MaybeEncodingError keeps the repr of
    the result it could not send, and a result too large to send (a full
    /dev/shm) must not make an error report too large to send."""

    __slots__ = ("text",)

    def __init__(self, value):
        import reprlib
        r = reprlib.Repr()
        r.maxstring = r.maxother = 200
        try:
            self.text = r.repr(value)
        except Exception as e:
            self.text = f"<{type(value).__name__} object (repr failed: {e!r})>"

    def __repr__(self):
        return self.text


def _traceback_text(exc):
    """exc's traceback as multiprocessing's RemoteTraceback shows it."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return '\n"""\n%s"""' % tb


def _pack_error(exc, value=_NO_VALUE):
    """Pickle (exception, remote traceback text) for the parent.  With
    value: exc is why the result value could not be pickled."""
    if value is _NO_VALUE:
        err, text = exc, _traceback_text(exc)
    else:
        from multiprocessing.pool import MaybeEncodingError
        err, text = MaybeEncodingError(exc, _ShortRepr(value)), None
    try:
        return pickle.dumps((err, text), 5)
    except Exception as e:
        from multiprocessing.pool import MaybeEncodingError
        return pickle.dumps((MaybeEncodingError(e, err), text), 5)
