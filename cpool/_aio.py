"""asyncio on cpool's results: ``await pool.apply_async(...)``,
``await pool.map_async(...)``, ``async for x in pool.imap(...)``.

No thread per await.  An awaiting coroutine parks on an asyncio future of
its own loop, registered with the result object (``_aw``); whoever delivers
the outcome (cpool's collector thread, usually) calls ``wake()`` for each,
which queues it for its loop and, once per batch, asks that loop to resolve
what is queued (``call_soon_threadsafe``: one write to the loop's self-pipe
per batch, not per await).  The loop resolves at most ``BATCH`` futures per
callback and leaves the rest to the next iteration, so 10,000 results
arriving at once never keep the loop from its other work for long.

A future only says "look again": the coroutine then reads the outcome as a
non-blocking get() would, so a wake-up that comes twice, or for a coroutine
cancelled meanwhile, is harmless.  Cancelling an awaiting coroutine cancels
nothing in the pool (as with ``loop.run_in_executor``): the task runs, and
its result is delivered to the result object as usual.

asyncio itself is imported only by the first await.
"""
from _thread import allocate_lock as _allocate_lock

BATCH = 256     # futures resolved per loop callback

_lock = _allocate_lock()
_queued = {}    # loop -> [futures to resolve], while a drain is scheduled


def future():
    """A new future of the running loop (RuntimeError outside one)."""
    import asyncio
    return asyncio.get_running_loop().create_future()


def park(obj, fut):
    """Register fut in obj._aw, to be woken when obj's next outcome is in
    (the caller orders this against obj's delivery: see the callers)."""
    aw = obj._aw
    if aw is None:
        obj._aw = [fut]
    else:
        aw.append(fut)


def wake_all(aw):
    """Wake the futures of a result object's _aw list (taken from it)."""
    for fut in aw:
        wake(fut)


def wake(fut):
    """Resolve fut on its loop, from any thread."""
    loop = fut.get_loop()
    with _lock:
        q = _queued.get(loop)
        if q is not None:
            q.append(fut)
            return
        _queued[loop] = [fut]
    try:
        loop.call_soon_threadsafe(_drain, loop)
    except RuntimeError:        # the loop is closed: nobody waits there
        with _lock:
            _queued.pop(loop, None)


def _drain(loop):
    with _lock:
        futs = _queued.pop(loop, ())
    _resolve(loop, futs, 0)


def _resolve(loop, futs, start):
    end = min(start + BATCH, len(futs))
    for i in range(start, end):
        fut = futs[i]
        if not fut.done():
            fut.set_result(None)
    if end < len(futs):
        loop.call_soon(_resolve, loop, futs, end)
