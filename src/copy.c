/* copy.c: large copies into fresh memory, the receiving end of an
 * out-of-band buffer (a 4 MiB bytes rebuilt from a segment).
 *
 * No Python here.  Most of such a copy is the kernel's: faulting in and
 * zeroing the fresh pages costs ~2.2 ms per 4 MiB on the VM of the README,
 * the memcpy itself ~0.5 ms.  A large copy runs its second half on a thread
 * of its own meanwhile: ~2.8 ms -> ~1.6 ms when a CPU is free, about the
 * time of one thread when none is.  The thread lives for that copy only
 * (~50 us to start and join, against milliseconds): no thread stays behind
 * to make a later fork "multi-threaded", and nothing needs redoing in a
 * forked child.  A block malloc reused (in memory already: a worker's
 * next bytes of the size of its last) has nothing to fault in: one plain
 * memcpy.
 */
#include "cpool.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#define PREFAULT_MIN (1u << 20)
#define SPLIT_MIN (2u << 20)
#define PAGE ((uintptr_t)4096)
#define HUGE ((uintptr_t)2 << 20)
#define HUGE_MIN (32u << 20)
#define HELPER_STACK (64u << 10)

typedef struct {
    char *dst;
    const char *src;
    size_t n;
    size_t whole; /* the size of the block dst is in */
} piece;

/* Fault in the fresh pages of dst before copying into them: one madvise
 * instead of a page fault per 4 KiB (200 MiB: 250 ms -> 135 ms here).
 * Best effort: kernels before 5.14 say EINVAL and the copy faults. */
static void *fill(void *arg)
{
    piece *p = arg;
    if (p->n >= PREFAULT_MIN) {
        uintptr_t lo = ((uintptr_t)p->dst + PAGE - 1) & ~(PAGE - 1);
        uintptr_t hi = ((uintptr_t)p->dst + p->n) & ~(PAGE - 1);
        /* In huge pages where the kernel gives them on request (THP
         * "madvise"): 512 times fewer faults, 64 MiB copied at ~6 GB/s
         * instead of ~4 here.  Only for a block malloc mapped for itself
         * (past glibc's largest mmap threshold, 32 MiB): advice on the heap
         * would outlive the object and let khugepaged bloat the heap. */
        uintptr_t hlo = (lo + HUGE - 1) & ~(HUGE - 1), hhi = hi & ~(HUGE - 1);
        if (p->whole >= HUGE_MIN && hhi > hlo)
            (void)madvise((void *)hlo, hhi - hlo, MADV_HUGEPAGE);
        if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    }
    memcpy(p->dst, p->src, p->n);
    return NULL;
}

/* Start fill(p) on a new thread that blocks every signal (they go to the
 * threads that run Python): 0, or an error number. */
static int start_helper(pthread_t *t, piece *p)
{
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    (void)pthread_attr_setstacksize(&attr, HELPER_STACK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(t, &attr, fill, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

/* Whether dst's pages are in memory already (a block malloc reused: a
 * worker's next 4 MiB bytes where its last one was): its first and last
 * whole pages say.  Then faulting in is no longer the cost, and the
 * madvise and the helper thread would only add theirs (4 MiB: 0.23 ms
 * against 0.12 for one memcpy).  Anything mincore cannot say: fresh. */
static int resident(const char *dst, size_t n)
{
    uintptr_t lo = ((uintptr_t)dst + PAGE - 1) & ~(PAGE - 1);
    uintptr_t hi = ((uintptr_t)dst + n) & ~(PAGE - 1);
    unsigned char first = 0, last = 0;
    return hi > lo && mincore((void *)lo, PAGE, &first) == 0 && (first & 1) &&
           mincore((void *)(hi - PAGE), PAGE, &last) == 0 && (last & 1);
}

void cp_copy_fresh(char *dst, const char *src, size_t n)
{
    if (n >= PREFAULT_MIN && resident(dst, n)) {
        memcpy(dst, src, n);
        return;
    }
    piece whole = {dst, src, n, n};
    size_t half = (n / 2) & ~(size_t)(PAGE - 1);
    piece second = {dst + half, src + half, n - half, n};
    pthread_t t;
    if (n < SPLIT_MIN || start_helper(&t, &second) != 0) {
        fill(&whole);
        return;
    }
    piece first = {dst, src, half, n};
    fill(&first);
    /* Not a wait for another process: the helper's half is as long as
     * ours, a few milliseconds at most. */
    pthread_join(t, NULL);
}
