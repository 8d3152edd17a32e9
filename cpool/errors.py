"""cpool's exceptions, and how a task's outcome becomes one.

The C collector hands each task's outcome to its result object as
``(status, value)`` (``_cpool.ST_*``); ``outcome()`` turns it into the value
or the exception the caller sees.
"""
import builtins
import os
import pickle

import multiprocessing
# concurrent.futures' BrokenProcessPool is a base of WorkerLostError and
# BrokenPoolError, so that code catching the executor's error catches cpool's
# (about 3 ms more to import cpool, most of it the logging package).
from concurrent.futures.process import BrokenProcessPool

from . import _cpool

__all__ = ["TimeoutError", "TaskTimeoutError", "WorkerLostError", "BrokenPoolError",
           "InitializerError", "TaskAbortedError", "ResultUnpicklingError",
           "PoolTerminatedError"]

ST_OK, ST_ERR, ST_LOCAL = _cpool.ST_OK, _cpool.ST_ERR, _cpool.ST_LOCAL
ST_LOST, ST_TERMINATED, ST_INITFAIL, ST_UNPICKLE = (
    _cpool.ST_LOST, _cpool.ST_TERMINATED, _cpool.ST_INITFAIL, _cpool.ST_UNPICKLE)
ST_MIXED, ST_TIMEOUT = _cpool.ST_MIXED, _cpool.ST_TIMEOUT


class TimeoutError(multiprocessing.TimeoutError):
    """get() or next() ran out of time; the result may still arrive."""


class TaskTimeoutError(builtins.TimeoutError):
    """A task (one item of a map, also inside a chunk) ran past its time
    limit (task_timeout=).  Raised inside the task first, so its finally:
    blocks and context managers run; a worker that does not stop within a
    second is killed and replaced.  The other items of its chunk, and the
    pool, go on.  pid: the worker; item: the item's index in the input
    (None for apply); elapsed: seconds it ran; timeout: its limit;
    killed: whether its worker was killed.  Not a cpool.TimeoutError (which
    get(timeout) raises when the caller's wait ends): the task ended here."""

    def __init__(self, message, pid=None, item=None, elapsed=None, timeout=None,
                 killed=False):
        super().__init__(message)
        self.pid, self.item, self.elapsed = pid, item, elapsed
        self.timeout, self.killed = timeout, killed

    @classmethod
    def _make(cls, pid, item, elapsed, timeout, killed):
        what = "task" if item is None else f"item {item}"
        how = (f"its worker {pid} was killed: it did not stop when asked" if killed
               else f"stopped in worker {pid}")
        return cls(f"{what} ran {elapsed:.3g} s, past its time limit of {timeout:.3g} s; "
                   f"{how}", pid, item, elapsed, timeout, killed)

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.item, self.elapsed,
                             self.timeout, self.killed))


class WorkerLostError(BrokenProcessPool):
    """The worker running a task died before answering (killed, crashed,
    os._exit).  Only the tasks that worker held fail; the pool replaces it.
    A concurrent.futures.process.BrokenProcessPool (so a RuntimeError), as
    the stdlib's executor raises then; but the pool is not broken."""

    def __init__(self, message, pid=None, exitcode=None, signal=None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.exitcode, self.signal))


class BrokenPoolError(BrokenProcessPool):
    """The pool cannot run tasks any more (a worker could not be started):
    every pending and later call fails with this error; its __cause__ says
    why.  A concurrent.futures.process.BrokenProcessPool (a RuntimeError)."""


class InitializerError(BrokenPoolError):
    """The pool's initializer raised in a worker: the pool is broken, and
    every pending and later call fails with this error (its __cause__ is the
    initializer's exception).  multiprocessing would respawn workers forever."""


class TaskAbortedError(RuntimeError):
    """The task raised a BaseException that is not an Exception (SystemExit,
    KeyboardInterrupt, GeneratorExit...).  Raising that in the caller would
    exit or interrupt it, so this is raised instead, with the original as
    __cause__.  The worker goes on (multiprocessing's would exit, and the
    task's result would never come)."""


class ResultUnpicklingError(pickle.UnpicklingError):
    """A task's result, or the exception it raised, could not be unpickled
    in the parent; __cause__ is why.  The pool goes on."""


class PoolTerminatedError(RuntimeError):
    """The pool was terminated (or its template process died) before the
    task finished."""


def _remote_traceback(text):
    from multiprocessing.pool import RemoteTraceback
    return RemoteTraceback(text)


def _describe_status(wstatus):
    """(exitcode, signal, words) for a waitpid status."""
    if os.WIFSIGNALED(wstatus):
        import signal
        sig = os.WTERMSIG(wstatus)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return -sig, sig, f"killed by signal {name}"
    code = os.WEXITSTATUS(wstatus)
    return code, None, f"exited with code {code}"


def _outcome(job, idx, status, value):
    """(success, value or exception) of one task's outcome."""
    if status == ST_OK:
        return True, value
    if status == ST_ERR:
        exc, tb = value
        if tb is not None:
            exc.__cause__ = _remote_traceback(tb)
        if not isinstance(exc, Exception):
            err = TaskAbortedError(f"task {idx} of job {job} raised "
                                   f"{type(exc).__name__}{exc.args!r}")
            err.__cause__ = exc
            return False, err
        return False, exc
    if status == ST_UNPICKLE:
        why, was_error = value
        what = "the exception raised by" if was_error else "the result of"
        err = ResultUnpicklingError(
            f"could not unpickle {what} task {idx} of job {job}: {why!r}")
        err.__cause__ = why
        return False, err
    if status == ST_LOCAL:
        return False, value
    if status == ST_LOST:
        pid, wstatus, deaths, why = value
        exitcode, sig, words = _describe_status(wstatus)
        if why is not None:
            words = why
        tries = f" (run {deaths} times: each time its worker died)" if deaths > 1 else ""
        return False, WorkerLostError(
            f"worker {pid} {words} while running task {idx} of job {job}{tries}",
            pid, exitcode, sig)
    if status == ST_TIMEOUT:
        return False, TaskTimeoutError._make(*value, killed=True)
    if status == ST_TERMINATED:
        return False, PoolTerminatedError(
            "the pool was terminated before this task finished")
    if status == ST_INITFAIL:
        return False, _initializer_error(value)
    return False, SystemError(f"cpool: unknown status {status}")


def _initializer_error(broken):
    exc, tb, initializer = broken
    if tb is not None:
        exc.__cause__ = _remote_traceback(tb)
    if initializer:
        err = InitializerError("the pool's initializer raised in a worker; "
                               "the pool is broken")
    else:
        err = BrokenPoolError("cpool could not start a worker process; "
                              "the pool is broken")
    err.__cause__ = exc
    return err

