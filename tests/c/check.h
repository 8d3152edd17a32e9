/* check.h: the core driver's tiny test framework and the helpers its
 * sections share.
 *
 * The core of src/ (events, rings, segments, copies, the control segment
 * and the template loop: no Python.h) is tested here from plain C, under
 * ThreadSanitizer and under ASan+UBSan (scripts/ci_core_driver.sh).  Each
 * tests/c/test_*.c file is a section; a test is
 *
 *     TEST(name)
 *     {
 *         CHECK(...);
 *     }
 *
 * and registers itself (a constructor), so a new section is a new file and
 * nothing else.  A failed check prints what failed, where (file:line), in
 * which test and which process, and ends the process at once with status 1
 * (a forked child's failure shows in its exit status: ct_wait_ok).  Every
 * test runs under an alarm, so a hang is a failure that names its test.
 */
#ifndef CORE_CHECK_H
#define CORE_CHECK_H

#include "cpool.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

typedef void (*ct_fn)(void);
/* Called by TEST's constructor: tests run sorted by file, then line. */
void ct_register(const char *file, int line, const char *name, ct_fn fn);

#define TEST(name)                                                                       \
    static void name(void);                                                              \
    __attribute__((constructor)) static void name##_register(void)                       \
    {                                                                                    \
        ct_register(__FILE__, __LINE__, #name, name);                                    \
    }                                                                                    \
    static void name(void)

/* Report a failed check and end this process (any thread, any process). */
void ct_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) ct_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                    \
    } while (0)

/* Integers of any type, compared as 64-bit values and printed both ways. */
#define CHECK_EQ(a, b)                                                                   \
    do {                                                                                 \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);   \
        if (a_ != b_)                                                                    \
            ct_fail(__FILE__, __LINE__,                                                  \
                    "CHECK_EQ(%s, %s): %lld (%#llx) != %lld (%#llx)", #a, #b,            \
                    (long long)a_, a_, (long long)b_, b_);                               \
    } while (0)

/* expr, a system call or a cp_* in that style (-1 with errno on failure),
 * succeeds.  Its value is not kept: save it first when it matters. */
#define CHECK_SYS(expr)                                                                  \
    do {                                                                                 \
        if ((long long)(expr) < 0)                                                       \
            ct_fail(__FILE__, __LINE__, "%s failed: %s", #expr, strerror(errno));        \
    } while (0)

/* expr fails (-1, or NULL for pointers: pass `p == NULL ? -1 : 0`) with
 * errno == err. */
#define CHECK_ERRNO(expr, err)                                                           \
    do {                                                                                 \
        errno = 0;                                                                       \
        long long r_ = (long long)(expr);                                                \
        int e_ = errno;                                                                  \
        if (r_ != -1 || e_ != (err))                                                     \
            ct_fail(__FILE__, __LINE__,                                                  \
                    "%s: want -1 with %s, got %lld with errno %d (%s)", #expr, #err, r_, \
                    e_, strerror(e_));                                                   \
    } while (0)

/* ---- helpers (core_driver.c) --------------------------------------------- */

/* The test running now ("section:name"). */
extern const char *ct_current;
/* A deterministic pseudo-random sequence (splitmix64). */
uint64_t ct_rand(uint64_t *state);
/* Payload bytes: n bytes of noise, seeded.  Two seeds give unrelated
 * bytes, and no two parts of one payload are alike (a shifted or
 * misplaced copy shows, at any distance).  memcpy/memcmp underneath: cheap
 * under the sanitizers, which check each call's range at once. */
void ct_fill(void *p, size_t n, uint64_t seed);
/* The first j where p[j] differs from what ct_fill wrote, or n. */
size_t ct_mismatch(const void *p, size_t n, uint64_t seed);
/* A running checksum of n bytes (8 at a time). */
uint64_t ct_sum(uint64_t sum, const void *p, size_t n);
/* Milliseconds since t0 (a cp_now_ns()). */
double ct_ms_since(int64_t t0);
void ct_sleep_us(long us);

/* Fork a child that runs fn(arg) and exits 0 (a failed check: 1). */
pid_t ct_fork(void (*fn)(void *), void *arg);
/* Wait for pid at most timeout_ms (then kill it and fail): its wait status. */
int ct_wait(pid_t pid, int timeout_ms);
/* ... and check it exited 0. */
#define ct_wait_ok(pid, timeout_ms) ct_wait_ok_at(__FILE__, __LINE__, pid, timeout_ms)
void ct_wait_ok_at(const char *file, int line, pid_t pid, int timeout_ms);

/* 1 once thread `tid` of process `pid` is asleep in the kernel (state S in
 * /proc), 0 if it was not within timeout_ms. */
int ct_wait_asleep(pid_t pid, pid_t tid, int timeout_ms);
/* Descriptors open in this process. */
int ct_open_fds(void);
/* A ring of `cap` bytes in its own malloc block, exactly as large as the
 * contract says (the header, then the data area), so ASan sees an overrun. */
cp_ring *ct_ring_new(uint64_t cap);
/* The ring's data area, where its records must lie. */
const unsigned char *ct_ring_data(const cp_ring *r);

#endif
