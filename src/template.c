/* template.c: the template process, where every worker is forked.
 *
 * No Python here beyond the spawn callback.  The template is forked from the
 * parent when a pool starts and stays single-threaded, so a worker forked
 * from it, first or replacement, never inherits a lock that some thread of
 * the parent held.  It is the workers' real parent: it reaps them and writes
 * each one's exit status into its slot, which is how the parent learns of a
 * death (a futex wake on ctl->results).  It waits in poll() on three things:
 * an eventfd the parent writes with requests, a signalfd for SIGCHLD, and a
 * pidfd of the parent process (not PR_SET_PDEATHSIG, which would fire when
 * the *thread* that made the pool exits).
 */
#include "cpool.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(cp_ctl *ctl, int block)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, block ? 0 : WNOHANG);
        if (pid < 0 && errno == EINTR) continue;
        if (pid <= 0) return;
        for (uint32_t i = 0; i < ctl->nslots; i++) {
            cp_slot *s = &ctl->slots[i];
            if (atomic_load(&s->pid) != pid) continue;
            atomic_store(&s->wstatus, st);
            atomic_store(&s->state, CP_S_DEAD);
            CP_DEBUG("template: worker %d of slot %u exited, status %#x", (int)pid, i,
                     st);
            break;
        }
        cp_event_signal(&ctl->results);
    }
}

static void spawn_requested(cp_ctl *ctl, cp_spawn_fn spawn, void *arg)
{
    for (uint32_t i = 0; i < ctl->nslots; i++) {
        cp_slot *s = &ctl->slots[i];
        if (atomic_load(&s->state) != CP_S_SPAWN_REQ) continue;
        pid_t pid;
        for (int attempt = 0;; attempt++) {
            pid = spawn(arg, (int)i);
            if (pid >= 0 || errno != EAGAIN || attempt == 5) break;
            /* A process limit: exited workers may still be unreaped. */
            reap(ctl, 0);
            struct timespec ts = {0, 10000000L << attempt};
            nanosleep(&ts, NULL);
        }
        if (pid < 0) {
            atomic_store(&s->pid, 0);
            atomic_store(&s->wstatus, CP_WS_FORKFAIL_BASE - errno);
            atomic_store(&s->state, CP_S_DEAD);
            cp_event_signal(&ctl->results);
            continue;
        }
        atomic_store(&s->pid, pid);
        atomic_fetch_add(&s->spawns, 1);
        /* The worker may have become READY already: only move forward. */
        uint32_t want = CP_S_SPAWN_REQ;
        atomic_compare_exchange_strong(&s->state, &want, CP_S_SPAWNED);
        cp_event_signal(&ctl->results); /* Pool() waits for the first pids */
    }
}

/* Kill every worker (or not: they are stopping), reap them all, and leave.
 * The pool's segments are memfds: they go with the last process that holds
 * one, nothing to remove. */
static void __attribute__((noreturn)) finish(cp_ctl *ctl, int kill_them)
{
    if (kill_them) {
        for (uint32_t i = 0; i < ctl->nslots; i++) {
            cp_slot *s = &ctl->slots[i];
            pid_t pid = atomic_load(&s->pid);
            uint32_t st = atomic_load(&s->state);
            if (pid > 0 && st != CP_S_DEAD) kill(pid, SIGKILL);
        }
    }
    reap(ctl, 1);
    _exit(0);
}

void cp_template_main(cp_ctl *ctl, int cmd_fd, pid_t parent, cp_spawn_fn spawn, void *arg)
{
    /* The parent owns Ctrl-C; a SIGINT to the process group is not ours.
     * SIGCHLD must not be ignored (inherited from a parent that ignores
     * it): the kernel would reap the workers and their deaths go unseen. */
    signal(SIGINT, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    int pfd = (int)syscall(SYS_pidfd_open, parent, 0);
    if (pfd < 0) {
        /* Old kernel: fall back to the death signal (the thread caveat
         * applies there), checked once against a race with the parent. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    }
    if (getppid() != parent || sfd < 0) finish(ctl, 1);

    for (;;) {
        uint32_t cmd = atomic_load(&ctl->tmpl_cmd);
        if (cmd == CP_CMD_TERMINATE) finish(ctl, 1);
        if (cmd == CP_CMD_EXIT) finish(ctl, 0);
        reap(ctl, 0); /* first: zombies count against the process limit */
        spawn_requested(ctl, spawn, arg);

        struct pollfd fds[3] = {
            {.fd = cmd_fd, .events = POLLIN},
            {.fd = sfd, .events = POLLIN},
            {.fd = pfd, .events = POLLIN},
        };
        int rc = poll(fds, pfd >= 0 ? 3 : 2, -1);
        if (rc < 0) {
            if (errno == EINTR) continue;
            finish(ctl, 1);
        }
        if (pfd >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
            CP_DEBUG("template: parent %d is gone", (int)parent);
            finish(ctl, 1);
        }
        if (fds[0].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(cmd_fd, &v, sizeof v);
            (void)r; /* EAGAIN is harmless: the state words are the truth */
        }
        if (fds[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            }
        }
    }
}
