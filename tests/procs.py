"""Helpers for the scenario scripts that tests run in fresh interpreters
(conftest.python_env() puts this folder on their PYTHONPATH)."""
import os


def children():
    """The pids of this process's live children (zombies not counted)."""
    me, kids = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if st[1] == me and st[0] != "Z":
            kids.append(int(pid))
    return kids


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
