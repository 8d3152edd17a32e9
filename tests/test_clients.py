"""Real clients (issue 14): libraries that take a pool only if it is a
multiprocessing.pool.Pool, given a cpool pool, compute what they compute
without one.

* dask's "processes" scheduler wraps a pool it is given in its
  MultiprocessingPoolExecutor only if ``isinstance(pool,
  multiprocessing.pool.Pool)`` (dask/multiprocessing.py); anything else it
  takes for a concurrent.futures executor, and calls ``pool.submit``.
* xyzpy's combo_runner submits ``apply_async(fn, args, kwds)`` to an
  executor that is a ``multiprocessing.pool.Pool``
  (xyzpy/gen/combo_runner.py, ``_submit``); any other executor with an
  apply_async gets ipyparallel's calling convention,
  ``apply_async(fn, *args, **kwds)``.

So each test here fails if cpool.Pool stops being a multiprocessing pool.
The libraries are the ``test`` extra's; a missing one fails this module
(xyzpy needs Python 3.10: older Pythons skip its tests, as the extra's
marker leaves it out there).
"""
import os
import sys

import dask
import dask.bag as db
import pytest

from conftest import module_pool
from tasks import T

if sys.version_info >= (3, 10):
    import xyzpy
else:
    xyzpy = None

pool2 = module_pool(2)
needs_xyzpy = pytest.mark.skipif(xyzpy is None, reason="xyzpy needs Python 3.10+")


class ClientTaskError(Exception):
    """Raised by a task; module level, so it pickles by reference."""


def _square(x):
    return x * x


def _odd(x):
    return x % 2 == 1


def _inverse(x):
    return 1 / x


def _fail_on(x, bad):
    if x == bad:
        raise ClientTaskError(f"task {x} failed")
    return x


def _pid(_):
    return os.getpid()


def _product(a, b):
    return a * b


def _pid_of(a, b):
    return os.getpid()


def _worker_pids(pool):
    return {w.pid for w in pool._pool}


# -- dask: dask.bag, dask.delayed and dask.compute on the processes scheduler --

def test_dask_bag_runs_on_a_cpool_pool(pool2):
    b = db.from_sequence(range(200), npartitions=8)
    squares = b.map(_square)
    odd = squares.filter(_odd)
    graph = (squares.sum(), odd.count(), odd.frequencies(),
             b.foldby(_odd, lambda acc, x: acc + x, 0, lambda a, c: a + c, 0),
             b.map(lambda x: (x % 3, x)).pluck(0).distinct())
    expect = dask.compute(*graph, scheduler="sync")
    got = dask.compute(*graph, scheduler="processes", pool=pool2)
    assert [sorted(g) if isinstance(g, list) else g for g in got] == \
        [sorted(e) if isinstance(e, list) else e for e in expect]
    assert got[0] == sum(x * x for x in range(200))
    # ... and the tasks ran in the pool's workers, not in this process
    pids = set(db.from_sequence(range(16), npartitions=16).map(_pid)
               .compute(scheduler="processes", pool=pool2))
    assert pids <= _worker_pids(pool2) and os.getpid() not in pids


def test_dask_delayed_and_compute_on_a_cpool_pool(pool2):
    parts = [dask.delayed(_square)(i) for i in range(20)]
    total = dask.delayed(sum)(parts)
    bag_total = db.from_sequence(range(20), npartitions=4).map(_square).sum()
    expect = dask.compute(total, parts, bag_total, scheduler="sync")
    got = dask.compute(total, parts, bag_total, scheduler="processes", pool=pool2)
    assert got == expect
    assert got[0] == got[2] == 2470 and list(got[1]) == [i * i for i in range(20)]


def test_dask_task_error_reaches_the_caller_and_the_pool_goes_on(pool2):
    bag = db.from_sequence(range(10), npartitions=5)
    with pytest.raises(ClientTaskError, match="task 7 failed"):
        bag.map(_fail_on, bad=7).compute(scheduler="processes", pool=pool2)
    with pytest.raises(ZeroDivisionError):
        db.from_sequence([2, 1, 0], npartitions=3).map(_inverse).compute(
            scheduler="processes", pool=pool2)
    with pytest.raises(ClientTaskError):
        dask.compute(dask.delayed(_fail_on)(3, 3), scheduler="processes", pool=pool2)
    # the pool is still usable: by dask, and directly
    assert bag.map(_square).sum().compute(scheduler="processes", pool=pool2) == 285
    assert pool2.map(_square, range(5)) == [0, 1, 4, 9, 16]
    assert pool2.apply_async(_square, (7,)).get(T) == 49


# -- xyzpy: combo_runner and Runner with a pool as the executor --

@needs_xyzpy
def test_xyzpy_combo_runner_takes_a_cpool_pool(pool2):
    combos = {"a": [1, 2, 3], "b": [10, 20]}
    expect = xyzpy.combo_runner(_product, combos, verbosity=0)
    got = xyzpy.combo_runner(_product, combos, executor=pool2, verbosity=0)
    assert got == expect == ((10, 20), (20, 40), (30, 60))
    pids = set(xyzpy.combo_runner(_pid_of, combos, executor=pool2, flat=True,
                                  verbosity=0))
    assert pids <= _worker_pids(pool2) and os.getpid() not in pids


@needs_xyzpy
def test_xyzpy_runner_dataset_from_a_cpool_pool(pool2):
    runner = xyzpy.Runner(_product, var_names="ab")
    combos = {"a": [1, 2, 3, 4], "b": [0.5, 2.0]}
    expect = runner.run_combos(combos, verbosity=0)
    got = runner.run_combos(combos, executor=pool2, verbosity=0)
    assert got.identical(expect)
    assert float(got["ab"].sel(a=3, b=2.0)) == 6.0
