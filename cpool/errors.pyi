"""Type stubs of cpool.errors: the exceptions cpool raises besides
multiprocessing's own (checked by tests/test_stubs.py and tests/test_typing.py)."""
import builtins
import multiprocessing
import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = ["TimeoutError", "TaskTimeoutError", "WorkerLostError", "BrokenPoolError",
           "InitializerError", "TaskAbortedError", "ResultUnpicklingError",
           "PoolTerminatedError"]

class TimeoutError(multiprocessing.TimeoutError): ...

class TaskTimeoutError(builtins.TimeoutError):
    pid: int | None
    item: int | None
    elapsed: float | None
    timeout: float | None
    killed: bool
    def __init__(self, message: str, pid: int | None = None, item: int | None = None,
                 elapsed: float | None = None, timeout: float | None = None,
                 killed: bool = False) -> None: ...

class WorkerLostError(BrokenProcessPool):
    pid: int | None
    exitcode: int | None
    signal: int | None
    def __init__(self, message: str, pid: int | None = None, exitcode: int | None = None,
                 signal: int | None = None) -> None: ...

class BrokenPoolError(BrokenProcessPool): ...
class InitializerError(BrokenPoolError): ...
class TaskAbortedError(RuntimeError): ...
class ResultUnpicklingError(pickle.UnpicklingError): ...
class PoolTerminatedError(RuntimeError): ...
