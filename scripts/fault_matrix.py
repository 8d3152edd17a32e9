"""Run the same fault scenarios on multiprocessing.Pool and on cpool.Pool,
each in a fresh interpreter under a time limit, and print a Markdown table
of what each did.  Not part of the test suite (multiprocessing hangs in some
of them, on purpose); the README's table comes from this script.

    python scripts/fault_matrix.py [--timeout SECONDS]
"""
import argparse
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import os, sys, signal, time, threading, ctypes
import {mod} as mp
W = 8   # seconds a get() waits before we call it a hang
def outcome(fn):
    try:
        r = fn()
        print("returns", repr(r)[:40])
    except mp.TimeoutError:
        print("HANGS: get() still waiting after", W, "s")
    except BaseException as e:
        print("raises", type(e).__name__)
    sys.stdout.flush()
def still_works(pool):
    try:
        ok = pool.map_async(abs, [-1, -2]).get(timeout=W) == [1, 2]
    except BaseException:
        ok = False
    print("; pool usable" if ok else "; pool NOT usable")
def die(x):
    os.kill(os.getpid(), signal.SIGKILL)
def segfault(x):
    ctypes.string_at(0)
def exit_(x):
    os._exit(3)
def sys_exit(x):
    sys.exit(2)
def bad_init():
    raise KeyError("config")
def ident(x):
    return x
def lam(x):
    return lambda: x
class NoRebuild(Exception):
    def __init__(self, a, b):
        super().__init__(a)
def raise_norebuild(x):
    raise NoRebuild(1, 2)
class NoPickle:
    def __reduce__(self):
        raise TypeError("no pickling")
def gen():
    yield 1; yield 2
    raise ValueError("input broke")
PULLED = [0]
def count():
    while True:
        PULLED[0] += 1
        yield PULLED[0]
def bump(v):
    with v.get_lock():
        v.value += 1
def hold(lock):
    lock.acquire(); os._exit(0)
"""

SCENARIOS = [
    ("a worker is SIGKILLed mid-task (`apply_async`)", """
pool = mp.Pool(2)
outcome(lambda: pool.apply_async(die, (1,)).get(timeout=W)); still_works(pool)
"""),
    ("a task segfaults (`map`)", """
pool = mp.Pool(2)
outcome(lambda: pool.map_async(segfault, [1]).get(timeout=W)); still_works(pool)
"""),
    ("a task calls `os._exit` (`imap`)", """
pool = mp.Pool(2)
outcome(lambda: pool.imap(exit_, [1]).next(timeout=W)); still_works(pool)
"""),
    ("a task calls `sys.exit()`", """
pool = mp.Pool(2)
outcome(lambda: pool.apply_async(sys_exit, (1,)).get(timeout=W)); still_works(pool)
"""),
    ("the initializer raises", """
pool = mp.Pool(2, initializer=bad_init)
outcome(lambda: pool.apply_async(ident, (1,)).get(timeout=W))
"""),
    ("an argument cannot be pickled", """
pool = mp.Pool(2)
outcome(lambda: pool.map_async(ident, [NoPickle()]).get(timeout=W)); still_works(pool)
"""),
    ("a result cannot be pickled", """
pool = mp.Pool(2)
outcome(lambda: pool.apply_async(lam, (1,)).get(timeout=W)); still_works(pool)
"""),
    ("an exception cannot be rebuilt in the parent", """
pool = mp.Pool(2)
outcome(lambda: pool.apply_async(raise_norebuild, (1,)).get(timeout=W)); still_works(pool)
"""),
    ("the input iterator raises midway (`map`)", """
pool = mp.Pool(2)
outcome(lambda: pool.map_async(ident, gen()).get(timeout=W)); still_works(pool)
"""),
    ("a callback raises; a later result", """
pool = mp.Pool(2)
def cb(r):
    raise RuntimeError("callback broke")
pool.apply_async(ident, (1,), callback=cb).wait(W)
outcome(lambda: pool.apply_async(ident, (2,)).get(timeout=W))
"""),
    ("`get()` after `terminate()`", """
pool = mp.Pool(2)
r = pool.apply_async(time.sleep, (30,)); time.sleep(0.2)
pool.terminate()
outcome(lambda: r.get(timeout=W))
"""),
    ("`imap` over an endless generator: input read 1 s after taking 5 results", """
pool = mp.Pool(2)
it = pool.imap(ident, count())
first = [it.next(timeout=W) for _ in range(5)]
time.sleep(1.0)
print(f"{PULLED[0]:,} items read")
"""),
    ("a `Value` passed as a task argument", """
v = mp.Value("i", 0)
pool = mp.Pool(2)
outcome(lambda: (pool.map_async(bump, [v] * 4).get(timeout=W), v.value)[1])
"""),
    ("a process dies holding a `Lock`", """
lock = mp.Lock()
import multiprocessing
p = multiprocessing.get_context("fork").Process(target=hold, args=(lock,)); p.start(); p.join()
outcome(lambda: "acquired" if lock.acquire(timeout=3) else "still locked after 3 s")
"""),
    ("the parent is SIGKILLed", """
r, w = os.pipe()
if os.fork() == 0:
    pool = mp.Pool(2)
    pids = [p.pid for p in pool._pool]
    os.write(w, (" ".join(map(str, pids)) + "\\n").encode())
    pool.map_async(time.sleep, [30, 30])
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
pids = [int(x) for x in os.read(r, 100).split()]
time.sleep(1.0)
def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
left = [p for p in pids if alive(p)]
for p in left:
    os.kill(p, signal.SIGKILL)
print(f"{len(left)} of {len(pids)} workers still running 1 s later")
"""),
]


def run(mod, body, timeout):
    src = PRELUDE.format(mod=mod) + textwrap.dedent(body) + "\nos._exit(0)\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                           timeout=timeout, env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        return f"HANGS: killed after {timeout} s"
    out = " ".join(p.stdout.split())
    return out or f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}, fork start method\n")
    print("| scenario | `multiprocessing.Pool` | `cpool.Pool` |")
    print("| --- | --- | --- |")
    for name, body in SCENARIOS:
        mp_out = run("multiprocessing", body, args.timeout)
        cp_out = run("cpool", body, args.timeout)
        print(f"| {name} | {mp_out} | {cp_out} |", flush=True)


if __name__ == "__main__":
    main()
