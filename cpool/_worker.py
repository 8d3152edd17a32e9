"""What runs inside the workers (and the template process): a new worker's
set-up, and the pickling of large objects and of errors.  cpool._cpool calls
these; the pool hands them over (Core() and _set_hooks), so that C never
imports the package."""
import os
import pickle
import sys
import traceback

from . import _cpool

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


_OOB_MIN = _cpool.OOB_MIN


class _Big:
    """A large bytes/bytearray, pickled as a protocol-5 buffer (out of band:
    cpool copies it once, straight into shared memory).  bytes and bytearray
    never go out of band by themselves, and Pickler.reducer_override is not
    consulted for them; so cpool._cpool swaps them for this first."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        # Rebuilt by cpool's C helper: copied without the GIL, into pages
        # faulted in at once (a fresh 200 MiB bytes otherwise takes 51,200
        # page faults).
        return _cpool._rebuild, (pickle.PickleBuffer(self.obj), type(self.obj))


def _swap_big(o, depth, bigs):
    t = type(o)
    if (t is bytes or t is bytearray) and len(o) >= _OOB_MIN:
        bigs.append(_Big(o))
        return bigs[-1]
    if depth:
        if t is tuple:
            return tuple([_swap_big(x, depth - 1, bigs) for x in o])
        if t is list:
            return [_swap_big(x, depth - 1, bigs) for x in o]
        if t is dict:
            return {k: _swap_big(v, depth - 1, bigs) for k, v in o.items()}
    return o


def _pack_oob(obj):
    """(pickle, [buffers], copied) of an object holding large buffers (called
    from C only for those): protocol 5, the buffers out of band.  copied:
    every buffer is a _Big's, which the receiver copies out (no object keeps
    a view of the shared memory it came in)."""
    bufs, bigs = [], []
    data = pickle.dumps(_swap_big(obj, 2, bigs), protocol=5, buffer_callback=bufs.append)
    return data, bufs, len(bufs) == len(bigs)


_cpool._set_hooks(pack_oob=_pack_oob)   # the extension calls it; it never imports us


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


def _pack_error(exc, value=_NO_VALUE):
    """Pickle (exception, remote traceback text) for the parent.  With
    value: exc is why the result value could not be pickled."""
    if value is _NO_VALUE:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        err, text = exc, '\n"""\n%s"""' % tb
    else:
        from multiprocessing.pool import MaybeEncodingError
        err, text = MaybeEncodingError(exc, _ShortRepr(value)), None
    try:
        return pickle.dumps((err, text), 5)
    except Exception as e:
        from multiprocessing.pool import MaybeEncodingError
        return pickle.dumps((MaybeEncodingError(e, err), text), 5)
