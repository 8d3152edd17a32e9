/* test_segments.c: shm.c, the segments and how they change hands, as
 * cpool.h states the contracts: cp_memfd's mode and seals; what
 * cp_seg_check lets through (and that it rejects each wrong property on
 * its own); cp_shared_map; descriptors over cp_socketpair, tagged, stale
 * ones closed; cp_seg_write's layout read back through cp_segmap_get, in
 * one-shot and recycled segments, within a process and across two.
 * Descriptors are counted around each test: none may leak.
 */
#include "check.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static uint64_t inode(int fd)
{
    struct stat st;
    CHECK_SYS(fstat(fd, &st));
    return (uint64_t)st.st_ino;
}

static int64_t file_size(int fd)
{
    struct stat st;
    CHECK_SYS(fstat(fd, &st));
    return (int64_t)st.st_size;
}

static int cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    CHECK_SYS(fl);
    return (fl & FD_CLOEXEC) != 0;
}

#define REJECTS(fd, ino, size)                                                           \
    do {                                                                                 \
        const char *why_ = cp_seg_check(fd, ino, size);                                  \
        if (why_ == NULL || why_[0] == '\0')                                             \
            ct_fail(__FILE__, __LINE__, "cp_seg_check(%s, %s, %s) let it through", #fd,  \
                    #ino, #size);                                                        \
    } while (0)
#define PASSES(fd, ino, size)                                                            \
    do {                                                                                 \
        const char *why_ = cp_seg_check(fd, ino, size);                                  \
        if (why_ != NULL)                                                                \
            ct_fail(__FILE__, __LINE__, "cp_seg_check(%s, %s, %s): %s", #fd, #ino,       \
                    #size, why_);                                                        \
    } while (0)

TEST(memfd_mode_and_seals)
{
    int fds0 = ct_open_fds();
    mode_t masks[] = {0, 077, 0777};
    for (int i = 0; i < 3; i++) {
        mode_t old = umask(masks[i]); /* whatever the umask: 0600 */
        int fd = cp_memfd("ct-seg", 0);
        umask(old);
        CHECK_SYS(fd);
        struct stat st;
        CHECK_SYS(fstat(fd, &st));
        CHECK(S_ISREG(st.st_mode));
        CHECK_EQ(st.st_mode & 07777, 0600);
        CHECK_EQ(st.st_uid, geteuid());
        int seals = fcntl(fd, F_GET_SEALS);
        CHECK_SYS(seals);
        CHECK(seals & F_SEAL_SHRINK);
        CHECK(!(seals & F_SEAL_GROW));
        /* It grows; it never shrinks (nobody truncates it under a mapping). */
        CHECK_SYS(ftruncate(fd, 3 * 4096));
        CHECK_ERRNO(ftruncate(fd, 4096), EPERM);
        CHECK_EQ(file_size(fd), 3 * 4096);
        PASSES(fd, 0, 3 * 4096);
        close(fd);
    }

    int fd = cp_memfd("ct-fixed", 10000); /* fixed: that size for good */
    CHECK_SYS(fd);
    CHECK_EQ(file_size(fd), 10000);
    int seals = fcntl(fd, F_GET_SEALS);
    CHECK((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW));
    CHECK_ERRNO(ftruncate(fd, 20000), EPERM);
    CHECK_ERRNO(ftruncate(fd, 5000), EPERM);
    CHECK_ERRNO(pwrite(fd, "x", 1, 10000), EPERM); /* no growing by writing */
    CHECK_EQ(pwrite(fd, "x", 1, 9999), 1);
    PASSES(fd, inode(fd), 10000);
    close(fd);

    /* Failure: -1 with errno, nothing left open. */
    errno = 0;
    CHECK_EQ(cp_memfd("ct-huge", (uint64_t)1 << 63), -1); /* past off_t */
    CHECK(errno != 0);
    errno = 0;
    CHECK(cp_shared_map((size_t)1 << 62) == NULL); /* past the address space */
    CHECK(errno != 0);
    CHECK_EQ(ct_open_fds(), fds0);
}

TEST(seg_check_rejects_each_wrong_property)
{
    int fds0 = ct_open_fds();
    int a = cp_memfd("ct-a", 8192), b = cp_memfd("ct-b", 0);
    CHECK_SYS(a);
    CHECK_SYS(b);
    uint64_t ia = inode(a);
    PASSES(a, 0, 0);
    PASSES(a, ia, 8192);
    PASSES(a, ia, 100);
    REJECTS(a, ia, 8193);      /* smaller than the record says */
    REJECTS(a, inode(b), 100); /* another file than the record names */
    REJECTS(b, ia, 0);

    CHECK_SYS(fchmod(a, 0640)); /* the mode, exactly 0600 */
    REJECTS(a, ia, 0);
    CHECK_SYS(fchmod(a, 0700));
    REJECTS(a, ia, 0);
    CHECK_SYS(fchmod(a, 0400));
    REJECTS(a, ia, 0);
    CHECK_SYS(fchmod(a, 0600));
    PASSES(a, ia, 0);

    if (geteuid() == 0) { /* another user's file: root can make one */
        CHECK_SYS(fchown(b, 65534, 65534));
        CHECK_SYS(fchmod(b, 0600));
        REJECTS(b, 0, 0);
        CHECK_SYS(fchown(b, 0, 0));
        CHECK_SYS(fchmod(b, 0600));
        PASSES(b, 0, 0);
    } else {
        printf("     (not root: the other-owner case is not made)\n");
    }

    /* A memfd without the shrink seal (sealable, or not even that). */
    int u = memfd_create("ct-unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK_SYS(u);
    CHECK_SYS(fchmod(u, 0600));
    CHECK_SYS(ftruncate(u, 4096));
    REJECTS(u, 0, 0);
    CHECK_SYS(fcntl(u, F_ADD_SEALS, F_SEAL_GROW)); /* a seal, not that one */
    REJECTS(u, 0, 0);
    CHECK_SYS(fcntl(u, F_ADD_SEALS, F_SEAL_SHRINK));
    PASSES(u, 0, 4096); /* then it does pass: the seal was the only fault */
    close(u);
    u = memfd_create("ct-nosealing", MFD_CLOEXEC);
    CHECK_SYS(u);
    CHECK_SYS(fchmod(u, 0600));
    REJECTS(u, 0, 0);
    close(u);

    /* Not a memfd: a file on disk (no seals), a pipe, a socket, a closed
     * descriptor. */
    char path[] = "/tmp/ct-seg-XXXXXX";
    int f = mkstemp(path);
    CHECK_SYS(f);
    unlink(path);
    CHECK_SYS(fchmod(f, 0600));
    CHECK_SYS(ftruncate(f, 4096));
    REJECTS(f, 0, 0);
    close(f);
    int p[2];
    CHECK_SYS(pipe(p));
    REJECTS(p[0], 0, 0);
    close(p[0]);
    close(p[1]);
    int s[2];
    CHECK_SYS(cp_socketpair(s));
    REJECTS(s[0], 0, 0);
    close(s[0]);
    close(s[1]);
    close(b);
    REJECTS(b, 0, 0);
    close(a);
    CHECK_EQ(ct_open_fds(), fds0);
}

static void write_marker(void *arg) { strcpy((char *)arg + 3 * 4096, "from the child"); }

TEST(shared_map_is_shared_with_children)
{
    int fds0 = ct_open_fds();
    size_t size = 3 * 4096 + 100;
    char *m = cp_shared_map(size);
    CHECK(m != NULL);
    CHECK_EQ(ct_open_fds(), fds0); /* the mapping keeps it: no descriptor */
    m[0] = 1;
    m[size - 1] = 2; /* all of it is there */
    ct_wait_ok(ct_fork(write_marker, m), 10000);
    CHECK(strcmp(m + 3 * 4096, "from the child") == 0);
    munmap(m, size);

    int fd = -1;
    m = cp_shared_map_fd(size, &fd);
    CHECK(m != NULL);
    CHECK(fd >= 0);
    CHECK(cloexec(fd));
    CHECK(file_size(fd) >= (int64_t)size);
    /* It is that mapping's file: another mapping of it sees the same. */
    char *again = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(again != MAP_FAILED);
    strcpy(m + 4096, "same memory");
    CHECK(strcmp(again + 4096, "same memory") == 0);
    munmap(again, size);
    munmap(m, size);
    close(fd);
    CHECK_EQ(ct_open_fds(), fds0);
}

/* ---- descriptors over a slot's socketpair ------------------------------ */

TEST(socketpair_is_datagram_and_cloexec)
{
    int sv[2];
    CHECK_SYS(cp_socketpair(sv));
    for (int i = 0; i < 2; i++) {
        CHECK(cloexec(sv[i]));
        int type = 0;
        socklen_t len = sizeof type;
        CHECK_SYS(getsockopt(sv[i], SOL_SOCKET, SO_TYPE, &type, &len));
        CHECK_EQ(type, SOCK_DGRAM); /* one message per record */
    }
    close(sv[0]);
    close(sv[1]);
}

TEST(descriptors_pass_by_tag_stale_ones_closed)
{
    int fds0 = ct_open_fds();
    int sv[2];
    CHECK_SYS(cp_socketpair(sv));
    int seg[5];
    uint64_t ino[5];
    for (int i = 0; i < 5; i++) {
        seg[i] = cp_memfd("ct-pass", 4096);
        CHECK_SYS(seg[i]);
        ino[i] = inode(seg[i]);
        CHECK_SYS(cp_send_fd(sv[0], 100 + (uint64_t)i, seg[i], 0));
    }
    int fds1 = ct_open_fds();
    /* In order: 100's, then 101's. */
    int got = cp_recv_fd(sv[1], 100);
    CHECK_SYS(got);
    CHECK_EQ(inode(got), ino[0]);
    close(got);
    got = cp_recv_fd(sv[1], 101);
    CHECK_SYS(got);
    CHECK_EQ(inode(got), ino[1]);
    close(got);
    /* 104's, past 102's and 103's (a dead worker's records): those closed. */
    got = cp_recv_fd(sv[1], 104);
    CHECK_SYS(got);
    CHECK_EQ(inode(got), ino[4]);
    CHECK_EQ(ct_open_fds(), fds1 + 1);
    close(got);
    CHECK_ERRNO(cp_recv_fd(sv[1], 103), ENOENT); /* gone; and it never blocks */
    CHECK_ERRNO(cp_recv_fd(sv[1], 200), ENOENT);

    /* Both ways: the socketpair is a worker slot's, each end sends. */
    CHECK_SYS(cp_send_fd(sv[1], 7, seg[2], MSG_DONTWAIT));
    got = cp_recv_fd(sv[0], 7);
    CHECK_SYS(got);
    CHECK_EQ(inode(got), ino[2]);
    close(got);

    /* A descriptor that is not one fails to send. */
    CHECK_ERRNO(cp_send_fd(sv[0], 1, 12345, 0), EBADF);

    for (int i = 0; i < 5; i++) close(seg[i]);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(ct_open_fds(), fds0);
}

TEST(drop_fds_closes_everything_waiting)
{
    int fds0 = ct_open_fds();
    int sv[2];
    CHECK_SYS(cp_socketpair(sv));
    int seg = cp_memfd("ct-drop", 4096);
    CHECK_SYS(seg);
    /* MSG_DONTWAIT: sends until the socket is full, then EAGAIN, never
     * blocks. */
    int sent = 0, rc;
    while ((rc = cp_send_fd(sv[0], (uint64_t)sent, seg, MSG_DONTWAIT)) == 0 &&
           sent < 100000)
        sent++;
    CHECK_EQ(rc, -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    CHECK(sent > 10);
    /* Every waiting message holds a descriptor of the file: dropped, all
     * of them (the count of this process's descriptors says so below). */
    cp_drop_fds(sv[1]);
    CHECK_ERRNO(cp_recv_fd(sv[1], 0), ENOENT);
    CHECK_SYS(cp_send_fd(sv[0], 1, seg, MSG_DONTWAIT)); /* room again */
    cp_drop_fds(sv[1]);
    cp_drop_fds(sv[1]); /* on an empty socket: nothing */
    close(seg);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(ct_open_fds(), fds0);
    printf("     (%d descriptors were waiting)\n", sent);
}

typedef struct {
    int sock;
    uint64_t seed;
} passer;

static void send_from_child(void *arg)
{
    passer *p = arg;
    for (uint64_t t = 1; t <= 3; t++) {
        int fd = cp_memfd("ct-child", 0);
        CHECK_SYS(fd);
        char buf[1000];
        ct_fill(buf, sizeof buf, p->seed + t);
        CHECK_EQ(pwrite(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
        CHECK_SYS(cp_send_fd(p->sock, t, fd, 0));
        close(fd); /* the message holds it now */
    }
}

TEST(descriptors_pass_between_processes)
{
    int fds0 = ct_open_fds();
    int sv[2];
    CHECK_SYS(cp_socketpair(sv));
    passer p = {sv[1], 77};
    ct_wait_ok(ct_fork(send_from_child, &p), 10000);
    for (uint64_t t = 2; t <= 3; t++) { /* 1's is stale: skipped */
        int fd = cp_recv_fd(sv[0], t);
        CHECK_SYS(fd);
        CHECK(cp_seg_check(fd, 0, 1000) == NULL); /* the child's cp_memfd */
        char buf[1000];
        CHECK_EQ(pread(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
        CHECK_EQ(ct_mismatch(buf, sizeof buf, p.seed + t), sizeof buf);
        close(fd);
    }
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(ct_open_fds(), fds0);
}

TEST(open_proc_fd_opens_the_same_file)
{
    int fd = cp_memfd("ct-proc", 4096);
    CHECK_SYS(fd);
    int again = cp_open_proc_fd(getpid(), fd, O_RDONLY);
    CHECK_SYS(again);
    CHECK(again != fd);
    CHECK_EQ(inode(again), inode(fd));
    close(again);
    close(fd);
    CHECK_ERRNO(cp_open_proc_fd(getpid(), fd, O_RDONLY), ENOENT);
}

/* ---- large records: cp_seg_write and cp_segmap_get --------------------- */

/* Pieces of a record: a "pickle" and its out-of-band buffers, every kind
 * of length around the 64-byte boundaries, and an empty buffer. */
#define NPIECES 6
static const size_t piece_len[NPIECES] = {1000, 100000, 0, 65, 64, 1};

static struct iovec *make_pieces(uint64_t seed, size_t scale)
{
    struct iovec *v = calloc(NPIECES, sizeof *v);
    CHECK(v != NULL);
    for (int i = 0; i < NPIECES; i++) {
        v[i].iov_len = piece_len[i] * (i == 1 ? scale : 1);
        v[i].iov_base = malloc(v[i].iov_len + 1);
        CHECK(v[i].iov_base != NULL);
        ct_fill(v[i].iov_base, v[i].iov_len, seed * 16 + (uint64_t)i);
    }
    return v;
}

static void free_pieces(struct iovec *v)
{
    for (int i = 0; i < NPIECES; i++) free(v[i].iov_base);
    free(v);
}

/* Read a segment as its consumer does: the cp_seghdr layout, the pickle,
 * then each buffer at a 64-byte boundary, all inside ref->size. */
static void check_layout(const char *base, const cp_segref *ref, uint64_t seed,
                         size_t scale)
{
    const cp_seghdr *h = (const cp_seghdr *)base;
    CHECK_EQ(h->magic, CP_SEG_MAGIC);
    CHECK_EQ(h->nbufs, NPIECES - 1);
    CHECK_EQ(h->pickle_len, piece_len[0]);
    uint64_t off = CP_ALIGN64(sizeof(cp_seghdr) + (NPIECES - 1) * sizeof(uint64_t));
    for (int i = 0; i < NPIECES; i++) {
        uint64_t len = piece_len[i] * (i == 1 ? scale : 1);
        if (i > 0) CHECK_EQ(h->lens[i - 1], len);
        CHECK(off + len <= ref->size);
        CHECK_EQ(ct_mismatch(base + off, (size_t)len, seed * 16 + (uint64_t)i), len);
        off = CP_ALIGN64(off + len);
    }
    CHECK(off <= ref->size);
}

/* The consumer's side: the file on fd checked against ref, mapped (through
 * the kept mapping m, or one of its own), read.  fd stays open. */
static void read_back(int fd, const cp_segref *ref, cp_segmap *m, uint64_t seed,
                      size_t scale)
{
    PASSES(fd, ref->ino, ref->size);
    cp_segmap own = {0};
    if (m == NULL) m = &own;
    const char *base = cp_segmap_get(m, fd, 0, ref->size);
    CHECK(base != NULL);
    check_layout(base, ref, seed, scale);
    if (m == &own) cp_segmap_drop(m);
}

/* The same for a record that is a pickle alone, n bytes of seed's. */
static void read_back_pickle(int fd, const cp_segref *ref, uint64_t seed, size_t n)
{
    PASSES(fd, ref->ino, ref->size);
    cp_segmap m = {0};
    const char *base = cp_segmap_get(&m, fd, 0, ref->size);
    CHECK(base != NULL);
    const cp_seghdr *h = (const cp_seghdr *)base;
    CHECK_EQ(h->magic, CP_SEG_MAGIC);
    CHECK_EQ(h->nbufs, 0);
    CHECK_EQ(h->pickle_len, n);
    uint64_t off = CP_ALIGN64(sizeof(cp_seghdr));
    CHECK(off + n <= ref->size);
    CHECK_EQ(ct_mismatch(base + off, n, seed), n);
    cp_segmap_drop(&m);
    CHECK(m.addr == NULL);
    cp_segmap_drop(&m); /* twice: nothing */
}

TEST(one_shot_segment_round_trip)
{
    int fds0 = ct_open_fds();
    cp_segdest d = {.recy = NULL, .tag = 0xabcdef};
    for (int copied = 0; copied < 2; copied++) {
        struct iovec *v = make_pieces(1 + (uint64_t)copied, 1);
        cp_segref ref;
        memset(&ref, 0x5a, sizeof ref);
        CHECK_SYS(cp_seg_write(&d, v, NPIECES, copied, &ref));
        CHECK_EQ(ref.recy, -1);
        CHECK(ref.fd >= 0); /* ours now */
        CHECK_EQ(ref.tag, d.tag);
        CHECK_EQ(ref.ino, inode(ref.fd));
        CHECK_EQ(ref.flags & CP_SEG_COPIED, copied ? CP_SEG_COPIED : 0);
        read_back(ref.fd, &ref, NULL, 1 + (uint64_t)copied, 1);
        free_pieces(v);
        close(ref.fd);
    }
    /* A pickle alone (no buffer). */
    char pickle[300];
    ct_fill(pickle, sizeof pickle, 9);
    struct iovec one = {pickle, sizeof pickle};
    cp_segref ref;
    CHECK_SYS(cp_seg_write(&d, &one, 1, 0, &ref));
    read_back_pickle(ref.fd, &ref, 9, sizeof pickle);
    close(ref.fd);
    CHECK_EQ(ct_open_fds(), fds0);
}

/* A producer's recycler of n entries and its bookkeeping. */
typedef struct {
    cp_recy recy[4];
    cp_segmap maps[4];
    int fds[4];
    cp_segdest d;
} recycler;

static void recycler_init(recycler *r, int n, int wait, int with_maps)
{
    memset(r, 0, sizeof *r);
    for (int k = 0; k < 4; k++) r->fds[k] = -1;
    r->d = (cp_segdest){.recy = r->recy,
                        .nrecy = n,
                        .wait = wait,
                        .maps = with_maps ? r->maps : NULL,
                        .fds = r->fds,
                        .tag = 42};
}

static void recycler_free(recycler *r)
{
    for (int k = 0; k < 4; k++) {
        cp_segmap_drop(&r->maps[k]);
        if (r->fds[k] >= 0) close(r->fds[k]);
    }
}

TEST(recycled_segments_round_trip)
{
    int fds0 = ct_open_fds();
    recycler r;
    recycler_init(&r, 2, 0, 1);
    cp_segmap consumer[2] = {{0}}; /* the consumer's kept mappings */

    struct iovec *v = make_pieces(3, 1);
    cp_segref a, b, c;
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &a));
    CHECK(a.recy == 0 || a.recy == 1);
    CHECK_EQ(atomic_load(&r.recy[a.recy].state), CP_RECY_BUSY);
    CHECK_EQ(a.fd, r.fds[a.recy]); /* the producer's, not to close */
    CHECK_EQ(a.ino, inode(a.fd));
    CHECK_EQ(a.tag, 42);
    CHECK_EQ(a.flags & CP_SEG_COPIED, CP_SEG_COPIED);
    read_back(a.fd, &a, &consumer[a.recy], 3, 1);
    const char *kept = consumer[a.recy].addr;

    /* While it is held, the next record gets the other entry; with both
     * held, and no waiting, a one-shot. */
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &b));
    CHECK_EQ(b.recy, 1 - a.recy);
    CHECK(b.ino != a.ino);
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &c));
    CHECK_EQ(c.recy, -1);
    CHECK(c.fd != r.fds[0] && c.fd != r.fds[1]);
    read_back(c.fd, &c, NULL, 3, 1);
    close(c.fd);
    free_pieces(v);

    /* Handed back (FREE), an entry is used again: same file, and the
     * consumer's kept mapping still serves it. */
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    v = make_pieces(4, 1);
    cp_segref a2;
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &a2));
    CHECK_EQ(a2.recy, a.recy);
    CHECK_EQ(a2.ino, a.ino);
    read_back(a2.fd, &a2, &consumer[a2.recy], 4, 1);
    CHECK(consumer[a2.recy].addr == kept);
    free_pieces(v);

    /* It grows as a record needs (the same file), and the consumer's
     * mapping is made anew for the larger size. */
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    v = make_pieces(5, 40); /* a 4 MB buffer */
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &a2));
    CHECK_EQ(a2.recy, a.recy);
    CHECK_EQ(a2.ino, a.ino);
    CHECK(file_size(a2.fd) >= (int64_t)a2.size);
    read_back(a2.fd, &a2, &consumer[a2.recy], 5, 40);
    CHECK(consumer[a2.recy].len >= a2.size);
    free_pieces(v);

    /* Retired (NONE: an object lives on its memory): a new file. */
    atomic_store(&r.recy[a.recy].state, CP_RECY_NONE);
    v = make_pieces(6, 1);
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 1, &a2));
    CHECK_EQ(a2.recy, a.recy);
    CHECK(a2.ino != a.ino);
    read_back(a2.fd, &a2, &consumer[a2.recy], 6, 1);
    free_pieces(v);

    /* Not copied: written without the producer's mapping, which it does
     * not keep (its consumer may retire the file). */
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    v = make_pieces(7, 1);
    CHECK_SYS(cp_seg_write(&r.d, v, NPIECES, 0, &a2));
    CHECK_EQ(a2.recy, a.recy);
    CHECK_EQ(a2.flags & CP_SEG_COPIED, 0);
    CHECK(r.maps[a2.recy].addr == NULL);
    read_back(a2.fd, &a2, NULL, 7, 1);
    free_pieces(v);

    for (int k = 0; k < 2; k++) cp_segmap_drop(&consumer[k]);
    recycler_free(&r);
    CHECK_EQ(ct_open_fds(), fds0);
}

TEST(records_past_the_recycler_limit_are_one_shot)
{
    recycler r;
    recycler_init(&r, 2, 0, 1);
    size_t n = CP_RECY_MAX_BYTES + 1;
    char *big = malloc(n);
    CHECK(big != NULL);
    ct_fill(big, n, 11);
    struct iovec one = {big, n};
    cp_segref ref;
    CHECK_SYS(cp_seg_write(&r.d, &one, 1, 1, &ref));
    CHECK_EQ(ref.recy, -1);
    CHECK_EQ(atomic_load(&r.recy[0].state), CP_RECY_NONE); /* none taken */
    CHECK_EQ(atomic_load(&r.recy[1].state), CP_RECY_NONE);
    read_back_pickle(ref.fd, &ref, 11, n);
    close(ref.fd);
    free(big);
    recycler_free(&r);
}

/* One record of n bytes, seeded, through r: its reference. */
static cp_segref write_big(recycler *r, size_t n, uint64_t seed)
{
    char *big = malloc(n);
    CHECK(big != NULL);
    ct_fill(big, n, seed);
    struct iovec one = {big, n};
    cp_segref ref;
    CHECK_SYS(cp_seg_write(&r->d, &one, 1, 1, &ref));
    read_back_pickle(ref.fd, &ref, seed, n);
    free(big);
    return ref;
}

TEST(large_records_recycle_within_the_budget_and_shrink_back)
{
    int fds0 = ct_open_fds();
    recycler r;
    recycler_init(&r, 2, 0, 1);
    _Atomic uint32_t big = 0;
    r.d.big = &big;
    r.d.budget = 10; /* MiB past CP_RECY_MAX_BYTES, for the whole pool */
    const size_t MB = 1u << 20;

    /* 20 MiB: recycled, in a file an eighth larger, whose MiB past the
     * limit the budget counts. */
    cp_segref a = write_big(&r, 20 * MB, 21);
    CHECK(a.recy >= 0);
    CHECK_EQ(a.fd, r.fds[a.recy]);
    int64_t size = file_size(a.fd);
    CHECK(size >= (int64_t)(20 * MB + 20 * MB / 8) && size % MB == 0);
    CHECK_EQ(atomic_load(&big), r.recy[a.recy].big_mib);
    CHECK_EQ(r.recy[a.recy].big_mib, (uint32_t)((size - CP_RECY_MAX_BYTES) / MB));

    /* With that entry held (7 MiB of the 10), a second 20 MiB record would
     * pass the budget: a one-shot, and nothing counted for it. */
    uint32_t held = atomic_load(&big);
    cp_segref b = write_big(&r, 20 * MB, 22);
    CHECK_EQ(b.recy, -1);
    CHECK_EQ(atomic_load(&big), held);
    CHECK_EQ(atomic_load(&r.recy[1 - a.recy].state), CP_RECY_NONE); /* as it was */
    close(b.fd);
    /* A record larger than the whole budget never waits for an entry. */
    cp_segref c = write_big(&r, CP_RECY_MAX_BYTES + 11 * MB, 23);
    CHECK_EQ(c.recy, -1);
    close(c.fd);

    /* Handed back and reused by a record a quarter its size or less, the
     * entry gets a new file of that record's size (a segment never
     * shrinks), and the budget its MiB back.  A record larger than a
     * quarter keeps the file. */
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    cp_segref a2 = write_big(&r, 6 * MB, 27);
    CHECK_EQ(a2.recy, a.recy);
    CHECK_EQ(a2.ino, a.ino);
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    cp_segref d = write_big(&r, 2 * MB, 24);
    CHECK_EQ(d.recy, a.recy);
    CHECK(d.ino != a.ino);
    CHECK(file_size(d.fd) < (int64_t)(3 * MB));
    CHECK_EQ(atomic_load(&big), 0);
    CHECK_EQ(r.recy[a.recy].big_mib, 0);

    /* Grown again, then retired (an object lives on it): its MiB go back
     * with the old file when the entry gets a new one. */
    atomic_store(&r.recy[a.recy].state, CP_RECY_FREE);
    cp_segref e = write_big(&r, 18 * MB, 25);
    CHECK_EQ(e.recy, a.recy);
    CHECK(atomic_load(&big) > 0);
    atomic_store(&r.recy[a.recy].state, CP_RECY_NONE);
    cp_segref f = write_big(&r, 100 * 1024, 26);
    CHECK_EQ(f.recy, a.recy);
    CHECK(f.ino != e.ino);
    CHECK_EQ(atomic_load(&big), 0);

    recycler_free(&r);
    CHECK_EQ(ct_open_fds(), fds0);
}

typedef struct {
    cp_recy *e;
    long after_us;
} hand_back;

static void *hand_back_main(void *arg)
{
    hand_back *h = arg;
    ct_sleep_us(h->after_us);
    atomic_store(&h->e->state, CP_RECY_FREE);
    return NULL;
}

TEST(a_waiting_producer_takes_a_segment_freed_soon)
{
    recycler r;
    recycler_init(&r, 1, 1, 1);
    char pickle[5000];
    ct_fill(pickle, sizeof pickle, 12);
    struct iovec one = {pickle, sizeof pickle};
    cp_segref a, b;
    CHECK_SYS(cp_seg_write(&r.d, &one, 1, 1, &a));
    CHECK_EQ(a.recy, 0);
    /* Held; handed back half a millisecond later: a producer that may wait
     * gets it.  "Soon" is a matter of time, and a loaded machine may run the
     * hand-back late: a few tries, one of which must see it. */
    int tries = 0;
    for (;;) {
        hand_back h = {&r.recy[0], 500};
        pthread_t th;
        CHECK_EQ(pthread_create(&th, NULL, hand_back_main, &h), 0);
        CHECK_SYS(cp_seg_write(&r.d, &one, 1, 1, &b));
        CHECK_EQ(pthread_join(th, NULL), 0);
        tries++;
        if (b.recy == 0) break;
        CHECK_EQ(b.recy, -1); /* a one-shot instead, this time */
        close(b.fd);
        CHECK(tries < 10);
        atomic_store(&r.recy[0].state, CP_RECY_BUSY); /* held again */
    }
    CHECK_EQ(b.ino, a.ino);
    if (tries > 1) printf("     (the hand-back came in time on try %d)\n", tries);
    /* Never handed back: the wait is bounded, then a one-shot. */
    int64_t t0 = cp_now_ns();
    CHECK_SYS(cp_seg_write(&r.d, &one, 1, 1, &b));
    CHECK_EQ(b.recy, -1);
    CHECK(ct_ms_since(t0) < 1000);
    read_back_pickle(b.fd, &b, 12, sizeof pickle);
    close(b.fd);
    recycler_free(&r);
}

TEST(segmap_keeps_and_renews_its_mapping)
{
    int fd = cp_memfd("ct-map", 0);
    CHECK_SYS(fd);
    cp_segmap m = {0};
    CHECK_ERRNO(cp_segmap_get(&m, fd, 0, 1) == NULL ? -1 : 0, EINVAL); /* empty */
    CHECK_SYS(ftruncate(fd, 8192));
    char *w = cp_segmap_get(&m, fd, 1, 8192);
    CHECK(w != NULL);
    CHECK(cp_segmap_get(&m, fd, 1, 100) == w); /* kept */
    ct_fill(w, 8192, 13);                      /* writable, and it is the file */
    char buf[8192];
    CHECK_EQ(pread(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
    CHECK_EQ(ct_mismatch(buf, sizeof buf, 13), sizeof buf);
    CHECK_ERRNO(cp_segmap_get(&m, fd, 0, 8193) == NULL ? -1 : 0, EINVAL); /* past it */
    /* Another file (another inode) on the same descriptor number: anew. */
    int other = cp_memfd("ct-map2", 8192);
    CHECK_SYS(other);
    CHECK_SYS(pwrite(other, "other", 5, 0));
    const char *o = cp_segmap_get(&m, other, 0, 8192);
    CHECK(o != NULL);
    CHECK(memcmp(o, "other", 5) == 0);
    /* Grown: anew, as long as the file. */
    CHECK_SYS(ftruncate(fd, 3 * 8192));
    const char *g = cp_segmap_get(&m, fd, 0, 3 * 8192);
    CHECK(g != NULL);
    CHECK(m.len >= 3 * 8192);
    CHECK_EQ(ct_mismatch(g, 8192, 13), 8192);
    cp_segmap_drop(&m);
    CHECK(m.addr == NULL);
    close(other);
    close(fd);
}

/* ---- across processes, as a worker and its parent ---------------------- */

/* The worker side: results go through a recycler in shared memory, each
 * record's descriptor over the slot's socket before its reference goes
 * through a ring, as pack.c and worker.c do. */
typedef struct {
    cp_ring *ring;
    cp_recy *recy;
    int sock;
    int records;
} worker_link;

static size_t link_scale(int i) { return (size_t)(i % 7 == 6 ? 30 : 1 + i % 3); }

static void link_producer(void *arg)
{
    worker_link *l = arg;
    cp_segmap maps[CP_RECY_RESULTS] = {{0}};
    int fds[CP_RECY_RESULTS] = {-1, -1, -1, -1};
    cp_segdest d = {
        .recy = l->recy, .nrecy = CP_RECY_RESULTS, .wait = 1, .maps = maps, .fds = fds};
    for (int i = 0; i < l->records; i++) {
        d.tag = 1000 + (uint64_t)i;
        struct iovec *v = make_pieces(100 + (uint64_t)i, link_scale(i));
        cp_segref ref;
        CHECK_SYS(cp_seg_write(&d, v, NPIECES, 1, &ref));
        free_pieces(v);
        CHECK_SYS(cp_send_fd(l->sock, ref.tag, ref.fd, 0));
        if (ref.recy < 0) close(ref.fd); /* a one-shot's is ours: sent, done */
        cp_rechdr h = {.kind = CP_K_OK, .flags = CP_F_LARGE, .idx = (uint32_t)i};
        while (cp_ring_try_put(l->ring, &h, &ref, sizeof ref) != 0) {
            uint32_t seen = cp_event_prepare(&l->ring->space);
            if (cp_ring_fits(l->ring, sizeof ref)) {
                cp_event_cancel(&l->ring->space);
                continue;
            }
            CHECK_EQ(cp_event_sleep(&l->ring->space, seen, 5000000000LL), 0);
        }
        cp_event_signal(&l->ring->data);
    }
    for (int k = 0; k < CP_RECY_RESULTS; k++) {
        cp_segmap_drop(&maps[k]);
        if (fds[k] >= 0) close(fds[k]);
    }
}

TEST(a_worker_hands_segments_to_its_parent)
{
    int fds0 = ct_open_fds();
    uint64_t cap = 4096;
    size_t size = sizeof(cp_ring) + cap + CP_RECY_RESULTS * sizeof(cp_recy);
    char *shm = cp_shared_map(size);
    CHECK(shm != NULL);
    worker_link l = {.ring = (cp_ring *)shm,
                     .recy = (cp_recy *)(shm + sizeof(cp_ring) + cap),
                     .records = 60};
    cp_ring_init(l.ring, cap);
    int sv[2];
    CHECK_SYS(cp_socketpair(sv));
    l.sock = sv[1];
    pid_t pid = ct_fork(link_producer, &l);
    close(sv[1]);
    cp_segmap maps[CP_RECY_RESULTS] = {{0}};
    int recycled = 0;
    for (int i = 0; i < l.records; i++) {
        const cp_rechdr *h;
        while ((h = cp_ring_peek(l.ring)) == NULL) {
            uint32_t seen = cp_event_prepare(&l.ring->data);
            if (cp_ring_has_data(l.ring)) {
                cp_event_cancel(&l.ring->data);
                continue;
            }
            CHECK_EQ(cp_event_sleep(&l.ring->data, seen, 5000000000LL), 0);
        }
        CHECK_EQ(h->idx, i);
        CHECK_EQ(h->flags, CP_F_LARGE);
        cp_segref ref;
        CHECK_EQ(h->len, sizeof ref);
        memcpy(&ref, h + 1, sizeof ref);
        cp_ring_consume(l.ring, h);
        int fd = cp_recv_fd(sv[0], ref.tag);
        CHECK_SYS(fd);
        read_back(fd, &ref, ref.recy >= 0 ? &maps[ref.recy] : NULL, 100 + (uint64_t)i,
                  link_scale(i));
        close(fd);
        if (ref.recy >= 0) {
            recycled++;
            CHECK(ref.recy < CP_RECY_RESULTS);
            CHECK_EQ(atomic_load(&l.recy[ref.recy].state), CP_RECY_BUSY);
            atomic_store(&l.recy[ref.recy].state, CP_RECY_FREE); /* handed back */
        }
    }
    ct_wait_ok(pid, 30000);
    CHECK(recycled > l.records / 2);
    for (int k = 0; k < CP_RECY_RESULTS; k++) cp_segmap_drop(&maps[k]);
    close(sv[0]);
    munmap(shm, size);
    CHECK_EQ(ct_open_fds(), fds0);
}
