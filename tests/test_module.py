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
