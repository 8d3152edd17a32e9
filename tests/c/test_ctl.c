/* test_ctl.c: the control segment (cp_ctl_create's layout) and the
 * template's loop (template.c: cp_template_main), as cpool.h states them.
 *
 * The template is run for real, in a forked process, with a spawn
 * callback that forks "workers" which exit, or sleep until killed, as
 * each slot's test wants.  The parent's side is played by the test:
 * requests in the slots, an eventfd write, sleeps on ctl->results.
 */
#include "check.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEC 1000000000LL

typedef struct {
    uint64_t off, end;
} span;

static void check_layout(cp_ctl *c, uint32_t n, uint64_t cap)
{
    CHECK_EQ(c->magic, CP_MAGIC);
    CHECK_EQ(c->nslots, n);
    CHECK_EQ(atomic_load(&c->tmpl_cmd), CP_CMD_NONE);
    for (int k = 0; k < CP_RECY_TASKS; k++)
        CHECK_EQ(atomic_load(&c->task_recy[k].state), CP_RECY_NONE);
    uint64_t slots_end = sizeof(cp_ctl) + n * sizeof(cp_slot);
    CHECK(slots_end <= c->size);
    span *s = calloc(2 * n, sizeof *s);
    CHECK(s != NULL);
    for (uint32_t i = 0; i < n; i++) {
        cp_slot *sl = &c->slots[i];
        CHECK_EQ(atomic_load(&sl->state), CP_S_FREE);
        CHECK_EQ(atomic_load(&sl->pid), 0);
        CHECK_EQ(atomic_load(&sl->loading_recy), -1);
        for (int k = 0; k < CP_RECY_RESULTS; k++)
            CHECK_EQ(atomic_load(&sl->res_recy[k].state), CP_RECY_NONE);
        cp_ring *rings[2] = {cp_task_ring(c, (int)i), cp_result_ring(c, (int)i)};
        for (int j = 0; j < 2; j++) {
            cp_ring *r = rings[j];
            uint64_t off = (uint64_t)((char *)r - (char *)c);
            CHECK_EQ(off % 64, 0); /* its counters on cache lines of their own */
            CHECK(off >= slots_end);
            CHECK(off + sizeof(cp_ring) + cap <= c->size); /* inside the segment */
            CHECK_EQ(r->cap, cap);
            CHECK(cp_ring_peek(r) == NULL);
            s[2 * i + (uint32_t)j] = (span){off, off + sizeof(cp_ring) + cap};
        }
    }
    for (uint32_t a = 0; a < 2 * n; a++) /* no two rings overlap */
        for (uint32_t b = a + 1; b < 2 * n; b++)
            CHECK(s[a].end <= s[b].off || s[b].end <= s[a].off);
    free(s);
}

/* Fill every ring of c with records of its own, then read them all back:
 * the data areas are all there, and writing one clobbers no other. */
static void fill_all_rings(cp_ctl *c)
{
    uint32_t n = c->nslots;
    static char buf[1 << 16];
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < 2 * n; i++) {
            cp_ring *r =
                i % 2 ? cp_result_ring(c, (int)(i / 2)) : cp_task_ring(c, (int)(i / 2));
            size_t len = cp_ring_inline_max(r);
            CHECK(len <= sizeof buf);
            for (uint32_t k = 0;; k++) {
                uint64_t seed = (uint64_t)i << 32 | k;
                if (pass == 0) {
                    ct_fill(buf, len, seed);
                    cp_rechdr h = {.kind = CP_K_OK, .idx = k};
                    if (cp_ring_try_put(r, &h, buf, len) != 0) {
                        CHECK(k >= 3);
                        break;
                    }
                } else {
                    const cp_rechdr *h = cp_ring_peek(r);
                    if (h == NULL) break;
                    CHECK_EQ(h->idx, k);
                    CHECK_EQ(ct_mismatch(h + 1, len, seed), len);
                    cp_ring_consume(r, h);
                }
            }
        }
    }
}

static void put_from_child(void *arg)
{
    cp_ctl *c = arg;
    cp_rechdr h = {.kind = CP_K_OK, .idx = 99};
    CHECK_EQ(cp_ring_try_put(cp_result_ring(c, (int)c->nslots - 1), &h, "hi", 3), 0);
    cp_event_signal(&c->results);
}

TEST(control_segment_layout)
{
    int fds0 = ct_open_fds();
    static const uint32_t ns[] = {1, 2, 5, 16};
    static const uint64_t caps[] = {1024, 65536};
    for (int a = 0; a < 4; a++) {
        for (int b = 0; b < 2; b++) {
            cp_ctl *c = cp_ctl_create(ns[a], caps[b], NULL);
            CHECK(c != NULL);
            CHECK_EQ(ct_open_fds(), fds0); /* no descriptor asked for, none kept */
            check_layout(c, ns[a], caps[b]);
            fill_all_rings(c);
            ((volatile char *)c)[c->size - 1] = 1; /* mapped to its end */
            cp_ctl_destroy(c);
        }
    }
    int fd = -1;
    cp_ctl *c = cp_ctl_create(3, 4096, &fd);
    CHECK(c != NULL);
    CHECK(fd >= 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct stat st;
    CHECK_SYS(fstat(fd, &st));
    CHECK((uint64_t)st.st_size >= c->size);
    CHECK_EQ(st.st_mode & 07777, 0600);
    check_layout(c, 3, 4096);
    /* Shared with the children forked after: a worker's result arrives. */
    ct_wait_ok(ct_fork(put_from_child, c), 10000);
    const cp_rechdr *h = cp_ring_peek(cp_result_ring(c, 2));
    CHECK(h != NULL);
    CHECK_EQ(h->idx, 99);
    CHECK(memcmp(h + 1, "hi", 3) == 0);
    /* The descriptor is the segment's (an exec'ed template maps it). */
    cp_ctl *again = mmap(NULL, c->size, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(again != MAP_FAILED);
    CHECK_EQ(again->magic, CP_MAGIC);
    CHECK_EQ(again->size, c->size);
    munmap(again, c->size);
    cp_ctl_destroy(c);
    close(fd);
    CHECK_EQ(ct_open_fds(), fds0);
}

/* ---- the template ------------------------------------------------------- */

enum { W_EXIT7, W_SLEEP, W_EXIT3_LATER, W_FORKFAIL };

typedef struct {
    cp_ctl *ctl;
    int evfd;
    pid_t parent;
    _Atomic int what[4]; /* per slot, what its worker does */
    _Atomic int32_t tmpl; /* the template's pid, for a harness */
} tmpl_env;

static pid_t spawn_worker(void *arg, int slot)
{
    tmpl_env *env = arg;
    int what = atomic_load(&env->what[slot]);
    if (what == W_FORKFAIL) {
        errno = ENOMEM;
        return -1;
    }
    pid_t pid = fork();
    if (pid != 0) return pid;
    if (what == W_EXIT7) _exit(7);
    if (what == W_EXIT3_LATER) {
        ct_sleep_us(50000);
        _exit(3);
    }
    for (;;) pause(); /* W_SLEEP: until killed */
}

static void template_child(void *arg)
{
    tmpl_env *env = arg;
    atomic_store(&env->tmpl, getpid());
    cp_template_main(env->ctl, env->evfd, env->parent, spawn_worker, env);
}

static tmpl_env *env_new(uint32_t nslots)
{
    tmpl_env *env = cp_shared_map(sizeof *env);
    CHECK(env != NULL);
    env->ctl = cp_ctl_create(nslots, 1024, NULL);
    CHECK(env->ctl != NULL);
    env->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    CHECK_SYS(env->evfd);
    env->parent = getpid();
    return env;
}

static void env_free(tmpl_env *env)
{
    close(env->evfd);
    cp_ctl_destroy(env->ctl);
    munmap(env, sizeof *env);
}

/* As the parent asks: set the request, then write the eventfd. */
static void tell(tmpl_env *env)
{
    uint64_t one = 1;
    CHECK_EQ(write(env->evfd, &one, sizeof one), (ssize_t)sizeof one);
}

static void request(tmpl_env *env, int slot, int what)
{
    atomic_store(&env->what[slot], what);
    atomic_store(&env->ctl->slots[slot].state, CP_S_SPAWN_REQ);
    tell(env);
}

/* Sleep on ctl->results until slot's state is `want` (the template signals
 * each change it makes). */
static void await_state(cp_ctl *c, int slot, uint32_t want)
{
    int64_t t0 = cp_now_ns();
    while (atomic_load(&c->slots[slot].state) != want) {
        uint32_t seen = cp_event_prepare(&c->results);
        if (atomic_load(&c->slots[slot].state) == want) {
            cp_event_cancel(&c->results);
            break;
        }
        int rc = cp_event_sleep(&c->results, seen, 5 * SEC);
        if (rc == ETIMEDOUT || ct_ms_since(t0) > 10000)
            ct_fail(__FILE__, __LINE__, "slot %d: state %u, not %u, after %.0f ms", slot,
                    atomic_load(&c->slots[slot].state), want, ct_ms_since(t0));
    }
}

TEST(template_spawns_reaps_and_terminates)
{
    tmpl_env *env = env_new(4);
    cp_ctl *c = env->ctl;
    pid_t t = ct_fork(template_child, env);

    /* A worker that exits: its status lands in its slot. */
    request(env, 0, W_EXIT7);
    await_state(c, 0, CP_S_DEAD);
    int st = atomic_load(&c->slots[0].wstatus);
    CHECK(atomic_load(&c->slots[0].pid) > 0);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 7);

    /* A fork that fails: DEAD at once, the error in wstatus. */
    request(env, 1, W_FORKFAIL);
    await_state(c, 1, CP_S_DEAD);
    CHECK_EQ(atomic_load(&c->slots[1].wstatus), CP_WS_FORKFAIL_BASE - ENOMEM);

    /* Two running workers, then TERMINATE: both killed and reaped. */
    request(env, 2, W_SLEEP);
    request(env, 3, W_SLEEP);
    await_state(c, 2, CP_S_SPAWNED);
    await_state(c, 3, CP_S_SPAWNED);
    pid_t w2 = atomic_load(&c->slots[2].pid), w3 = atomic_load(&c->slots[3].pid);
    CHECK(w2 > 0 && w3 > 0 && w2 != w3);
    CHECK_SYS(kill(w2, 0)); /* alive */
    /* A worker's READY is not undone by the template. */
    atomic_store(&c->slots[3].state, CP_S_READY);
    atomic_store(&c->tmpl_cmd, CP_CMD_TERMINATE);
    tell(env);
    ct_wait_ok(t, 10000);
    for (int i = 2; i < 4; i++) {
        CHECK_EQ(atomic_load(&c->slots[i].state), CP_S_DEAD);
        st = atomic_load(&c->slots[i].wstatus);
        CHECK(WIFSIGNALED(st));
        CHECK_EQ(WTERMSIG(st), SIGKILL);
    }
    CHECK_ERRNO(kill(w2, 0), ESRCH);
    env_free(env);
}

TEST(template_exit_waits_for_its_workers)
{
    tmpl_env *env = env_new(1);
    cp_ctl *c = env->ctl;
    pid_t t = ct_fork(template_child, env);
    request(env, 0, W_EXIT3_LATER);
    await_state(c, 0, CP_S_SPAWNED);
    atomic_store(&c->tmpl_cmd, CP_CMD_EXIT); /* no kill: they are stopping */
    tell(env);
    ct_wait_ok(t, 10000);
    CHECK_EQ(atomic_load(&c->slots[0].state), CP_S_DEAD);
    int st = atomic_load(&c->slots[0].wstatus);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 3);
    env_free(env);
}

/* The parent of a template that outlives it: a process that starts the
 * template, has a worker made, and exits. */
static void short_lived_parent(void *arg)
{
    tmpl_env *env = arg;
    env->parent = getpid();
    pid_t t = fork();
    CHECK_SYS(t);
    if (t == 0) template_child(env);
    request(env, 0, W_SLEEP);
    await_state(env->ctl, 0, CP_S_SPAWNED);
    _exit(0);
}

static void orphan_harness(void *arg)
{
    tmpl_env *env = arg;
    /* The orphaned template comes to this process, which can reap it. */
    CHECK_SYS(prctl(PR_SET_CHILD_SUBREAPER, 1));
    ct_wait_ok(ct_fork(short_lived_parent, env), 10000);
    pid_t t = atomic_load(&env->tmpl);
    CHECK(t > 0);
    ct_wait_ok(t, 10000); /* it noticed, and went */
    cp_slot *s = &env->ctl->slots[0];
    CHECK_EQ(atomic_load(&s->state), CP_S_DEAD);
    int st = atomic_load(&s->wstatus);
    CHECK(WIFSIGNALED(st)); /* and took its worker with it */
    CHECK_EQ(WTERMSIG(st), SIGKILL);
}

TEST(template_goes_when_its_parent_does)
{
    tmpl_env *env = env_new(1);
    ct_wait_ok(ct_fork(orphan_harness, env), 20000);
    env_free(env);
}
