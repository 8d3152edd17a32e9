"""The check every segment a pool is handed passes before it is mapped, let
alone unpickled (shm.c cp_seg_check; docs/security.md): a sealed memfd of
this user, mode 0600, as large as the record says.  Anything else is refused
with the reason, whichever way it came (a task's segment in a worker, a
result's in the parent, a Value's arena in any process)."""
import fcntl
import os

import pytest

import cpool
from cpool import _cpool
from procs import segment_fds


def segment(size=4096, mode=0o600, seal=True):
    """A memfd made the way a pool makes its segments, or missing one step."""
    fd = os.memfd_create("test-seg", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.fchmod(fd, mode)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return fd


@pytest.fixture
def fds():
    opened = []
    yield opened
    for fd in opened:
        os.close(fd)


def test_a_pools_own_kind_of_segment_passes(fds):
    fds.append(segment())
    assert _cpool._check_segment(fds[-1], 4096) is None


@pytest.mark.parametrize("make, why", [
    (lambda: segment(seal=False), "not sealed against shrinking"),
    (lambda: segment(mode=0o644), "not mode 0600"),
    (lambda: segment(mode=0o666), "not mode 0600"),
    (lambda: segment(size=100), "smaller than the record says"),
    (lambda: os.pipe()[0], "not a regular file"),
])
def test_anything_else_is_refused_with_the_reason(fds, make, why):
    fds.append(make())
    assert _cpool._check_segment(fds[-1], 4096) == why


def test_a_named_file_cannot_pass(fds, tmp_path):
    """A file with a name (in /dev/shm, or anywhere) cannot be sealed: what
    another user could have made or opened is never taken for a segment."""
    fd = os.open(tmp_path / "seg", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fds.append(fd)
    os.ftruncate(fd, 4096)
    assert _cpool._check_segment(fd, 4096) == "not sealed against shrinking"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_another_users_segment_is_refused(fds):
    fds.append(segment())
    os.fchown(fds[-1], 65534, 65534)
    assert _cpool._check_segment(fds[-1], 4096) == "not owned by this user"


def test_a_value_arena_that_fails_the_check_is_not_attached(fds):
    fds.append(segment(seal=False))
    with pytest.raises(PermissionError, match="not a shared arena: not sealed"):
        _cpool.Arena._attach(os.getpid(), fds[-1], 0, 64)
    v = cpool.Value("i", 7)      # a real one still attaches, in a worker too
    with cpool.Pool(1) as p:
        assert p.apply(get_value, (v,)) == 7


def get_value(v):
    return v.value


def test_a_pools_segments_cannot_be_truncated_by_anyone(fds):
    """Sealed: not even this user can shrink a segment under a mapping (a
    SIGBUS in whoever reads it); the pool is unaffected."""
    big = os.urandom(4 << 20)
    with cpool.Pool(1) as p:
        assert p.apply(echo, (big,)) == big
        pids = [os.getpid()] + [w.pid for w in p._pool]
        paths = [f"/proc/{pid}/fd/{fd}" for pid in pids for fd in segment_fds(pid, "cpool")]
        assert any(segment_fds(pid) for pid in pids), "no segment to try"
        for path in paths:
            fd = os.open(path, os.O_RDWR)
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        assert p.apply(echo, (big,)) == big
        assert p.map(echo, [big] * 4, 1) == [big] * 4


def echo(x):
    return x
