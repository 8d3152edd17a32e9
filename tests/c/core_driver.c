/* core_driver.c: runs the tests of the Python-free core of src/ (the
 * sections are the tests/c/test_*.c files; check.h says how a test looks).
 *
 * Usage: core_driver [-l] [NAME...]
 *   -l      list the tests, run none
 *   NAME    run only the sections or tests so named (default: all)
 * Exit status 0 when every test passed; a failure prints its check and
 * file:line and exits 1 at once.
 */
#include "check.h"

#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* cpool.h's debug trace, in case no core file defines it (sync.c does
 * today; weak, so theirs wins wherever they are). */
__attribute__((weak)) int cp_debug_enabled = 0;
__attribute__((weak)) void cp_debug_print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Per test: generous for the slowest (TSan) build; a hang fails, named. */
#define TEST_ALARM_S 60

typedef struct {
    const char *file, *name;
    int line;
    ct_fn fn;
    char section[64];
} ct_test;

static ct_test tests[256];
static int ntests;
const char *ct_current = "(none)";
static char current_buf[160];
static pid_t driver_pid;

void ct_register(const char *file, int line, const char *name, ct_fn fn)
{
    if (ntests == (int)(sizeof tests / sizeof tests[0])) {
        fprintf(stderr, "core_driver: too many tests: raise tests[]\n");
        _exit(2);
    }
    ct_test *t = &tests[ntests++];
    t->file = file;
    t->line = line;
    t->name = name;
    t->fn = fn;
    /* tests/c/test_rings.c -> rings */
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (strncmp(base, "test_", 5) == 0) base += 5;
    snprintf(t->section, sizeof t->section, "%.*s", (int)strcspn(base, "."), base);
}

static int by_place(const void *a, const void *b)
{
    const ct_test *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c != 0 ? c : x->line - y->line;
}

void ct_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[64] = "";
    if (getpid() != driver_pid)
        snprintf(where, sizeof where, " (forked child %d)", (int)getpid());
    fprintf(stderr, "%s:%d: FAILED in %s%s: %s\n", file, line, ct_current, where, msg);
    fflush(stderr);
    fflush(stdout);
    _exit(1); /* from any thread: nothing else of the process runs on */
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char a[] = "core_driver: TIMEOUT (a hang) in ";
    ssize_t w = write(2, a, sizeof a - 1);
    w = write(2, ct_current, strlen(ct_current));
    w = write(2, "\n", 1);
    (void)w;
    _exit(1);
}

uint64_t ct_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ct_fill's source: 1 MiB of noise, read from a seeded place, a new one
 * for each MiB of a payload. */
#define NOISE ((size_t)1 << 20)
static unsigned char noise[NOISE];

__attribute__((constructor)) static void make_noise(void)
{
    uint64_t s = 0x5eed;
    for (size_t j = 0; j < NOISE; j += 8) {
        uint64_t x = ct_rand(&s);
        memcpy(noise + j, &x, 8);
    }
}

/* The piece of payload `seed` at j..: where it comes from in noise[], and
 * how long it runs on there. */
static const unsigned char *piece(uint64_t seed, size_t j, size_t n, size_t *len)
{
    uint64_t h = (seed + (j / NOISE) * 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
    size_t off = (size_t)((h ^ (h >> 29)) + j) % NOISE;
    size_t run = NOISE - off;
    if (run > NOISE - j % NOISE) run = NOISE - j % NOISE;
    *len = run < n - j ? run : n - j;
    return noise + off;
}

void ct_fill(void *p, size_t n, uint64_t seed)
{
    size_t len;
    for (size_t j = 0; j < n; j += len) {
        const unsigned char *from = piece(seed, j, n, &len); /* then len is set */
        memcpy((char *)p + j, from, len);
    }
}

size_t ct_mismatch(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    size_t len;
    for (size_t j = 0; j < n; j += len) {
        const unsigned char *want = piece(seed, j, n, &len);
        if (memcmp(b + j, want, len) == 0) continue;
        for (size_t k = 0;; k++)
            if (b[j + k] != want[k]) return j + k;
    }
    return n;
}

uint64_t ct_sum(uint64_t sum, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t w;
        memcpy(&w, b + j, 8);
        sum = (sum ^ w) * 0x100000001B3ull;
    }
    for (; j < n; j++) sum = (sum ^ b[j]) * 0x100000001B3ull;
    return sum;
}

double ct_ms_since(int64_t t0) { return (double)(cp_now_ns() - t0) / 1e6; }

void ct_sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

pid_t ct_fork(void (*fn)(void *), void *arg)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) ct_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* A child killed on purpose (SIGSYS, SIGKILL) leaves no core file. */
        struct rlimit no_core = {0, 0};
        (void)setrlimit(RLIMIT_CORE, &no_core);
        fn(arg);
        _exit(0);
    }
    return pid;
}

int ct_wait(pid_t pid, int timeout_ms)
{
    int64_t t0 = cp_now_ns();
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return st;
        if (r < 0 && errno != EINTR)
            ct_fail(__FILE__, __LINE__, "waitpid(%d): %s", (int)pid, strerror(errno));
        if (ct_ms_since(t0) > timeout_ms) {
            kill(pid, SIGKILL);
            (void)waitpid(pid, &st, 0);
            ct_fail(__FILE__, __LINE__, "child %d still running after %d ms: killed",
                    (int)pid, timeout_ms);
        }
        ct_sleep_us(200);
    }
}

void ct_wait_ok_at(const char *file, int line, pid_t pid, int timeout_ms)
{
    int st = ct_wait(pid, timeout_ms);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return;
    if (WIFEXITED(st))
        ct_fail(file, line, "child %d exited with status %d", (int)pid, WEXITSTATUS(st));
    ct_fail(file, line, "child %d killed by signal %d", (int)pid, WTERMSIG(st));
}

int ct_wait_asleep(pid_t pid, pid_t tid, int timeout_ms)
{
    char path[96], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    int64_t t0 = cp_now_ns();
    do {
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            /* "tid (comm) S ...": the state follows the last ')' */
            const char *p = strrchr(buf, ')');
            if (p != NULL && p[1] == ' ' && p[2] == 'S') return 1;
        }
        ct_sleep_us(100);
    } while (ct_ms_since(t0) < timeout_ms);
    return 0;
}

int ct_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        ct_fail(__FILE__, __LINE__, "opendir /proc/self/fd: %s", strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

cp_ring *ct_ring_new(uint64_t cap)
{
    cp_ring *r = malloc(sizeof(cp_ring) + cap);
    if (r == NULL) ct_fail(__FILE__, __LINE__, "malloc");
    cp_ring_init(r, cap);
    return r;
}

const unsigned char *ct_ring_data(const cp_ring *r)
{
    return (const unsigned char *)(r + 1);
}

static int wanted(const ct_test *t, int argc, char **argv)
{
    if (argc == 0) return 1;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], t->section) == 0 || strcmp(argv[i], t->name) == 0) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    driver_pid = getpid();
    setvbuf(stdout, NULL, _IOLBF, 0);
    qsort(tests, (size_t)ntests, sizeof tests[0], by_place);
    int list = argc > 1 && strcmp(argv[1], "-l") == 0;
    argc -= 1 + list;
    argv += 1 + list;
    for (int i = 0; i < argc; i++) {
        int known = 0;
        for (int k = 0; k < ntests; k++)
            known |= strcmp(argv[i], tests[k].section) == 0 ||
                     strcmp(argv[i], tests[k].name) == 0;
        if (!known) {
            fprintf(stderr, "core_driver: no section or test named %s (-l lists them)\n",
                    argv[i]);
            return 2;
        }
    }
    signal(SIGALRM, on_alarm);
    int64_t start = cp_now_ns();
    int ran = 0;
    for (int k = 0; k < ntests; k++) {
        ct_test *t = &tests[k];
        if (!wanted(t, argc, argv)) continue;
        snprintf(current_buf, sizeof current_buf, "%s:%s", t->section, t->name);
        if (list) {
            printf("%s\n", current_buf);
            continue;
        }
        ct_current = current_buf;
        int64_t t0 = cp_now_ns();
        alarm(TEST_ALARM_S);
        t->fn();
        alarm(0);
        printf("ok   %-58s %8.1f ms\n", current_buf, ct_ms_since(t0));
        ran++;
    }
    ct_current = "(none)";
    if (!list)
        printf("core_driver: %d tests passed in %.2f s\n", ran, ct_ms_since(start) / 1e3);
    return 0;
}
