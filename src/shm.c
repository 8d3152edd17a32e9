/* shm.c: shared memory.  The control segment of a pool and the segments
 * that carry records too large for a ring.
 *
 * No Python here.  Every segment is a memfd: it has no name, so another
 * local user can neither predict one, create it first, nor open it (a
 * memfd is reached only through a descriptor, or /proc/<pid>/fd/<n>, which
 * the kernel opens only for the process's own user); its mode is 0600 all
 * the same, whatever the umask; it is sealed against shrinking, so nobody,
 * the pool's own user included, can truncate it under a mapping (a SIGBUS);
 * and it goes when the last process holding it does, so a killed pool
 * leaves nothing behind.  It changes hands as a descriptor, over the
 * worker slot's socketpair (SCM_RIGHTS): no process opens another's by
 * path.  Whoever is handed a segment checks it (cp_seg_check) before
 * mapping it.  docs/security.md says why each of these matters.
 */
#include "cpool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

void *cp_shared_map(size_t size) { return cp_shared_map_fd(size, NULL); }

/* Raise the soft limit on descriptors to the hard one: 0 if it rose.
 * A segment is a descriptor, and a task waiting to be sent keeps its
 * one-shot segment's open: many queued large tasks would otherwise meet the
 * usual soft limit of 1024, which is low so that select() keeps working;
 * the hard limit is there for programs that need more (systemd and Go raise
 * theirs so). */
static int raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return -1;
    rl.rlim_cur = rl.rlim_max;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

/* ---- segments are not inherited ---------------------------------------------
 *
 * A segment's memory lives as long as some process holds its descriptor.
 * A child forked meanwhile (another pool's template and so its workers, a
 * user's os.fork(), a task's) would inherit the pool's descriptors and keep
 * that memory for its own life; there is no close-on-fork flag.  So every
 * forked child closes the segments it inherited, at once: none of them is
 * its own (a pool works only in the process that made it; a Value's arena
 * is not a segment and stays).  Async-signal-safe: only system calls. */

#define SEG_NAME "cpool-seg"
static const char seg_link[] = "/memfd:" SEG_NAME;

static void close_inherited_segments(void)
{
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    char buf[4096], link[sizeof seg_link];
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            struct dirent64 *e = (struct dirent64 *)(buf + off);
            off += e->d_reclen;
            int fd = 0, digits = 0;
            for (const char *c = e->d_name; *c >= '0' && *c <= '9'; c++, digits++)
                fd = fd * 10 + (*c - '0');
            if (digits == 0 || e->d_name[digits] != '\0' || fd == dfd) continue;
            /* "/memfd:cpool-seg (deleted)": the prefix is enough */
            ssize_t len = readlinkat(dfd, e->d_name, link, sizeof link);
            if (len >= (ssize_t)sizeof link - 1 &&
                memcmp(link, seg_link, sizeof link - 1) == 0)
                close(fd);
        }
    }
    close(dfd);
}

static void watch_forks(void)
{
    (void)pthread_atfork(NULL, NULL, close_inherited_segments);
}

/* A new memfd, mode 0600, sealed against shrinking: -1 with errno. */
static int new_memfd(const char *name)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 && errno == EMFILE && raise_nofile() == 0)
        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (fchmod(fd, 0600) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* A new data segment (the name every forked child closes: above). */
static int new_segment(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    (void)pthread_once(&once, watch_forks);
    return new_memfd(SEG_NAME);
}

/* Size fd's file for good: grown to `size`, then sealed against any change
 * of size.  0, or -1 with errno. */
static int fix_size(int fd, uint64_t size)
{
    if (ftruncate(fd, (off_t)size) != 0) return -1;
    return fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SEAL);
}

int cp_memfd(const char *name, uint64_t fixed_size)
{
    int fd = new_memfd(name);
    if (fd >= 0 && fixed_size > 0 && fix_size(fd, fixed_size) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

void *cp_shared_map_fd(size_t size, int *fd_out)
{
    int fd = cp_memfd("cpool-ctl", size);
    if (fd < 0) return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    if (p != MAP_FAILED && fd_out != NULL) {
        *fd_out = fd; /* for an exec'ed template, which cannot inherit a mapping */
        return p;
    }
    close(fd); /* the mapping keeps the memory alive */
    errno = saved;
    return p == MAP_FAILED ? NULL : p;
}

const char *cp_seg_check(int fd, uint64_t ino, uint64_t size)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return "fstat failed";
    if (!S_ISREG(st.st_mode)) return "not a regular file";
    if (st.st_uid != geteuid()) return "not owned by this user";
    if ((st.st_mode & 07777) != 0600) return "not mode 0600";
    if (ino != 0 && (uint64_t)st.st_ino != ino) return "not the file the record names";
    if ((uint64_t)st.st_size < size) return "smaller than the record says";
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) return "not sealed against shrinking";
    return NULL;
}

int cp_open_proc_fd(pid_t pid, int fd, int flags)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    int nfd;
    do {
        nfd = open(path, flags | O_CLOEXEC);
    } while (nfd < 0 && errno == EINTR);
    return nfd;
}

/* The page size (sysconf's; 4096 should it ever fail). */
static uintptr_t page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (uintptr_t)page : 4096;
}

int64_t cp_proc_rss(pid_t pid)
{
    char path[64], buf[128];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    unsigned long long size, resident;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2) return -1;
    return (int64_t)resident * (int64_t)page_size();
}

/* ---- handing segments over ------------------------------------------------- */

int cp_socketpair(int sv[2])
{
    int rc = socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv);
    if (rc != 0 && errno == EMFILE && raise_nofile() == 0)
        rc = socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv);
    return rc;
}

int cp_send_fd(int sock, uint64_t tag, int fd, int flags)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {.iov_base = &tag, .iov_len = sizeof tag};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ssize_t n;
    do {
        n = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : 0;
}

/* The next message on sock: 1 with *tag and *fd, 0 when none is waiting,
 * or -1 with errno.  Only the pool's processes hold a slot's socket; a
 * message without exactly one descriptor is dropped. */
static int recv_one(int sock, uint64_t *tag, int *fd)
{
    for (;;) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } u;
        struct iovec iov = {.iov_base = tag, .iov_len = sizeof *tag};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = u.buf,
                             .msg_controllen = sizeof u.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        if (cm == NULL || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
            cm->cmsg_len != CMSG_LEN(sizeof(int)))
            continue;
        memcpy(fd, CMSG_DATA(cm), sizeof(int));
        if (n == (ssize_t)sizeof *tag) return 1;
        close(*fd);
    }
}

int cp_recv_fd(int sock, uint64_t tag)
{
    for (;;) {
        uint64_t got;
        int fd, rc = recv_one(sock, &got, &fd);
        if (rc < 0) return -1;
        if (rc == 0) {
            errno = ENOENT; /* cannot happen: it is sent before its record */
            return -1;
        }
        if (got == tag) return fd;
        close(fd); /* for a record of a dead worker's, never taken */
    }
}

void cp_drop_fds(int sock)
{
    uint64_t tag;
    int fd;
    while (recv_one(sock, &tag, &fd) > 0) close(fd);
}

void cp_drop_fds_upto(int sock, uint64_t upto)
{
    for (;;) {
        unsigned char peeked[sizeof(uint64_t)];
        struct iovec iov = {.iov_base = peeked, .iov_len = sizeof peeked};
        /* A peek without room for a descriptor installs none. */
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(sock, &msg, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return;
        uint64_t tag;
        memcpy(&tag, peeked, sizeof tag);
        if (n == (ssize_t)sizeof tag && tag > upto) return; /* not stale: kept */
        int fd;
        if (recv_one(sock, &tag, &fd) <= 0) return;
        close(fd);
    }
}

/* ---- writing large records --------------------------------------------------
 *
 * A one-shot segment is written with pwrite, never through a mapping: no
 * page faults on the producer's side, memory running out is ENOSPC from the
 * write (through a mapping it would be a SIGBUS), and tmpfs does not zero a
 * new page that a write fills whole, where fallocate or a fault would; then
 * its size is sealed.  A recycled segment is written through the
 * producer's kept mapping (cp_segmap), its space allocated as records reach
 * it, and grows (never shrinks) as records need; the record that makes it
 * or grows it is written with pwrite, as a one-shot's.  The consumer maps
 * the segment, or reads it through its own kept mapping (pack.c). */

/* How long a producer waits for a recycled segment to come back before it
 * makes a one-shot one: a fresh segment's pages cost the kernel more than
 * the copy into them, and the consumer hands one back as soon as it has
 * read it, so a map of many large items is paced by its workers instead.
 * Bounded: the segments may be held by tasks that wait behind this one.
 * Only where the producer has nothing better to do (a map's chunks, a
 * worker's results): apply_async with queued large arguments does not. */
#define RECY_WAIT_NS 5000000
#define RECY_POLL_NS 50000

#define MiB (1ull << 20)

uint32_t cp_recy_budget_mib(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t mib =
        pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page / MiB / 16 : 0;
    return mib < 1024 ? (uint32_t)mib : 1024;
}

static uint32_t big_mib(uint64_t size)
{
    return size > CP_RECY_MAX_BYTES
               ? (uint32_t)((size - CP_RECY_MAX_BYTES + MiB - 1) / MiB)
               : 0;
}

/* Give back the budget entry e's file held (the file is going). */
static void drop_big(const cp_segdest *d, cp_recy *e)
{
    if (e->big_mib && d->big != NULL) atomic_fetch_sub(d->big, e->big_mib);
    e->big_mib = 0;
}

/* Grow entry e's file (fd, `have` bytes) for a record of `total` bytes:
 * to fit, and past CP_RECY_MAX_BYTES by an eighth more, in whole MiB (a run
 * of slightly larger records does not remap each time), within the pool's
 * budget.  0, or -1 (with errno, or past the budget). */
static int grow_entry(const cp_segdest *d, cp_recy *e, int fd, uint64_t have,
                      uint64_t total)
{
    if (have >= total) return 0;
    uint64_t want =
        total <= CP_RECY_MAX_BYTES ? total : (total + total / 8 + MiB - 1) & ~(MiB - 1);
    uint32_t now = big_mib(want), add = now > e->big_mib ? now - e->big_mib : 0;
    if (add && (d->big == NULL || atomic_fetch_add(d->big, add) + add > d->budget)) {
        if (d->big != NULL) atomic_fetch_sub(d->big, add);
        return -1;
    }
    if (ftruncate(fd, (off_t)want) != 0) {
        if (add) atomic_fetch_sub(d->big, add);
        return -1;
    }
    e->big_mib += add;
    return 0;
}

/* A file past CP_RECY_MAX_BYTES that a record of a quarter of it or less
 * would reuse: replaced by a new one (a segment never shrinks: it is sealed
 * against it), so the memory held follows the recent records. */
static int oversized(uint64_t size, uint64_t total)
{
    return size > CP_RECY_MAX_BYTES && total <= size / 4;
}

/* Take one of d's recycled segments for `total` bytes: its descriptor
 * (d->fds[k], still the producer's; ref->recy and ref->ino filled), at
 * least that large, or -1 when none
 * is free within RECY_WAIT_NS (or it cannot be made or grown): then
 * *taken is NULL.  *fresh: the file was new or grew for this record. */
static int take_recycled(const cp_segdest *d, uint64_t total, cp_segref *ref,
                         cp_recy **taken, uint32_t *was, int *fresh)
{
    *taken = NULL;
    if (d->recy == NULL ||
        (total > CP_RECY_MAX_BYTES && (d->big == NULL || big_mib(total) > d->budget)))
        return -1;
    int64_t deadline = 0;
    for (int k = 0;; k++) {
        if (k == d->nrecy) {
            if (!d->wait) return -1;
            int64_t now = cp_now_ns();
            if (deadline == 0) deadline = now + RECY_WAIT_NS;
            if (now >= deadline) return -1;
            struct timespec ts = {0, RECY_POLL_NS};
            nanosleep(&ts, NULL);
            k = -1;
            continue;
        }
        cp_recy *e = &d->recy[k];
        uint32_t st = atomic_load(&e->state);
        if (st == CP_RECY_BUSY ||
            !atomic_compare_exchange_strong(&e->state, &st, CP_RECY_BUSY))
            continue;
        int *fd = &d->fds[k];
        struct stat fst;
        /* Retired by its consumer (an object lives on it), or oversized: a
         * new file. */
        if (*fd >= 0 &&
            (st == CP_RECY_NONE ||
             (fstat(*fd, &fst) == 0 && oversized((uint64_t)fst.st_size, total)))) {
            close(*fd);
            *fd = -1;
            if (d->maps != NULL) cp_segmap_drop(&d->maps[k]);
        }
        if (*fd < 0) {
            *fd = new_segment();
            drop_big(d, e); /* its old file's (ours, or a dead producer's) */
        }
        if (*fd < 0 || fstat(*fd, &fst) != 0 ||
            grow_entry(d, e, *fd, (uint64_t)fst.st_size, total) != 0) {
            atomic_store(&e->state, st); /* as it was */
            return -1;
        }
        *fresh = (uint64_t)fst.st_size < total; /* new or grown: fresh pages */
        ref->recy = k;
        ref->ino = (uint64_t)fst.st_ino;
        *taken = e;
        *was = st;
        return *fd;
    }
}

/* The first `need` bytes of m's file allocated (ENOSPC now, not a SIGBUS
 * in a later copy) and mapped: one madvise, where the copy would take a
 * write fault per page (64 MiB: ~8 ms, ~17 with MADV_POPULATE_WRITE, which
 * dirties each page; a tmpfs page read-faulted into a shared writable
 * mapping is mapped writable).  Only what records have needed: a grown
 * file's headroom stays unallocated until a record reaches it.  0, or -1
 * with errno. */
static int segmap_reserve(cp_segmap *m, int fd, uint64_t need)
{
    if (need <= m->ready) return 0;
    int rc;
    do {
        rc = fallocate(fd, 0, (off_t)m->ready, (off_t)(need - m->ready));
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return -1;
    uintptr_t lo = ((uintptr_t)m->addr + m->ready) & ~(page_size() - 1);
    uintptr_t hi = (uintptr_t)m->addr + need;
    /* Best effort: kernels before 5.14 say EINVAL, and the copy faults. */
    (void)madvise((void *)lo, hi - lo, MADV_POPULATE_READ);
    m->ready = need;
    return 0;
}

char *cp_segmap_get(cp_segmap *m, int fd, int writable, uint64_t need)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return NULL;
    if (m->addr == NULL || m->ino != (uint64_t)st.st_ino || m->len < need) {
        cp_segmap_drop(m);
        size_t len = (size_t)st.st_size;
        if (len < need || len == 0) {
            errno = EINVAL;
            return NULL;
        }
        /* Not MAP_POPULATE: a reader's copy faults in the pages it reads,
         * sixteen a fault (64 MiB: ~8 ms, against ~12 populated first), and
         * populating would give the file's unwritten headroom pages too. */
        void *p = mmap(NULL, len, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                       MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return NULL;
        /* A child forked by this process (another pool's template, a user's
         * fork) would keep the segment's memory alive after it is unlinked. */
        (void)madvise(p, len, MADV_DONTFORK);
        m->addr = p;
        m->len = len;
        m->ready = 0;
        m->ino = (uint64_t)st.st_ino;
    }
    if (writable && segmap_reserve(m, fd, need) != 0) {
        int saved = errno;
        cp_segmap_drop(m);
        errno = saved;
        return NULL;
    }
    return m->addr;
}

void cp_segmap_drop(cp_segmap *m)
{
    if (m->addr != NULL) munmap(m->addr, m->len);
    m->addr = NULL;
    m->ready = 0;
}

/* pwrite all of it: 0, or -1 with errno (ENOSPC when /dev/shm is full). */
static int pwrite_all(int fd, const char *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        if (w == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int write_pieces(int fd, const cp_seghdr *h, uint64_t hdr,
                        const struct iovec *pieces, int n)
{
    if (pwrite_all(fd, (const char *)h, hdr, 0) != 0) return -1;
    uint64_t off = hdr;
    for (int i = 0; i < n; i++) {
        if (pwrite_all(fd, pieces[i].iov_base, pieces[i].iov_len, off) != 0) return -1;
        off += CP_ALIGN64((uint64_t)pieces[i].iov_len);
    }
    return 0;
}

/* The same, through a kept mapping. */
static void copy_pieces(char *base, const cp_seghdr *h, uint64_t hdr,
                        const struct iovec *pieces, int n)
{
    memcpy(base, h, hdr);
    uint64_t off = hdr;
    for (int i = 0; i < n; i++) {
        memcpy(base + off, pieces[i].iov_base, pieces[i].iov_len);
        off += CP_ALIGN64((uint64_t)pieces[i].iov_len);
    }
}

int cp_seg_write(const cp_segdest *d, const struct iovec *pieces, int n, int copied,
                 cp_segref *ref)
{
    memset(ref, 0, sizeof *ref);
    ref->fd = -1;
    ref->tag = d->tag;
    uint64_t hdr = CP_ALIGN64(sizeof(cp_seghdr) + (size_t)(n - 1) * sizeof(uint64_t));
    uint64_t total = hdr;
    for (int i = 0; i < n; i++) total += CP_ALIGN64((uint64_t)pieces[i].iov_len);
    cp_seghdr *h = calloc(1, hdr);
    if (h == NULL) return -1;
    h->magic = CP_SEG_MAGIC;
    h->nbufs = (uint32_t)(n - 1);
    h->pickle_len = pieces[0].iov_len;
    for (int i = 1; i < n; i++) h->lens[i - 1] = pieces[i].iov_len;

    int rc = -1;
    cp_recy *e;
    uint32_t was;
    int fresh = 0;
    int fd = take_recycled(d, total, ref, &e, &was, &fresh);
    if (fd >= 0) {
        cp_segmap *map = d->maps ? &d->maps[ref->recy] : NULL;
        char *base = NULL;
        /* Fresh pages are written with pwrite, as a one-shot segment's:
         * mapped first, the kernel would zero each (fallocate) before the
         * copy (200 MiB: ~500 ms instead of ~300 here).  The kept mapping
         * is made for the next record, over pages that are there. */
        if (map != NULL && copied && !fresh) base = cp_segmap_get(map, fd, 1, total);
        else if (map != NULL) cp_segmap_drop(map);
        if (base != NULL) {
            copy_pieces(base, h, hdr, pieces, n);
            rc = 0;
        } else {
            rc = write_pieces(fd, h, hdr, pieces, n);
        }
        if (rc != 0) atomic_store(&e->state, was); /* a one-shot may still do */
    }
    if (rc != 0) {
        ref->recy = -1;
        fd = new_segment();
        if (fd < 0) goto done;
        struct stat st;
        rc = fix_size(fd, total) == 0 && fstat(fd, &st) == 0
                 ? write_pieces(fd, h, hdr, pieces, n)
                 : -1;
        if (rc != 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            goto done;
        }
        ref->ino = (uint64_t)st.st_ino;
    }
    ref->fd = fd;
    ref->size = total;
    if (copied) ref->flags = CP_SEG_COPIED;
done:
    free(h);
    return rc;
}

cp_ctl *cp_ctl_create(uint32_t n, uint64_t ring_cap, int *fd_out)
{
    uint64_t head = CP_ALIGN64(sizeof(cp_ctl) + n * sizeof(cp_slot));
    uint64_t ring_bytes = CP_ALIGN64(sizeof(cp_ring)) + ring_cap;
    uint64_t size = head + 2 * n * CP_ALIGN64(ring_bytes);
    cp_ctl *c = cp_shared_map_fd(size, fd_out);
    if (!c) return NULL;
    c->magic = CP_MAGIC;
    c->nslots = n;
    c->size = size;
    uint64_t off = head;
    for (uint32_t i = 0; i < n; i++) {
        atomic_store(&c->slots[i].loading_recy, -1);
        c->slots[i].task_off = off;
        cp_ring_init(cp_task_ring(c, (int)i), ring_cap);
        off += CP_ALIGN64(ring_bytes);
        c->slots[i].result_off = off;
        cp_ring_init(cp_result_ring(c, (int)i), ring_cap);
        off += CP_ALIGN64(ring_bytes);
    }
    return c;
}

void cp_ctl_destroy(cp_ctl *c)
{
    if (c) munmap(c, c->size);
}
