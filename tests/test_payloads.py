"""Records of every size: around the ring's inline limit and wrap-around,
large ones through segments (none left when the pool ends), and many small
tasks."""
import os

import cpool
from conftest import shutdown
from procs import segment_fds, segments_mapped, shm_names
from tasks import T, square


def payload_len(b):
    return len(b), b[::-1]


def test_no_leftover_segments_after_large_payloads():
    before = set(shm_names())
    p = cpool.Pool(2)
    try:
        blobs = [os.urandom(n) for n in (10, 70_000, 300_000, 3_000_000, 20_000_000)]
        for b in blobs:
            assert p.apply(payload_len, (b,)) == (len(b), b[::-1])
        assert p.map(payload_len, blobs, 1) == [(len(b), b[::-1]) for b in blobs]
        assert segment_fds(), "large records travel through segments (memfds)"
    finally:
        shutdown(p)
    # Segments are memfds: nothing named, and the pool's end closes and
    # unmaps every one this process held.
    assert set(shm_names()) - before == set()
    assert segment_fds() == {}
    assert segments_mapped() == []


def test_many_inline_payload_sizes(pool):
    # sizes around the ring's inline limit and wrap-around point
    sizes = [1, 100, 4000, 30_000, 65_000, 66_000, 70_000, 130_000] * 6
    blobs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    rs = [pool.apply_async(payload_len, (b,)) for b in blobs]
    assert [r.get(timeout=T) for r in rs] == [(len(b), b[::-1]) for b in blobs]
    assert pool.map(payload_len, blobs, 3) == [(len(b), b[::-1]) for b in blobs]


def test_many_small_tasks(pool):
    n = 20_000
    assert pool.map(square, range(n), 1) == [square(i) for i in range(n)]
    assert sum(pool.imap_unordered(square, range(n), 50)) == sum(map(square, range(n)))
