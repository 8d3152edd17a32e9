"""Issue 11: another local user can neither read, crash nor take over a pool
through its memory, whatever the sysctls or the umask; a truncation by the
pool's own user is refused (sealed memfds), never a SIGBUS.

Real users, real processes.  The pool runs as root in a fresh interpreter.
Each attacker is a fresh interpreter started as root (the interpreter lives
under /root, mode 0700: nobody could not start it) whose script drops to
nobody/nogroup (65534) right after its imports, before it touches anything.
The processes talk by lines on stdin/stdout and every wait is bounded: a hang
is a failure, never a stuck run.  Each test gathers every problem it sees and
fails with the whole list.  docs/security.md says which claim each test checks.
"""
import errno
import inspect
import json
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import cpool
from conftest import python_env
from procs import proc_stat

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to act as a second local user (CI runs as root)")

NOBODY = 65534          # nobody / nogroup
LINE_TIMEOUT = 30       # seconds: any one expected line
PROTECTED_REGULAR = "/proc/sys/fs/protected_regular"
# The scenario scripts import the cpool this test process imported (run from
# another tree's PYTHONPATH, they must not fall back to the repository's).
CPOOL_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cpool.__file__)))


# -- helpers shared with the scripts (their source is pasted into them, with
# procs.proc_stat's: a script that runs as nobody imports nothing of ours) ----

def squat_names(pid):
    """Every /dev/shm name the old (named-segment) scheme gave the pools of
    process `pid`, over small ranges: pool k, recycled index j, worker slot,
    worker incarnation inc, one-shot sequence n."""
    names = []
    for k in range(3):
        p = f"cpool.{pid}.{k}."
        names += [f"{p}T.{j}" for j in range(16)]
        names += [f"{p}R{slot}.{j}" for slot in range(4) for j in range(16)]
        for n in range(64):
            names += [f"{p}t{n}", f"{p}f{n}"]
            names += [f"{p}r{slot}.{inc}.{n}" for slot in range(4) for inc in range(3)]
    return names


def family(pid):
    """pid and its live descendants (parent links from /proc/*/stat)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(entry)
        if fields is not None and fields[0] != "Z":
            parent[int(entry)] = int(fields[1])
    found = {pid}
    while True:
        kids = {p for p, pp in parent.items() if pp in found} - found
        if not kids:
            return sorted(found)
        found |= kids


# Imports, then the privilege drop: nothing under /root can be read after it.
AS_NOBODY = f"""\
import errno, json, os, select, sys, time
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
assert (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()) == \\
    ({NOBODY}, {NOBODY}, {NOBODY}, {NOBODY}, [])
"""
HELPERS = "\n".join(textwrap.dedent(inspect.getsource(f))
                    for f in (squat_names, proc_stat, family))


# -- the scripts ----------------------------------------------------------------

# The squatter: pre-creates, as nobody and mode 0666, every name of
# squat_names(pid), then sweeps until told to stop.  A sweep tries every
# /proc/<p>/fd/N (N < 256), /proc/<p>/fd, /proc/<p>/map_files and /proc/<p>/mem
# of the pool's processes, and opens every /dev/shm/cpool* file it can: reads
# it (looking for the secret), then, unless it is one of its own still holding
# only the marker, truncates it to 0 and overwrites it with junk.
# Commands on stdin: "sync" (answered "synced" after one whole sweep begun
# after it), "stop" (answered with the report).
SQUATTER = AS_NOBODY + HELPERS + r"""
pool_pid = int(sys.argv[1])
secret = bytes.fromhex(sys.argv[2])
marker = bytes.fromhex(sys.argv[3])
mine = set(squat_names(pool_pid))
before = {n for n in os.listdir("/dev/shm") if n.startswith("cpool")}   # not the pool's
for name in sorted(mine):
    fd = os.open("/dev/shm/" + name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o666)
    os.fchmod(fd, 0o666)            # past the umask
    os.write(fd, marker)
    os.close(fd)
JUNK = b"\x80\x05junk from nobody." * 512
sets = ("secret_seen", "written", "opened", "truncated", "overwritten", "root_files",
        "proc_opened", "pids")
report = {k: set() for k in sets}
report.update(proc_denied=0, sweeps=0)

def attack_proc(p):
    report["pids"].add(p)
    for d in (f"/proc/{p}/fd", f"/proc/{p}/map_files"):
        try:
            os.listdir(d)
            report["proc_opened"].add(d)
        except PermissionError:
            report["proc_denied"] += 1
        except OSError:
            pass
    for path in [f"/proc/{p}/mem"] + [f"/proc/{p}/fd/{n}" for n in range(256)]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except PermissionError:
            report["proc_denied"] += 1
            continue
        except OSError:
            continue
        os.close(fd)
        report["proc_opened"].add(path)

def attack_shm(name):
    path = "/dev/shm/" + name
    try:
        st = os.lstat(path)
    except OSError:
        return
    if name in before:
        return
    if st.st_uid == 0:
        report["root_files"].add(name)
    fd = None
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
            break
        except OSError:
            pass
    if fd is None:
        return
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, 64 << 20), 0) if size else b""
        if secret in data:
            report["secret_seen"].add(name)
        if name in mine and data == marker:
            return
        report["written" if name in mine else "opened"].add(name)
        try:
            os.ftruncate(fd, 0)
            report["truncated"].add(name)
        except OSError:
            pass
        try:
            os.pwrite(fd, JUNK, 0)
            report["overwritten"].add(name)
        except OSError:
            pass
    finally:
        os.close(fd)

def sweep():
    for p in family(pool_pid):
        attack_proc(p)
    for name in os.listdir("/dev/shm"):
        if name.startswith("cpool"):
            attack_shm(name)
    report["sweeps"] += 1

print("armed", len(mine), flush=True)
pending = b""
while True:
    stop = sync = False
    if select.select([0], [], [], 0)[0]:
        chunk = os.read(0, 4096)
        stop = not chunk
        pending += chunk
    *commands, pending = pending.split(b"\n")
    stop = stop or b"stop" in commands
    sync = b"sync" in commands
    if stop:
        break
    sweep()
    if sync:
        print("synced", report["sweeps"], flush=True)
print("report", json.dumps({k: sorted(v) if isinstance(v, set) else v
                            for k, v in report.items()}), flush=True)
"""

# The pool for the squatting tests: fork, 2 workers, secrets both ways.
SQUAT_POOL = r"""
import os, sys, cpool
SECRET = bytes.fromhex(sys.argv[1])

def echo(x):
    return x

def make(n):
    b = bytearray(n)
    for at in (0, n // 2, n - len(SECRET)):
        b[at:at + len(SECRET)] = SECRET
    return bytes(b)

class Carry:
    "A callable whose pickle is over 200 KiB (a FUNC record of its own)."
    def __init__(self):
        self.state = SECRET + os.urandom(200 << 10) + SECRET
    def __call__(self, x):
        return x, len(self.state), self.state.endswith(SECRET)

pool = cpool.Pool(2, context="fork")
print("ready", os.getpid(), repr(getattr(pool._core, "segment_prefix", None)),
      cpool.__file__, flush=True)
assert sys.stdin.readline() == "go\n"

def step(name, check):
    try:
        ok = check()
    except BaseException as e:
        print(f"step {name}: {type(e).__name__}: {e}"[:400], flush=True)
    else:
        print(f"step {name}: {'ok' if ok else 'WRONG RESULT'}", flush=True)

big = make(4 << 20)
step("apply 4 MiB", lambda: pool.apply(echo, (big,)) == big)
items = [SECRET + bytes([i]) * (200 << 10) for i in range(40)]
step("map 40 x 200 KiB", lambda: pool.map(echo, items) == items)
step("20 MiB result", lambda: pool.apply(make, (20 << 20,)) == make(20 << 20))
carry = Carry()
step("200 KiB callable", lambda: pool.map(carry, range(8)) ==
     [(i, len(carry.state), True) for i in range(8)])
print("worked", flush=True)
sys.stdin.readline()
pool.close()
pool.join()
print("closed", flush=True)
"""
SQUAT_STEPS = ["apply 4 MiB", "map 40 x 200 KiB", "20 MiB result", "200 KiB callable"]

# umask 0: a Value and a pool; mid-run a worker holds a task whose argument is
# 4 MiB and a Value (so a data segment and the arena are open in both ends).
UMASK_POOL = r"""
import os, sys, time, cpool
os.umask(0)
SECRET = bytes.fromhex(sys.argv[1])

def echo(x):
    return x

def make(n):
    return SECRET + bytes(n)

def hold(v, x):
    v.value = 1
    deadline = time.monotonic() + 30
    while v.value != 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    return x

v = cpool.Value("i", 0)
pool = cpool.Pool(2, context="fork")
big = SECRET + os.urandom(4 << 20)
assert pool.apply(echo, (big,)) == big
assert pool.map(echo, [big] * 4, chunksize=1) == [big] * 4
assert pool.apply(make, (8 << 20,)) == make(8 << 20)
held = pool.apply_async(hold, (v, big))
deadline = time.monotonic() + 20
while v.value != 1:
    assert time.monotonic() < deadline, "the held task did not start"
    time.sleep(0.002)
print("mid", cpool.__file__, flush=True)
sys.stdin.readline()
v.value = 2
assert held.get(30) == big
assert pool.apply(echo, (big,)) == big
pool.close()
pool.join()
print("ok", flush=True)
"""

# As nobody: try to open each path of a JSON list read from stdin.
PROBER = AS_NOBODY + r"""
results = {}
for path in json.loads(sys.stdin.readline()):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        results[path] = type(e).__name__
    else:
        os.close(fd)
        results[path] = "opened"
print("results", json.dumps(results), flush=True)
"""

# 4 MiB items echoed in a loop, each task also counting in a Value, until a
# line arrives on stdin.
TRUNCATE_POOL = r"""
import os, select, sys, cpool

def echo(v, x):
    with v.get_lock():
        v.value += 1
    return x

v = cpool.Value("i", 0)
pool = cpool.Pool(2, context="fork")
items = [bytes([i]) * (4 << 20) for i in range(1, 5)]
rounds = bad = 0

def one_round():
    global rounds, bad
    got = pool.starmap(echo, [(v, x) for x in items], chunksize=1)
    rounds += 1
    bad += got != items or v.value != 4 * rounds

one_round()
print("running", cpool.__file__, flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    one_round()
pool.close()
pool.join()
print(f"done rounds={rounds} bad={bad} value={v.value}", flush=True)
"""

# A pool in a process that dropped root as a daemon does (setuid: the kernel
# makes it non-dumpable, so even its own user's processes cannot open its
# /proc/<pid>/fd): each transfer that needs that gives a clear OSError for
# its task, or works; never a hang or a crash, and the pool goes on.
NON_DUMPABLE_POOL = f"""
import ctypes, os, sys, cpool, cpool.sharedctypes
libc = ctypes.CDLL(None, use_errno=True)
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
""" + r"""
def echo(x):
    return x

def read(v):
    return v.value

print("dumpable", libc.prctl(3, 0, 0, 0, 0), cpool.__file__, flush=True)  # PR_GET_DUMPABLE
pool = cpool.Pool(2, context="fork")
v = cpool.Value("i", 7)     # made after the workers: they reach it through /proc
big = os.urandom(4 << 20)

def attempt(name, call, want):
    try:
        got = call()
    except OSError as e:
        print(f"{name}: OSError: {e}", flush=True)
    except BaseException as e:
        print(f"{name}: {type(e).__name__}: {e}"[:400], flush=True)
    else:
        print(f"{name}: {'ok' if got == want else 'WRONG RESULT'}", flush=True)

attempt("4 MiB argument", lambda: pool.apply(echo, (big,)), big)
attempt("Value made after the pool", lambda: pool.apply(read, (v,)), 7)
attempt("4 MiB result", lambda: len(pool.apply(os.urandom, (4 << 20,))), 4 << 20)
attempt("small task after", lambda: pool.apply(echo, (1,)), 1)
pool.close()
pool.join()
print("closed", flush=True)
"""


# -- processes ------------------------------------------------------------------

class Scenario:
    """A fresh interpreter running `src`, in a session of its own (its
    workers die with it), spoken to by lines; every wait is bounded.
    (Not conftest.start_python: it talks on stdin, reads stdout in chunks
    against deadlines, and an attacker runs isolated, with an environment of
    its own, to drop to nobody.)"""

    def __init__(self, name, src, args=(), nobody=False):
        self.name = name
        if nobody:      # isolated: it reads nothing of ours once it is nobody
            argv = [sys.executable, "-I", "-c", src, *map(str, args)]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "PYTHONDONTWRITEBYTECODE": "1"}
        else:
            argv = [sys.executable, "-c", textwrap.dedent(src), *map(str, args)]
            env = python_env()
            env["PYTHONPATH"] = os.pathsep.join([CPOOL_ROOT, env["PYTHONPATH"]])
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=env, cwd="/", bufsize=0,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.lines = []
        self._pending = b""
        self._eof = False

    def send(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
        except BrokenPipeError:
            pass            # it is gone: the next expect() says how

    def _read(self, deadline):
        """One chunk of stdout into _pending; False at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
            return False
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        self._pending += chunk
        self._eof = not chunk
        return True

    def expect(self, prefix, timeout=LINE_TIMEOUT, or_exit=False):
        """The next line that starts with `prefix` (all are kept in .lines);
        with or_exit, None if the process exits first (a timeout still fails)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            if self._eof:
                if or_exit:
                    return None
                self.fail(f"exited with {self.proc.wait()} before a {prefix!r} line")
            if not self._read(deadline):
                self.fail(f"printed no {prefix!r} line within {timeout} s")

    def finish(self, timeout=LINE_TIMEOUT):
        """Read to the end and reap; the exit status."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            if not self._read(deadline):
                self.fail(f"did not exit within {timeout} s")
        self.lines += [x.decode(errors="replace") for x in self._pending.split(b"\n") if x]
        self._pending = b""
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail(f"closed its stdout but did not exit within {timeout} s")

    def stderr(self):
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-6000:]

    def transcript(self):
        return (f"--- {self.name} stdout ---\n" + "\n".join(self.lines) +
                f"\n--- {self.name} stderr ---\n{self.stderr()}")

    def fail(self, why):
        self.kill()
        pytest.fail(f"{self.name} {why}\n{self.transcript()}")

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self):
        self.kill()
        for name in os.listdir("/dev/shm"):     # what a named-segment build left
            if name.startswith(f"cpool.{self.pid}."):
                os.unlink("/dev/shm/" + name)
        for f in (self.proc.stdin, self.proc.stdout, self._err):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def start():
    """start(name, src, *args, nobody=False): a Scenario, killed and closed
    at teardown whatever happened."""
    made = []

    def starter(name, src, *args, nobody=False):
        made.append(Scenario(name, src, args, nobody))
        return made[-1]
    yield starter
    for s in made:
        s.close()


def check_imports_ours(line):
    """The scenario's cpool is the one this test process runs."""
    assert line.split()[-1] == os.path.abspath(cpool.__file__), line


def cpool_shm(uid=None):
    """/dev/shm/cpool* names (owned by `uid`, if given)."""
    found = []
    for name in os.listdir("/dev/shm"):
        if not name.startswith("cpool"):
            continue
        try:
            owner = os.lstat("/dev/shm/" + name).st_uid
        except FileNotFoundError:
            continue
        if uid is None or owner == uid:
            found.append(name)
    return sorted(found)


def exit_problem(code):
    if code == 0:
        return None
    if code == -signal.SIGBUS:
        return "the pool died of SIGBUS"
    return f"the pool exited with {code}"


def short(names, n=6):
    names = sorted(names)
    return f"{len(names)}: {names[:n]}{' ...' if len(names) > n else ''}"


@pytest.fixture
def protected_regular(request):
    """fs.protected_regular set to request.param for the test (None: left as
    it is), restored after."""
    try:
        with open(PROTECTED_REGULAR) as f:
            old = f.read().strip()
    except OSError as e:
        pytest.skip(f"{PROTECTED_REGULAR} cannot be read here: {e}")
    if request.param is None:
        yield int(old)
        return
    try:
        with open(PROTECTED_REGULAR, "w") as f:
            f.write(str(request.param))
    except OSError as e:
        pytest.skip(f"{PROTECTED_REGULAR} is not writable here: {e}")
    try:
        yield request.param
    finally:
        with open(PROTECTED_REGULAR, "w") as f:
            f.write(old)


# -- 1, 2: squatting ------------------------------------------------------------

@pytest.mark.parametrize("protected_regular", [None, 0, 2], indirect=True,
                         ids=["sysctl-as-is", "protected_regular=0", "protected_regular=2"])
def test_squatter_reads_nothing_writes_nothing_crashes_nothing(start, protected_regular):
    secret = b"cpool-secret-" + secrets.token_hex(16).encode()
    marker = b"squatted by nobody " + secrets.token_hex(8).encode()
    before = set(cpool_shm())       # not this pool's: left by something else
    pool = start("pool", SQUAT_POOL, secret.hex())
    ready = pool.expect("ready")
    check_imports_ours(ready)
    pid, prefix = int(ready.split()[1]), ready.split()[2]
    names = squat_names(pid)
    for name in names:      # left by an earlier run killed before its cleanup
        if os.path.lexists("/dev/shm/" + name):
            os.unlink("/dev/shm/" + name)
    try:
        attacker = start("squatter", SQUATTER, pid, secret.hex(), marker.hex(), nobody=True)
        attacker.expect("armed")
        pool.send("go")
        pool.expect("worked", or_exit=True)     # a crash is reported with the rest
        attacker.send("sync")       # one whole sweep with the pool's memory in use
        attacker.expect("synced")
        pool.send("finish")
        code = pool.finish()
        attacker.send("sync")       # and one after its exit
        attacker.expect("synced")
        attacker.send("stop")
        report = json.loads(attacker.expect("report").split(None, 1)[1])
        root_after = [n for n in cpool_shm(uid=0) if n not in before]
        kept = {}
        for name in names:
            try:
                with open("/dev/shm/" + name, "rb") as f:
                    kept[name] = "marker" if f.read() == marker else "changed"
            except FileNotFoundError:
                kept[name] = "gone"
    finally:
        for name in os.listdir("/dev/shm"):
            if name.startswith(f"cpool.{pid}."):
                os.unlink("/dev/shm/" + name)

    problems = []
    if prefix not in ("None", "''") and not any(n.startswith(prefix.strip("'/")) for n in names):
        problems.append(f"the pool's segment prefix {prefix} is not among the squatted names")
    steps = dict(line[5:].split(": ", 1) for line in pool.lines if line.startswith("step "))
    for name in SQUAT_STEPS:
        if steps.get(name) != "ok":
            problems.append(f"pool step {name!r}: {steps.get(name, 'never ran')}")
    if exit_problem(code):
        problems.append(exit_problem(code))
    if report["secret_seen"]:
        problems.append(f"nobody read the secret in {short(report['secret_seen'])}")
    if report["proc_opened"]:
        problems.append(f"nobody opened the pool's {short(report['proc_opened'])}")
    if report["written"]:
        problems.append(f"the pool wrote into nobody's files {short(report['written'])}")
    if report["opened"]:
        problems.append(f"nobody opened files it did not make {short(report['opened'])}")
    if report["truncated"] or report["overwritten"]:
        problems.append(f"nobody truncated {short(report['truncated'])} and overwrote "
                        f"{short(report['overwritten'])}")
    if report["root_files"]:
        problems.append(f"root's cpool files in /dev/shm during the run "
                        f"{short(report['root_files'])}")
    if root_after:
        problems.append(f"root's cpool files in /dev/shm after the run {short(root_after)}")
    for what in ("changed", "gone"):
        hit = [n for n, state in kept.items() if state == what]
        if hit:
            problems.append(f"squatted files {what} {short(hit)}")
    # The attack itself ran: every process of the pool was tried, and refused.
    if len(report["pids"]) < 4 or report["proc_denied"] == 0 or report["sweeps"] < 2:
        problems.append(f"the attack did not cover the pool: pids {report['pids']}, "
                        f"{report['proc_denied']} refusals, {report['sweeps']} sweeps")
    assert not problems, "\n".join(problems) + "\n" + pool.transcript()


# -- 3: umask 000 -------------------------------------------------------------------

def memfds(pids):
    """{path: link} of every /proc/<p>/fd/N and /proc/<p>/map_files/* of pids
    that is a cpool memfd, and the list of all /proc/<p>/fd/N."""
    found, every = {}, []
    for p in pids:
        for d in (f"/proc/{p}/fd", f"/proc/{p}/map_files"):
            try:
                entries = os.listdir(d)
            except (FileNotFoundError, ProcessLookupError):
                continue                # the process is gone
            for e in entries:
                path = f"{d}/{e}"
                if d.endswith("/fd"):
                    every.append(path)
                try:
                    link = os.readlink(path)
                except (FileNotFoundError, ProcessLookupError):
                    continue            # closed, unmapped, or the process is gone
                if link.startswith("/memfd:cpool"):
                    found[path] = link
    return found, every


def memfd_kind(link):
    return link.split(":", 1)[1].split(" ", 1)[0]     # "/memfd:cpool-seg (deleted)"


def test_umask_000_every_memfd_is_0600_and_closed_to_other_users(start):
    secret = b"cpool-secret-" + secrets.token_hex(16).encode()
    before = set(cpool_shm())       # not this pool's: left by something else
    pool = start("pool", UMASK_POOL, secret.hex())
    check_imports_ours(pool.expect("mid"))
    pids = family(pool.pid)
    found, every = memfds(pids)
    problems = []
    modes = {}
    for path, link in found.items():
        try:
            st = os.stat(path)
        except (FileNotFoundError, ProcessLookupError):
            continue
        modes[path] = (link, oct(stat.S_IMODE(st.st_mode)), st.st_uid)
        if stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != 0:
            problems.append(f"{path} -> {link}: mode {oct(stat.S_IMODE(st.st_mode))}, "
                            f"uid {st.st_uid}")
    shm_mid = [n for n in cpool_shm() if n not in before]
    prober = start("prober", PROBER, nobody=True)
    prober.send(json.dumps(sorted(set(found) | set(every))))
    results = json.loads(prober.expect("results").split(None, 1)[1])
    pool.send("go on")
    pool.expect("ok")
    code = pool.finish()
    shm_after = [n for n in cpool_shm() if n not in before]

    for path, result in sorted(results.items()):
        if result != "PermissionError":
            problems.append(f"nobody opening {path} ({found.get(path, 'fd')}): {result}")
    if shm_mid or shm_after:
        problems.append(f"cpool files in /dev/shm: mid-run {short(shm_mid)}, "
                        f"after {short(shm_after)}")
    if exit_problem(code):
        problems.append(exit_problem(code))
    # Not vacuous: the pool's three kinds of memory were there to check, and
    # every worker had some.
    kinds = {memfd_kind(link) for link in found.values()}
    for kind in ("cpool-ctl", "cpool-seg", "cpool-shared"):
        if kind not in kinds:
            problems.append(f"no {kind} memfd found mid-run (found {sorted(kinds)})")
    holders = {int(path.split("/")[2]) for path in found}
    if len(pids) < 4 or not holders >= set(pids):
        problems.append(f"pool processes {pids}, those holding a cpool memfd {sorted(holders)}")
    assert not problems, ("\n".join(problems) + "\nmodes: " + repr(modes) + "\n" +
                          pool.transcript())


# -- 4: truncation by the same user -------------------------------------------------

def test_same_user_cannot_truncate_any_memfd_no_sigbus(start):
    pool = start("pool", TRUNCATE_POOL)
    check_imports_ours(pool.expect("running"))
    problems, refused, kinds, scans = [], 0, set(), 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            scans < 20 or not kinds >= {"cpool-ctl", "cpool-seg", "cpool-shared"}):
        scans += 1
        for p in family(pool.pid):
            found, _ = memfds([p])
            for path in found:      # fds and mappings (a mapped memfd may have no fd)
                try:
                    fd = os.open(path, os.O_RDWR)
                except (FileNotFoundError, ProcessLookupError):
                    continue            # closed, or the process is gone
                try:
                    link = os.readlink(f"/proc/self/fd/{fd}")
                    if not link.startswith("/memfd:cpool"):
                        continue        # the number was reused meanwhile
                    kinds.add(memfd_kind(link))
                    try:
                        os.ftruncate(fd, 0)
                    except PermissionError as e:
                        if e.errno == errno.EPERM:
                            refused += 1
                        else:
                            problems.append(f"ftruncate {path} ({link}): {e}")
                    except OSError as e:
                        problems.append(f"ftruncate {path} ({link}): {e}")
                    else:
                        problems.append(f"ftruncate {path} ({link}) to 0 succeeded")
                finally:
                    os.close(fd)
        if problems:
            break
    pool.send("stop")
    code = pool.finish()
    done = [line for line in pool.lines if line.startswith("done")]
    if not done or " bad=0 " not in done[0]:
        problems.append(f"the pool's results: {done or 'none'}")
    if exit_problem(code):
        problems.append(exit_problem(code))
    for kind in ("cpool-ctl", "cpool-seg", "cpool-shared"):
        if kind not in kinds:
            problems.append(f"no {kind} memfd was there to truncate (found {sorted(kinds)})")
    assert not problems, (f"{refused} truncations refused, {scans} scans\n" +
                          "\n".join(problems) + "\n" + pool.transcript())


# -- 5: a parent its own user cannot read through /proc ----------------------------

def test_non_dumpable_parent_moves_large_data_and_never_hangs(start):
    """A daemon that drops root is made non-dumpable by the kernel: not even
    its own user may open its /proc/<pid>/fd.  Segments change hands as
    descriptors over the slots' socketpairs, so large arguments and results
    still travel; a Value made after the workers, which they can reach only
    through /proc, gives a clear OSError for its task."""
    pool = start("pool", NON_DUMPABLE_POOL)
    head = pool.expect("dumpable")
    check_imports_ours(head)
    code = pool.finish()
    outcome = dict(line.split(": ", 1) for line in pool.lines if ": " in line)
    problems = []
    if head.split()[1] != "0":
        problems.append(f"the pool's process is dumpable ({head}): the test tests nothing")
    if exit_problem(code):
        problems.append(exit_problem(code))
    for name in ("4 MiB argument", "4 MiB result"):
        if outcome.get(name) != "ok":
            problems.append(f"{name}: {outcome.get(name, 'never ran')} (wanted the result)")
    got = outcome.get("Value made after the pool", "never ran")
    if got != "ok" and not got.startswith("OSError: "):
        problems.append(f"Value made after the pool: {got} (wanted it, or a clear OSError)")
    if outcome.get("small task after") != "ok":
        problems.append(f"the pool after: {outcome.get('small task after', 'never ran')}")
    if "closed" not in pool.lines:
        problems.append("the pool did not close")
    assert not problems, "\n".join(problems) + "\n" + pool.transcript()
