/* test_events.c: sync.c, the wake-up channels (cp_event), the clock and the
 * spin, as cpool.h states their contracts.
 *
 * A "sleeper" here always follows the protocol cpool.h asks of a waiter:
 * prepare, re-check the condition, then sleep (or cancel).  Sleeps are
 * bounded, and a sleep that times out while its signaller was running is a
 * lost wake-up: a failure, not a slow pass.
 */
#include "check.h"

#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEC 1000000000LL

/* Wait, as a waiter must, until *flag >= want; a sleep of timeout_ns that
 * times out fails.  The number of sleeps that ended in a wake-up. */
static int wait_for(cp_event *e, _Atomic uint32_t *flag, uint32_t want,
                    int64_t timeout_ns)
{
    int woken = 0;
    while (atomic_load(flag) < want) {
        uint32_t seen = cp_event_prepare(e);
        if (atomic_load(flag) >= want) {
            cp_event_cancel(e);
            break;
        }
        int rc = cp_event_sleep(e, seen, timeout_ns);
        if (rc == ETIMEDOUT)
            ct_fail(__FILE__, __LINE__, "lost wake-up: waited %lld ms for %u (at %u)",
                    (long long)(timeout_ns / 1000000), want, atomic_load(flag));
        CHECK(rc == 0 || rc == EINTR);
        woken += rc == 0;
    }
    return woken;
}

TEST(clock_is_monotonic_nanoseconds)
{
    int64_t prev = cp_now_ns();
    CHECK(prev > 0);
    for (int i = 0; i < 10000; i++) {
        int64_t t = cp_now_ns();
        CHECK(t >= prev);
        prev = t;
    }
    int64_t t0 = cp_now_ns();
    ct_sleep_us(3000);
    int64_t dt = cp_now_ns() - t0;
    CHECK(dt >= 3000000);    /* nanoseconds, not micro- */
    CHECK(dt < 2 * SEC); /* nor pico- */
}

TEST(deadlines_and_slices)
{
    CHECK_EQ(cp_deadline(-1), -1); /* none */
    CHECK_EQ(cp_deadline(-12345), -1);
    int64_t t0 = cp_now_ns();
    int64_t d = cp_deadline(SEC);
    int64_t t1 = cp_now_ns();
    CHECK(d >= t0 + SEC && d <= t1 + SEC); /* on cp_now_ns's clock */
    CHECK(cp_deadline(0) >= t1);

    CHECK_EQ(cp_slice(-1, 5000000), 5000000); /* no deadline: the slice */
    CHECK_EQ(cp_slice(cp_deadline(SEC), 5000000), 5000000);
    int64_t left = cp_slice(cp_deadline(2000000), 5000000); /* ends at the deadline */
    CHECK(left > 0 && left <= 2000000);
    CHECK_EQ(cp_slice(cp_now_ns() - 1, 5000000), 0); /* passed */
    CHECK_EQ(cp_slice(t0, 5000000), 0);

    /* Sleeps in slices toward a deadline end there, not a slice later. */
    cp_event e = {0};
    t0 = cp_now_ns();
    d = cp_deadline(30000000);
    int64_t slice;
    int n = 0;
    while ((slice = cp_slice(d, 7000000)) > 0) {
        CHECK(slice <= 7000000);
        CHECK_EQ(cp_event_sleep(&e, cp_event_prepare(&e), slice), ETIMEDOUT);
        n++;
    }
    int64_t dt = cp_now_ns() - t0;
    CHECK(dt >= 30000000);
    CHECK(dt < 30000000 + SEC / 2);
    CHECK(n >= 1); /* (5 slices or more, unless a loaded machine oversleeps) */
}

static int count_calls(void *arg)
{
    int *n = arg;
    return ++n[0] >= n[1];
}

TEST(spin_until_is_bounded)
{
    int n[2] = {0, 1}; /* holds at once: one call */
    CHECK_EQ(cp_spin_until(count_calls, n), 1);
    CHECK_EQ(n[0], 1);
    n[0] = 0, n[1] = 5;
    CHECK_EQ(cp_spin_until(count_calls, n), 1);
    CHECK_EQ(n[0], 5);
    n[0] = 0, n[1] = INT_MAX; /* never holds: gives up */
    int64_t t0 = cp_now_ns();
    CHECK_EQ(cp_spin_until(count_calls, n), 0);
    CHECK(n[0] > 1);
    CHECK(cp_now_ns() - t0 < SEC / 2); /* a spin, not a sleep */
    cp_cpu_relax();
}

/* ---- a signal nobody waits for makes no system call ---------------------- */

#if defined(__x86_64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_AARCH64
#endif

#ifdef AUDIT_ARCH_HERE
#define NO_SECCOMP 77 /* a child's exit status: the kernel has no seccomp filters */

/* Kill this process on any futex call on `word` (seccomp; this process and
 * its children only).  Calls on other words (the sanitizers' runtimes, libc)
 * go through. */
static void forbid_futex_on(const void *word)
{
    uint64_t a = (uint64_t)(uintptr_t)word;
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_HERE, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* args[0], a 64-bit word, in two little-endian halves */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)a, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]) + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(a >> 32), 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    CHECK_SYS(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        CHECK(errno == EINVAL || errno == ENOSYS); /* no seccomp filters here */
        _exit(NO_SECCOMP);
    }
}

static void signal_unwatched(void *arg)
{
    cp_event *e = arg;
    forbid_futex_on(&e->seq);
    uint32_t seq = atomic_load(&e->seq);
    for (int i = 0; i < 10000; i++) cp_event_signal(e);
    CHECK_EQ(atomic_load(&e->seq), seq + 10000); /* every signal counts */
}

static void signal_watched(void *arg)
{
    cp_event *e = arg;
    forbid_futex_on(&e->seq);
    (void)cp_event_prepare(e); /* a sleeper registered (this same thread) */
    cp_event_signal(e);        /* must wake it: a futex call, fatal here */
}

TEST(signal_without_sleeper_makes_no_syscall)
{
    cp_event *e = cp_shared_map(sizeof *e);
    CHECK(e != NULL);
    int st = ct_wait(ct_fork(signal_unwatched, e), 10000);
    if (WIFEXITED(st) && WEXITSTATUS(st) == NO_SECCOMP) {
        printf("     (skipped: this kernel has no seccomp filters)\n");
        munmap(e, sizeof *e);
        return;
    }
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 0);
    /* The same filter does see the wake-up a registered sleeper needs:
     * without this the check above could pass by watching nothing. */
    st = ct_wait(ct_fork(signal_watched, e), 10000);
    CHECK(WIFSIGNALED(st));
    CHECK_EQ(WTERMSIG(st), SIGSYS);
    munmap(e, sizeof *e);
}
#endif

/* ---- sleepers are woken ------------------------------------------------- */

typedef struct {
    cp_event *e;
    _Atomic uint32_t *flag;
    _Atomic pid_t tid;
    int woken;
} sleeper;

static void *sleeper_main(void *arg)
{
    sleeper *s = arg;
    atomic_store(&s->tid, gettid());
    s->woken = wait_for(s->e, s->flag, 1, 10 * SEC);
    return NULL;
}

TEST(sleeping_threads_are_all_woken)
{
    enum { N = 4 };
    cp_event e = {0};
    _Atomic uint32_t flag = 0;
    sleeper s[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        s[i] = (sleeper){.e = &e, .flag = &flag};
        CHECK_EQ(pthread_create(&th[i], NULL, sleeper_main, &s[i]), 0);
    }
    /* Each one asleep in the kernel, not yet about to be: this tests the
     * wake-up, not the re-check. */
    int64_t t0 = cp_now_ns();
    while (atomic_load(&e.waiters) != N && ct_ms_since(t0) < 10000) ct_sleep_us(100);
    CHECK_EQ(atomic_load(&e.waiters), N);
    for (int i = 0; i < N; i++) {
        while (atomic_load(&s[i].tid) == 0) ct_sleep_us(100);
        CHECK(ct_wait_asleep(getpid(), atomic_load(&s[i].tid), 10000));
    }
    atomic_store(&flag, 1);
    cp_event_signal(&e); /* one signal, every sleeper */
    for (int i = 0; i < N; i++) {
        CHECK_EQ(pthread_join(th[i], NULL), 0);
        CHECK_EQ(s[i].woken, 1);
    }
    CHECK(ct_ms_since(t0) < 9000); /* woken, not timed out */
    CHECK_EQ(atomic_load(&e.waiters), 0); /* each unregistered */
}

typedef struct {
    cp_event e;
    _Atomic uint32_t flag;
} shared_flag;

static void process_sleeper(void *arg)
{
    shared_flag *sf = arg;
    CHECK_EQ(wait_for(&sf->e, &sf->flag, 1, 10 * SEC), 1);
}

TEST(sleeping_process_is_woken)
{
    shared_flag *sf = cp_shared_map(sizeof *sf);
    CHECK(sf != NULL);
    pid_t pid = ct_fork(process_sleeper, sf);
    int64_t t0 = cp_now_ns();
    while (atomic_load(&sf->e.waiters) != 1 && ct_ms_since(t0) < 10000) ct_sleep_us(100);
    CHECK_EQ(atomic_load(&sf->e.waiters), 1);
    CHECK(ct_wait_asleep(pid, pid, 10000));
    atomic_store(&sf->flag, 1);
    cp_event_signal(&sf->e);
    ct_wait_ok(pid, 10000);
    CHECK_EQ(atomic_load(&sf->e.waiters), 0);
    munmap(sf, sizeof *sf);
}

TEST(sleep_times_out)
{
    cp_event e = {0};
    uint32_t seen = cp_event_prepare(&e);
    CHECK_EQ(atomic_load(&e.waiters), 1);
    int64_t t0 = cp_now_ns();
    CHECK_EQ(cp_event_sleep(&e, seen, 30000000), ETIMEDOUT);
    int64_t dt = cp_now_ns() - t0;
    CHECK(dt >= 29000000);
    CHECK(dt < 5 * SEC);
    CHECK_EQ(atomic_load(&e.waiters), 0);

    seen = cp_event_prepare(&e); /* a zero timeout: at once */
    t0 = cp_now_ns();
    CHECK_EQ(cp_event_sleep(&e, seen, 0), ETIMEDOUT);
    CHECK(cp_now_ns() - t0 < SEC);
    CHECK_EQ(atomic_load(&e.waiters), 0);

    seen = cp_event_prepare(&e); /* a timeout over a second (tv_sec) */
    t0 = cp_now_ns();
    CHECK_EQ(cp_event_sleep(&e, seen, SEC + 5000000), ETIMEDOUT);
    CHECK(cp_now_ns() - t0 >= SEC);
    CHECK_EQ(atomic_load(&e.waiters), 0);
}

TEST(signal_between_prepare_and_sleep_is_not_lost)
{
    cp_event e = {0};
    uint32_t seen = cp_event_prepare(&e);
    cp_event_signal(&e); /* after prepare, before the sleep */
    int64_t t0 = cp_now_ns();
    CHECK_EQ(cp_event_sleep(&e, seen, 5 * SEC), 0); /* returns at once */
    CHECK(cp_now_ns() - t0 < SEC);
    CHECK_EQ(atomic_load(&e.waiters), 0);

    seen = cp_event_prepare(&e); /* a cancel unregisters */
    cp_event_cancel(&e);
    CHECK_EQ(atomic_load(&e.waiters), 0);
}

static void on_usr1(int sig) { (void)sig; }

typedef struct {
    cp_event *e;
    int64_t timeout;
    _Atomic pid_t tid;
    _Atomic int rc;
} interrupted;

static void *interrupted_main(void *arg)
{
    interrupted *s = arg;
    atomic_store(&s->tid, gettid());
    uint32_t seen = cp_event_prepare(s->e);
    atomic_store(&s->rc, cp_event_sleep(s->e, seen, s->timeout));
    return NULL;
}

TEST(signal_handler_interrupts_sleep)
{
    /* As Python installs its handlers: no SA_RESTART. */
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    CHECK_SYS(sigaction(SIGUSR1, &sa, &old));
    int64_t timeouts[] = {-1, 10 * SEC};
    for (int i = 0; i < 2; i++) {
        cp_event e = {0};
        interrupted s = {.e = &e, .timeout = timeouts[i], .rc = -1};
        pthread_t th;
        CHECK_EQ(pthread_create(&th, NULL, interrupted_main, &s), 0);
        while (atomic_load(&s.tid) == 0) ct_sleep_us(100);
        CHECK(ct_wait_asleep(getpid(), atomic_load(&s.tid), 10000));
        /* Until it returns: a signal may land before the futex call. */
        int64_t t0 = cp_now_ns();
        while (atomic_load(&s.rc) == -1 && ct_ms_since(t0) < 5000) {
            CHECK_EQ(pthread_kill(th, SIGUSR1), 0);
            ct_sleep_us(2000);
        }
        CHECK_EQ(pthread_join(th, NULL), 0);
        CHECK_EQ(s.rc, EINTR);
        CHECK_EQ(atomic_load(&e.waiters), 0);
    }
    CHECK_SYS(sigaction(SIGUSR1, &old, NULL));
}

/* ---- no lost wake-up under stress --------------------------------------- */

#define PINGPONG_ROUNDS 20000

typedef struct {
    cp_event ev[2];
    _Atomic uint32_t turn[2]; /* the round each side may play */
    int woken[2];
} pingpong;

static void play(pingpong *p, int me)
{
    int other = !me;
    for (uint32_t i = 1; i <= PINGPONG_ROUNDS; i++) {
        if (me == 0) {
            atomic_store(&p->turn[other], i);
            cp_event_signal(&p->ev[other]);
            p->woken[me] += wait_for(&p->ev[me], &p->turn[me], i, 5 * SEC);
        } else {
            p->woken[me] += wait_for(&p->ev[me], &p->turn[me], i, 5 * SEC);
            atomic_store(&p->turn[other], i);
            cp_event_signal(&p->ev[other]);
        }
    }
}

static void *player1(void *arg)
{
    play(arg, 1);
    return NULL;
}

TEST(no_lost_wakeup_between_threads)
{
    pingpong p = {0};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, player1, &p), 0);
    play(&p, 0);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(atomic_load(&p.turn[0]), PINGPONG_ROUNDS);
    CHECK_EQ(atomic_load(&p.turn[1]), PINGPONG_ROUNDS);
    CHECK_EQ(atomic_load(&p.ev[0].waiters), 0);
    CHECK_EQ(atomic_load(&p.ev[1].waiters), 0);
    /* The stress went through real sleeps, not only re-checks. */
    CHECK(p.woken[0] + p.woken[1] > 0);
    printf("     (%d rounds; sleeps ended by a wake-up: %d and %d)\n", PINGPONG_ROUNDS,
           p.woken[0], p.woken[1]);
}

static void play1_process(void *arg) { play(arg, 1); }

TEST(no_lost_wakeup_between_processes)
{
    pingpong *p = cp_shared_map(sizeof *p);
    CHECK(p != NULL);
    pid_t pid = ct_fork(play1_process, p);
    play(p, 0);
    ct_wait_ok(pid, 30000);
    CHECK_EQ(atomic_load(&p->turn[0]), PINGPONG_ROUNDS);
    CHECK_EQ(atomic_load(&p->turn[1]), PINGPONG_ROUNDS);
    munmap(p, sizeof *p);
}

/* cp_debug_print writes one line, however long the message: cut short, it
 * ends in '\n' with no NUL byte before it (it used to write the NUL that
 * vsnprintf left). */
TEST(debug_line_cut_short_has_no_nul)
{
    int p[2], saved = dup(2);
    CHECK(pipe(p) == 0 && saved >= 0);
    CHECK(dup2(p[1], 2) == 2);
    char msg[700];
    memset(msg, 'x', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    cp_debug_print("%s", msg);
    CHECK(dup2(saved, 2) == 2);
    close(saved);
    close(p[1]);
    char out[1024];
    ssize_t n = read(p[0], out, sizeof out);
    close(p[0]);
    CHECK_EQ(n, 510);
    CHECK_EQ(out[n - 1], '\n');
    CHECK(memchr(out, '\0', (size_t)n) == NULL);
}
