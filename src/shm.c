/* shm.c: shared memory.  The control segment of a pool (anonymous, a memfd
 * mapped before any fork, so it has no name to leak) and the named segments
 * that carry records too large for a ring.
 *
 * No Python here.  Named segments are created with mode 0600 (private to the
 * user) under a per-pool prefix, unlinked by whoever consumes them, and swept
 * by prefix when a producer may have died half-way: by the parent after a
 * worker death and at shutdown, by the template when the parent dies.
 */
#include "cpool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void *cp_shared_map(size_t size)
{
    int fd = memfd_create("cpool", MFD_CLOEXEC);
    if (fd < 0) return NULL;
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)size) == 0)
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd); /* the mapping keeps the memory alive */
    errno = saved;
    return p == MAP_FAILED ? NULL : p;
}

int cp_seg_create(const char *name, size_t size, void **addr)
{
    int fd;
    do {
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    int rc = -1;
    /* Reserve the space now: tmpfs grants any ftruncate and raises SIGBUS
     * on the write that finds /dev/shm full.  posix_fallocate says ENOSPC. */
    int err;
    do {
        err = posix_fallocate(fd, 0, (off_t)(size ? size : 1));
    } while (err == EINTR);
    if (err != 0) errno = err;
    if (err == 0) {
        void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, fd, 0);
        if (p != MAP_FAILED) {
            *addr = p;
            rc = 0;
        }
    }
    int saved = errno;
    close(fd);
    if (rc != 0) shm_unlink(name);
    errno = saved;
    return rc;
}

int cp_seg_open_fd(const char *name)
{
    int fd;
    do {
        fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

void cp_seg_unlink(const char *name)
{
    /* ENOENT is expected: the consumer may have unlinked it already. */
    (void)shm_unlink(name);
}

void cp_seg_sweep(const char *prefix)
{
    /* prefix starts with '/', as shm_open names do. */
    DIR *d = opendir("/dev/shm");
    if (!d) return;
    size_t plen = strlen(prefix + 1);
    struct dirent *e;
    char name[CP_SEGNAME_MAX + 2];
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix + 1, plen) != 0) continue;
        if (snprintf(name, sizeof name, "/%s", e->d_name) >= (int)sizeof name)
            continue;
        shm_unlink(name);
    }
    closedir(d);
}

int cp_seg_put(const char *prefix, const char *tag, uint64_t seq,
               const void *p, size_t n, cp_segref *ref)
{
    void *addr;
    if (snprintf(ref->name, sizeof ref->name, "%s%s%llu", prefix, tag,
                 (unsigned long long)seq) >= (int)sizeof ref->name) {
        errno = ENAMETOOLONG;
        return -1;
    }
    uint64_t hdr = CP_ALIGN64(sizeof(cp_seghdr));
    size_t total = (size_t)(hdr + n);
    if (cp_seg_create(ref->name, total, &addr) != 0) return -1;
    cp_seghdr *h = addr;
    h->magic = CP_SEG_MAGIC;
    h->nbufs = 0;
    h->pickle_len = n;
    memcpy((char *)addr + hdr, p, n);
    munmap(addr, total);
    ref->size = total;
    ref->recy = -1;
    return 0;
}

#define ALIGN64(n) (((n) + 63u) & ~(uint64_t)63u)

cp_ctl *cp_ctl_create(uint32_t n, uint64_t ring_cap)
{
    uint64_t head = ALIGN64(sizeof(cp_ctl) + n * sizeof(cp_slot));
    uint64_t ring_bytes = ALIGN64(sizeof(cp_ring)) + ring_cap;
    uint64_t size = head + 2 * n * ALIGN64(ring_bytes);
    cp_ctl *c = cp_shared_map(size);
    if (!c) return NULL;
    c->magic = CP_MAGIC;
    c->nslots = n;
    c->size = size;
    uint64_t off = head;
    for (uint32_t i = 0; i < n; i++) {
        atomic_store(&c->slots[i].loading_recy, -1);
        c->slots[i].task_off = off;
        cp_ring_init(cp_task_ring(c, (int)i), ring_cap);
        off += ALIGN64(ring_bytes);
        c->slots[i].result_off = off;
        cp_ring_init(cp_result_ring(c, (int)i), ring_cap);
        off += ALIGN64(ring_bytes);
    }
    return c;
}

void cp_ctl_destroy(cp_ctl *c)
{
    if (c) munmap(c, c->size);
}
