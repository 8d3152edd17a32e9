"""Process inspection, in one place: what /proc says about processes (their
state, parent, argv, descriptors and mappings of pool segments) and waits
for processes to go.  The tests import it, and so do the scenario scripts
they run in fresh interpreters (conftest.python_env() puts this folder on
their PYTHONPATH)."""
import os
import time


def proc_stat(pid="self"):
    """The fields of /proc/<pid>/stat from the third on (the second, the
    command name in parentheses, may hold anything, so it is cut at the last
    ")"): [0] the state letter ('Z' for a zombie), [1] the parent's pid, and
    so on as proc(5) numbers them from 3.  None if there is no such process
    (or it went while it was read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid):
    """True if pid runs (a zombie has exited: it only waits to be reaped)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def children():
    """The pids of this process's live children (zombies not counted)."""
    me, kids = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = proc_stat(pid)
        if st is not None and st[1] == me and st[0] != "Z":
            kids.append(int(pid))
    return kids


def cmdline(pid):
    """The argv of process `pid`, as bytes (its last item is b"")."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def wait_not_running(pids, timeout=5.0):
    """The pids still running (gone or zombie counts as not running)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_gone(pids, timeout=5.0):
    """The pids of `pids` still alive after up to `timeout` seconds.  Unlike
    wait_not_running(), a zombie counts as alive (kill(pid, 0) reaches it):
    for processes whose reaping is part of what is checked."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while True:
        for pid in list(left):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                left.discard(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def segment_fds(pid="self", kind="cpool-seg"):
    """{fd: inode} of the pool segments (memfds) process `pid` holds open;
    kind="cpool" for every memfd cpool makes (segments, control segments,
    arenas)."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(path).startswith("/memfd:" + kind):
                found[int(fd)] = os.stat(path).st_ino
        except OSError:
            continue   # closed meanwhile
    return found


def segments_mapped(pid="self"):
    """(perms, inode) of each mapping process `pid` has of pool segments:
    perms 'rw-s' and 'r--s' are kept (shared) mappings, 'rw-p' private ones
    (an object lives on them)."""
    with open(f"/proc/{pid}/maps") as f:
        return [(line.split()[1], int(line.split()[4]))
                for line in f if "/memfd:cpool-seg" in line]


def shm_names():
    """Names in /dev/shm that a pool of this user could have made: there must
    never be any (cpool's segments have no name)."""
    me = os.geteuid()
    names = []
    for n in os.listdir("/dev/shm"):
        try:
            if n.startswith("cpool") and os.stat(f"/dev/shm/{n}").st_uid == me:
                names.append(n)
        except OSError:
            continue
    return names
