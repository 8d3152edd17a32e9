"""cpool as a drop-in for multiprocessing: its names, the ones it passes
through from multiprocessing, and the workers' identity."""
import multiprocessing
import multiprocessing.pool
import os

import pytest

from cpool import pool as cpool_pool


@pytest.mark.parametrize("name", ["Process", "Queue", "cpu_count", "current_process",
                                  "Manager", "Semaphore", "Event", "get_start_method",
                                  "active_children", "SimpleQueue"])
def test_module_reexports_multiprocessing(name):
    import cpool as mp
    assert getattr(mp, name) is getattr(multiprocessing, name)
    assert name in dir(mp)


def test_module_names():
    import cpool as mp
    import cpool.sharedctypes as sc
    assert mp.Pool is cpool_pool.Pool
    for name in ("Value", "Array", "RawValue", "RawArray", "Lock", "RLock"):
        assert getattr(mp, name) is getattr(sc, name)
    assert issubclass(mp.TimeoutError, multiprocessing.TimeoutError)
    assert cpool_pool.MaybeEncodingError is multiprocessing.pool.MaybeEncodingError
    assert cpool_pool.ThreadPool is multiprocessing.pool.ThreadPool
    with pytest.raises(AttributeError):
        mp.no_such_name_in_multiprocessing
    with pytest.raises(AttributeError):
        cpool_pool.no_such_name_either


def test_worker_identity(pool):
    results = pool.map(_worker_identity, range(8), 1)
    for name, pid in results:
        assert name.startswith("CPoolWorker-")
        assert pid != os.getpid()


def _worker_identity(_):
    return multiprocessing.current_process().name, os.getpid()


# -- a multiprocessing pool to isinstance, and multiprocessing's submodules (issue 14) --

MP_SUBMODULES = ["connection", "context", "dummy", "forkserver", "heap", "managers",
                 "popen_fork", "popen_forkserver", "popen_spawn_posix", "process", "queues",
                 "reduction", "resource_sharer", "resource_tracker", "shared_memory", "spawn",
                 "synchronize", "util"]


def test_a_cpool_pool_is_a_multiprocessing_pool(pool):
    """Libraries check isinstance(pool, multiprocessing.pool.Pool) before
    they take a pool (dask's processes scheduler, emcee helpers...)."""
    mpp = multiprocessing.pool
    assert isinstance(pool, mpp.Pool) and issubclass(type(pool), mpp.Pool)
    assert not isinstance(pool, mpp.ThreadPool)
    a = pool.apply_async(abs, (-3,))
    m = pool.map_async(abs, [-1, -2])
    i, u = pool.imap(abs, [-1]), pool.imap_unordered(abs, [-1])
    assert isinstance(a, mpp.AsyncResult) and isinstance(a, mpp.ApplyResult)
    assert isinstance(m, mpp.MapResult) and isinstance(m, mpp.ApplyResult)
    assert isinstance(i, mpp.IMapIterator) and isinstance(u, mpp.IMapUnorderedIterator)
    assert (a.get(30), m.get(30), list(i), list(u)) == (3, [1, 2], [1], [1])
    # what multiprocessing's Pool keeps, and libraries read
    assert pool._processes == 4 and pool._state == mpp.RUN
    assert pool._ctx.get_start_method() == "fork"
    assert pool._initializer is None and pool._maxtasksperchild is None
    assert isinstance(pool._cache, dict) and len(pool._pool) == 4


def test_none_of_multiprocessings_pool_code_runs(monkeypatch):
    """Being its subclass runs none of multiprocessing.pool's code: no
    __init__ of theirs, so no handler threads and no pipes."""
    import threading
    import cpool

    def refuse(*a, **k):
        raise AssertionError("multiprocessing.pool code ran")
    for cls, names in [(multiprocessing.pool.Pool, ["__init__", "_setup_queues",
                                                   "_repopulate_pool_static",
                                                   "_handle_workers", "_handle_tasks",
                                                   "_handle_results"]),
                       (multiprocessing.pool.ApplyResult, ["__init__"]),
                       (multiprocessing.pool.MapResult, ["__init__"]),
                       (multiprocessing.pool.IMapIterator, ["__init__"])]:
        for name in names:
            monkeypatch.setattr(cls, name, refuse)
    before = set(threading.enumerate())
    with cpool.Pool(2) as p:
        assert p.apply_async(abs, (-1,)).get(30) == 1
        assert p.map(abs, [-1, -2]) == [1, 2]
        assert list(p.imap_unordered(abs, [-1])) == [1]
        new = [t.name for t in set(threading.enumerate()) - before]
    assert len(new) <= 1, new       # cpool's collector thread (C) at most


@pytest.mark.parametrize("name", MP_SUBMODULES)
def test_multiprocessings_submodules_are_cpools(name):
    import importlib
    import cpool
    mine = importlib.import_module(f"cpool.{name}")
    assert mine is importlib.import_module(f"multiprocessing.{name}")
    assert getattr(cpool, name) is mine
    # still multiprocessing's own: its relative imports name its package
    assert mine.__spec__.name == f"multiprocessing.{name}"


def test_submodules_by_import_statements():
    import multiprocessing.dummy.connection
    import multiprocessing.managers
    import multiprocessing.shared_memory
    import cpool.managers
    from cpool import shared_memory, dummy
    from cpool.dummy import connection
    from cpool.managers import BaseManager
    assert cpool.managers is multiprocessing.managers
    assert shared_memory is multiprocessing.shared_memory
    assert dummy is multiprocessing.dummy and connection is multiprocessing.dummy.connection
    assert BaseManager is multiprocessing.managers.BaseManager
    # cpool's own stay cpool's
    import cpool.pool
    import cpool.sharedctypes
    assert cpool.pool.Pool is cpool.Pool
    assert cpool.sharedctypes.__name__ == "cpool.sharedctypes"
    with pytest.raises(ImportError):
        import cpool.no_such_submodule  # noqa: F401


# -- help() shows the public signatures only (issue 14) --

def test_help_shows_no_internals():
    """help(cpool.Pool) and help() of the result classes: no parameter of
    cpool's own methods is private (``_warn=``), and none has a default that
    is a helper object (``<built-in function warn>``, a lambda)."""
    import inspect
    import pydoc
    import re
    import cpool
    from cpool import imap as cpool_imap, results as cpool_results
    classes = [cpool.Pool, cpool_results.ApplyResult, cpool_results.MapResult,
               cpool_imap.IMapIterator, cpool_imap.IMapUnorderedIterator]
    for cls in classes:
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        assert "_warn=" not in text and "<lambda>" not in text, text
        assert not re.search(r"=<[^>]*>", text), text   # a default that is an object
        for name, attr in vars(cls).items():
            func = getattr(attr, "__func__", attr)
            if not inspect.isfunction(func) or not pydoc.visiblename(name, obj=cls):
                continue
            for p in inspect.signature(func).parameters.values():
                assert not p.name.startswith("_"), f"{cls.__name__}.{name}{inspect.signature(func)}"
    assert str(inspect.signature(cpool.Pool.__del__)) == "(self)"
    assert cpool.Pool.__del__.__qualname__ == "Pool.__del__"
