"""A typed client of cpool's public API (tests/test_typing.py): ``mypy
--strict`` must pass on it, and it runs, so every call typed here is a real
one.  It calls everything cpool offers, as a program moving from
``multiprocessing`` would, and hands cpool's objects to code typed for
multiprocessing's.  The assert_type() lines pin what the stubs say; the
types that are multiprocessing's are compared with multiprocessing's own
stubs by test_typing.py's reveal_type check, the ones here are cpool's.
"""
from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import multiprocessing.pool
import multiprocessing.queues
import multiprocessing.sharedctypes
import time
from typing import Any

from typing_extensions import assert_type

import cpool
import cpool.errors
import cpool.managers
import cpool.pool
import cpool.sharedctypes
from cpool import shared_memory
from cpool.pool import ApplyResult, AsyncResult, IMapIterator, MapResult

SEEN: list[object] = []


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(x)


def init(tag: str) -> None:
    SEEN.append(tag)


def on_int(value: int) -> None:
    SEEN.append(value)


def on_list(values: list[int]) -> None:
    SEEN.append(values)


def on_error(exc: BaseException) -> None:
    SEEN.append(exc)


# -- code typed for multiprocessing, handed cpool's objects --

def total(pool: multiprocessing.pool.Pool, xs: list[int]) -> int:
    return sum(pool.map(square, xs))


def first(result: multiprocessing.pool.AsyncResult[int]) -> int:
    return result.get(timeout=10)


def bump(counter: multiprocessing.sharedctypes.Synchronized[int], n: int) -> None:
    with counter.get_lock():
        counter.value += n


def fill(values: multiprocessing.sharedctypes.SynchronizedArray[float]) -> None:
    for i in range(len(values)):
        values[i] = i / 2


# cpool's result classes are multiprocessing's (subclasses), to type checkers too.
def as_mp(result: ApplyResult[int], mapped: MapResult[str],
          it: IMapIterator[bytes]) -> tuple[multiprocessing.pool.ApplyResult[int],
                                            multiprocessing.pool.MapResult[str],
                                            multiprocessing.pool.IMapIterator[bytes]]:
    return result, mapped, it


class MyPool(cpool.Pool):
    """A subclass, as programs make of multiprocessing.pool.Pool."""

    def squares(self, n: int) -> list[int]:
        return self.map(square, range(n))


async def the_awaits(p: cpool.Pool) -> None:
    assert_type(await p.apply_async(square, (2,)), int)
    assert_type(await p.map_async(square, [1, 2]), "list[int]")
    assert_type(await p.starmap_async(add, [(1, 2)]), "list[int]")
    async for x in p.imap_unordered(square, [3]):
        assert_type(x, int)


def the_pool() -> None:
    pool = cpool.Pool(processes=2, initializer=init, initargs=("ready",),
                      maxtasksperchild=1000, context="fork", retries=1,
                      max_memory_per_child=1 << 30, task_timeout=60)
    assert_type(pool, cpool.Pool)
    assert isinstance(pool, multiprocessing.pool.Pool)
    with pool as p:
        assert_type(p, cpool.Pool)
        assert total(p, [1, 2, 3]) == 14
        assert_type(p.apply(square, (3,)), int)
        assert p.apply(add, (), {"x": 1, "y": 2}) == 3

        r = p.apply_async(square, (4,), {}, callback=on_int, error_callback=on_error)
        # cpool's result classes: subclasses of typeshed's (code annotated
        # with multiprocessing's types takes them), and awaitable.
        assert_type(r, "cpool.pool.AsyncResult[int]")
        mp_r: multiprocessing.pool.AsyncResult[int] = r
        r.wait(10)
        assert_type(r.ready(), bool)
        assert_type(r.get(timeout=10), int)
        assert r.successful() and first(r) == 16
        bad = p.apply_async(fail, (1,), error_callback=on_error)
        bad.wait()
        assert not bad.successful()
        try:
            bad.get()
        except ValueError:
            pass

        assert_type(p.map(square, range(4), 2), "list[int]")
        m = p.map_async(square, [1, 2], chunksize=1, callback=on_list,
                        error_callback=on_error)
        assert_type(m, "cpool.pool.MapResult[int]")
        mp_m: multiprocessing.pool.MapResult[int] = m
        assert_type(m.get(10), "list[int]")

        assert p.starmap(add, [(1, 2), (3, 4)], chunksize=1) == [3, 7]
        sm = p.starmap_async(add, [(1, 2)], 1, on_list, on_error)
        assert_type(sm, "cpool.pool.AsyncResult[list[int]]")
        assert sm.get(10) == [3]

        it = p.imap(square, range(5), chunksize=2, buffersize=2)
        assert_type(it, "cpool.imap.IMapIterator[int]")
        mp_it: multiprocessing.pool.IMapIterator[int] = it
        assert_type(it.next(timeout=10), int)
        assert_type(next(it), int)
        assert list(it) == [4, 9, 16]
        un = p.imap_unordered(square, iter(range(5)), 1, buffersize=4)
        assert sorted(un) == [0, 1, 4, 9, 16]
        assert [x for x in p.imap(square, [])] == []

        # what cpool adds: retries, task_timeout, progress, stats
        assert_type(p.apply(square, (2,), retries=1), int)
        assert_type(p.apply(square, (2,), task_timeout=30.5), int)
        assert p.starmap(add, [(1, 2)], task_timeout=10) == [3]
        assert list(p.imap(square, [2], task_timeout=None)) == [4]
        try:
            p.apply(time.sleep, (10,), task_timeout=0.2)
        except cpool.TaskTimeoutError as stopped:
            assert_type(stopped.item, "int | None")
            assert_type(stopped.elapsed, "float | None")
            assert isinstance(stopped, TimeoutError) and not stopped.killed
        assert p.map(square, [1, 2], retries=0) == [1, 4]
        assert list(p.imap_unordered(square, [3], retries=2)) == [9]
        counts: list[tuple[int, int | None]] = []

        def on_progress(done: int, total: int | None) -> None:
            counts.append((done, total))

        assert p.map(square, [1, 2], progress=on_progress) == [1, 4]
        assert p.starmap_async(add, [(1, 2)], progress=False).get(10) == [3]
        assert list(p.imap(square, iter([3]), progress=lambda d, t: None)) == [9]
        assert counts[-1] == (2, 2)
        stats = p.stats()
        assert_type(stats, cpool.PoolStats)
        assert_type(stats.workers[0], cpool.WorkerStats)
        assert_type(stats.workers[0].rss, "int | None")
        assert stats.done > 0 and str(stats).startswith("tasks:")
        asyncio.run(the_awaits(p))

        slow = p.apply_async(time.sleep, (0.5,))
        try:
            slow.get(timeout=0.01)
        except cpool.TimeoutError:
            pass
        p.close()
        p.join()
    assert issubclass(MapResult, multiprocessing.pool.MapResult)
    assert AsyncResult is ApplyResult

    with MyPool(1) as mine:
        assert_type(mine.squares(3), "list[int]")
        mine.terminate()
    late = cpool.Pool(1)
    waiting = late.apply_async(time.sleep, (30,))
    late.terminate()
    late.join()
    try:
        waiting.get(timeout=10)
    except cpool.PoolTerminatedError:
        pass


def the_errors() -> None:
    lost = cpool.WorkerLostError("worker 1 killed", 1, -9, 9)
    assert_type(lost.pid, "int | None")
    assert_type(lost.exitcode, "int | None")
    assert_type(lost.signal, "int | None")
    errors: list[type[BaseException]] = [
        cpool.TimeoutError, cpool.WorkerLostError, cpool.BrokenPoolError,
        cpool.InitializerError, cpool.PoolTerminatedError, cpool.TaskAbortedError,
        cpool.ResultUnpicklingError, cpool.errors.WorkerLostError, cpool.TaskTimeoutError,
    ]
    assert issubclass(cpool.InitializerError, cpool.BrokenPoolError)
    timeout: type[multiprocessing.TimeoutError] = cpool.TimeoutError
    assert errors and timeout


def the_shared_types() -> None:
    v = cpool.Value("i", 0)
    assert_type(v, "multiprocessing.sharedctypes.Synchronized[Any]")
    c = cpool.Value(ctypes.c_int, 0, lock=cpool.RLock())
    assert_type(c, "multiprocessing.sharedctypes.Synchronized[int]")
    bump(c, 2)
    with cpool.Pool(2) as p:
        p.starmap(bump, [(c, 1)] * 4)
    assert_type(c.value, int)
    assert c.value == 6
    raw = cpool.Value(ctypes.c_double, 1.5, lock=False)
    assert_type(raw, ctypes.c_double)
    assert raw.value == 1.5

    a = cpool.Array(ctypes.c_double, 3)
    assert_type(a, "multiprocessing.sharedctypes.SynchronizedArray[float]")
    fill(a)
    assert a[:] == [0.0, 0.5, 1.0]
    s = cpool.Array(ctypes.c_char, 8)
    assert_type(s, multiprocessing.sharedctypes.SynchronizedString)
    s.value = b"hi"
    assert s.value == b"hi"
    assert len(cpool.Array("i", [1, 2, 3], lock=cpool.Lock())) == 3
    plain = cpool.Array(ctypes.c_int, [1, 2], lock=False)
    assert_type(plain, "ctypes.Array[ctypes.c_int]")
    rv = cpool.RawValue(ctypes.c_long, 7)
    assert_type(rv, ctypes.c_long)
    ra = cpool.RawArray(ctypes.c_ubyte, 4)
    assert_type(ra, "ctypes.Array[ctypes.c_ubyte]")
    assert rv.value == 7 and len(ra) == 4
    assert cpool.sharedctypes.copy(rv).value == 7
    sync = cpool.sharedctypes.synchronized(cpool.RawValue(ctypes.c_int, 3))
    assert_type(sync, "multiprocessing.sharedctypes.Synchronized[int]")
    assert sync.value == 3
    assert cpool.sharedctypes.Value("d", 0.5, ctx=None).get_obj().value == 0.5

    lock = cpool.Lock()
    assert_type(lock, cpool.Lock)
    with lock:
        pass
    assert_type(lock.acquire(True, 1.0), bool)
    lock.release()
    assert_type(lock.owner_died, bool)
    rlock: cpool.sharedctypes.Lock = cpool.RLock()
    with rlock, rlock:
        pass


def the_context_and_the_rest() -> None:
    ctx = cpool.get_context("fork")
    assert_type(ctx, multiprocessing.context.ForkContext)
    with ctx.Pool(1) as p:
        assert p.map(square, [3]) == [9]
        assert isinstance(p, cpool.Pool)
    assert cpool.get_context().get_start_method() in ("fork", "spawn", "forkserver")
    assert_type(cpool.get_context("spawn"), multiprocessing.context.SpawnContext)
    with cpool.Pool(1, context=cpool.get_context("forkserver")) as p:
        assert p.apply(add, (2, 3)) == 5

    assert_type(cpool.cpu_count(), int)
    assert cpool.current_process().name == "MainProcess"
    assert cpool.active_children() == []
    assert cpool.parent_process() is None
    q: multiprocessing.queues.Queue[int] = cpool.Queue()
    q.put(1)
    assert q.get(timeout=10) == 1
    q.close()
    event = cpool.Event()
    event.set()
    assert event.is_set()
    assert issubclass(cpool.Process, multiprocessing.process.BaseProcess)
    manager: type[cpool.managers.SyncManager] = cpool.managers.SyncManager
    assert manager is not None and callable(shared_memory.SharedMemory)
    assert isinstance(cpool.__version__, str)
    assert cpool.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver")
    unknown: Any = cpool.log_to_stderr
    assert unknown


def main() -> None:
    the_pool()
    the_errors()
    the_shared_types()
    the_context_and_the_rest()
    assert "ready" not in SEEN   # the initializer ran in the workers
    print("typing_client: ok")


if __name__ == "__main__":
    main()
