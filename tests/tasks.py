"""Functions the tests run in pool workers, shared by several test files
(module level: pickled by reference), and T, the bound on every wait for a
result.

Everything that waits on a worker is bounded (get(timeout=...),
next(timeout=...), join_within); the conftest's hang guard catches the rest.
"""
import os
import time

T = 30  # seconds: the bound on every wait for a result


def square(x):
    return x * x


def add3(a, b=0, c=0):
    return a + b + c


def kw_echo(*args, **kwds):
    return args, kwds


def identity(x):
    return x


def sleep_then(delay, value=None):
    time.sleep(delay)
    return value


def sleepy_identity(pair):
    delay, value = pair
    time.sleep(delay)
    return value


def raise_value_error(x):
    raise ValueError("bad value", x)


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x * 10


def report_pid_and_sleep(path):
    """Write this worker's pid to `path` (atomically), then sleep T: the
    task a test kills its worker under."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(T)
    return "not killed"
