/* copy.c: large copies into fresh memory, the receiving end of an
 * out-of-band buffer (a 4 MiB bytes rebuilt from a segment).
 *
 * No Python here.  Most of such a copy is the kernel's: faulting in and
 * zeroing the fresh pages costs ~2.2 ms per 4 MiB on the VM of the README,
 * the memcpy itself ~0.5 ms.  Both halves of a copy run at once, one on a
 * helper thread: ~2.8 ms -> ~1.6 ms when a CPU is free, and about the time
 * of one thread when none is.  One helper per process, started on first
 * use (again in a forked child, which has none); a copy that finds it
 * taken (two pools' collectors at once) runs alone.
 */
#include "cpool.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define PREFAULT_MIN (1u << 20)
#define SPLIT_MIN (2u << 20)
#define PAGE ((uintptr_t)4096)

/* Fault in the fresh pages of dst before copying into them: one madvise
 * instead of a page fault per 4 KiB (200 MiB: 250 ms -> 135 ms here).
 * Best effort: kernels before 5.14 say EINVAL and the copy faults. */
static void fill(char *dst, const char *src, size_t n)
{
    if (n >= PREFAULT_MIN) {
        uintptr_t lo = ((uintptr_t)dst + PAGE - 1) & ~(PAGE - 1);
        uintptr_t hi = ((uintptr_t)dst + n) & ~(PAGE - 1);
        if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    }
    memcpy(dst, src, n);
}

typedef struct {
    pid_t pid;              /* the process whose helper this is */
    _Atomic uint32_t taken; /* a copy owns the helper */
    _Atomic uint32_t posted, finished; /* job counts */
    cp_event go, done;
    char *dst;
    const char *src;
    size_t n;
} helper;

static helper *_Atomic the_helper;
static pthread_mutex_t starting = PTHREAD_MUTEX_INITIALIZER;

static void *helper_main(void *arg)
{
    helper *h = arg;
    uint32_t done = 0;
    for (;;) {
        uint32_t seen = cp_event_prepare(&h->go);
        if (atomic_load(&h->posted) == done) {
            cp_event_sleep(&h->go, seen, -1);
            continue;
        }
        cp_event_cancel(&h->go);
        fill(h->dst, h->src, h->n);
        atomic_store(&h->finished, ++done);
        cp_event_signal(&h->done);
    }
    return NULL;
}

/* This process's helper, started if need be; NULL if it cannot be. */
static helper *get_helper(void)
{
    helper *h = atomic_load(&the_helper);
    if (h != NULL && h->pid == getpid()) return h;
    /* A forked child: the parent's helper (and maybe its lock) came along
     * as memory only.  Left as it is; this process makes its own. */
    if (pthread_mutex_trylock(&starting) != 0) return NULL;
    h = atomic_load(&the_helper);
    if (h == NULL || h->pid != getpid()) {
        helper *fresh = calloc(1, sizeof *fresh);
        if (fresh != NULL) {
            fresh->pid = getpid();
            /* Signals go to the threads that run Python, never here. */
            sigset_t all, old;
            sigfillset(&all);
            pthread_sigmask(SIG_BLOCK, &all, &old);
            pthread_t t;
            int rc = pthread_create(&t, NULL, helper_main, fresh);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            if (rc == 0) {
                pthread_detach(t);
                atomic_store(&the_helper, fresh);
            } else {
                free(fresh);
            }
        }
        h = atomic_load(&the_helper);
        if (h != NULL && h->pid != getpid()) h = NULL;
    }
    pthread_mutex_unlock(&starting);
    return h;
}

void cp_copy_fresh(char *dst, const char *src, size_t n)
{
    helper *h = n >= SPLIT_MIN ? get_helper() : NULL;
    uint32_t free_ = 0;
    if (h == NULL || !atomic_compare_exchange_strong(&h->taken, &free_, 1)) {
        fill(dst, src, n);
        return;
    }
    size_t half = (n / 2) & ~(size_t)(PAGE - 1);
    h->dst = dst + half;
    h->src = src + half;
    h->n = n - half;
    uint32_t job = atomic_load(&h->posted) + 1;
    atomic_store(&h->posted, job);
    cp_event_signal(&h->go);
    fill(dst, src, half);
    /* Not a wait for another process: the helper's half is as long as
     * ours, a few milliseconds at most. */
    while (atomic_load(&h->finished) != job) {
        uint32_t seen = cp_event_prepare(&h->done);
        if (atomic_load(&h->finished) == job) {
            cp_event_cancel(&h->done);
            break;
        }
        cp_event_sleep(&h->done, seen, -1);
    }
    atomic_store(&h->taken, 0);
}
