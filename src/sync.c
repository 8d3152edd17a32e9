/* sync.c: futex waits and wake-ups over 32-bit words in shared memory.
 *
 * No Python here.  A sleeper registers in cp_event.waiters, re-checks its
 * condition, and sleeps on cp_event.seq; a signaller bumps seq and issues
 * FUTEX_WAKE only when someone is registered.  The futexes are not private:
 * the words live in memory shared between processes.
 */
#include "cpool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int cp_debug_enabled = 0;

void cp_debug_print(const char *fmt, ...)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "[cpool %d] ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 2, fmt, ap);
    va_end(ap);
    /* Cut short: the text ends where vsnprintf put its NUL. */
    if (n > (int)sizeof buf - 3) n = (int)sizeof buf - 3;
    buf[n++] = '\n';
    ssize_t w = write(2, buf, (size_t)n); /* one write: lines do not interleave */
    (void)w;
}

int64_t cp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t cp_deadline(int64_t timeout_ns)
{
    return timeout_ns < 0 ? -1 : cp_now_ns() + timeout_ns;
}

int64_t cp_slice(int64_t deadline, int64_t slice)
{
    if (deadline < 0) return slice;
    int64_t left = deadline - cp_now_ns();
    return left <= 0 ? 0 : left < slice ? left : slice;
}

void cp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

void cp_event_signal(cp_event *e)
{
    atomic_fetch_add(&e->seq, 1);
    if (atomic_load(&e->waiters) != 0) futex(&e->seq, FUTEX_WAKE, INT_MAX, NULL);
}

uint32_t cp_event_prepare(cp_event *e)
{
    atomic_fetch_add(&e->waiters, 1);
    return atomic_load(&e->seq);
}

void cp_event_cancel(cp_event *e) { atomic_fetch_sub(&e->waiters, 1); }

int cp_event_sleep(cp_event *e, uint32_t seen, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    int rc = 0;
    /* The relative timeout of FUTEX_WAIT: a spurious return is fine, the
     * caller loops on its own deadline. */
    if (futex(&e->seq, FUTEX_WAIT, seen, tsp) != 0) {
        if (errno == ETIMEDOUT || errno == EINTR) rc = errno;
        /* EAGAIN: seq already moved, which is a wake-up. */
    }
    atomic_fetch_sub(&e->waiters, 1);
    return rc;
}

/* Spin before sleeping, bounded in time (a pause lasts 5 ns on one CPU and
 * 25 ns on another): a few microseconds of pauses, then yielding the CPU
 * between looks, so a spinner never keeps the producer it waits for off a
 * shared core (two cores, a parent and two workers).  A wake-up from a
 * futex sleep costs tens of microseconds on a virtual machine; a result
 * or task that comes within the spin costs none. */
#define CP_SPIN_PAUSE_NS 2000
#define CP_SPIN_YIELD_NS 50000

int cp_spin_until(int (*pred)(void *), void *arg)
{
    int64_t start = cp_now_ns(), t;
    do {
        for (int i = 0; i < 16; i++) {
            if (pred(arg)) return 1;
            cp_cpu_relax();
        }
        t = cp_now_ns() - start;
        if (t >= CP_SPIN_PAUSE_NS) sched_yield();
    } while (t < CP_SPIN_YIELD_NS);
    return pred(arg);
}
