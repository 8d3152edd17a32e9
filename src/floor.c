/* floor.c: the physical limits the benchmark compares against, measured in
 * the same run on the same machine: a futex round trip between two
 * processes (and the same hand-off when both sides spin), and memcpy
 * bandwidth.  No pool code here: what any pool on
 * this machine could at best reach.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The two sides take turns on one sequence word: each waits until it
 * moves to its own turn, bumps it, and wakes the other.  `spins` pauses
 * before sleeping: 0 is a futex round trip proper (each side sleeps in
 * FUTEX_WAIT and is woken by FUTEX_WAKE); 256 (~6 us here) is a spinning
 * hand-off, where the sleep is rare: what two busy processes can reach. */
static void turn(_Atomic uint32_t *seq, uint32_t mine, int spins)
{
    for (int spin = 0; atomic_load(seq) != mine; spin++) {
        if (spin < spins) {
            cp_cpu_relax();
            continue;
        }
        uint32_t now = atomic_load(seq);
        if (now != mine)
            syscall(SYS_futex, (uint32_t *)seq, FUTEX_WAIT, now, NULL, NULL, 0);
    }
}

static void pass(_Atomic uint32_t *seq)
{
    atomic_fetch_add(seq, 1);
    syscall(SYS_futex, (uint32_t *)seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

PyDoc_STRVAR(futex_roundtrip_doc,
             "futex_roundtrip(n, spin=False)\n--\n\n"
             "Seconds per round trip of a futex ping-pong between this process and a\n"
             "forked child, over n round trips.  spin: each side spins a few\n"
             "microseconds before it sleeps, so that it rarely does.");

static PyObject *futex_roundtrip(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *names[] = {"n", "spin", NULL};
    long n;
    int spin = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "l|p", names, &n, &spin)) return NULL;
    int spins = spin ? 256 : 0;
    if (n < 1) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "n must be positive");
        return NULL;
    }
    _Atomic uint32_t *seq = cp_shared_map(4096);
    if (seq == NULL) return cp_oserror("memfd_create");
    atomic_store(seq, 0);
    pid_t pid = fork(); /* no Python runs in the child: a raw fork is fine */
    if (pid < 0) {
        munmap((void *)seq, 4096);
        return cp_oserror("fork");
    }
    if (pid == 0) {
        for (long i = 0; i < n; i++) {
            turn(seq, (uint32_t)(2 * i + 1), spins);
            pass(seq);
        }
        _exit(0);
    }
    int64_t t0 = 0, t1 = 0;
    Py_BEGIN_ALLOW_THREADS
    t0 = cp_now_ns();
    for (long i = 0; i < n; i++) {
        pass(seq);
        turn(seq, (uint32_t)(2 * i + 2), spins);
    }
    t1 = cp_now_ns();
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    Py_END_ALLOW_THREADS
    munmap((void *)seq, 4096);
    return PyFloat_FromDouble((double)(t1 - t0) / 1e9 / (double)n);
}

PyDoc_STRVAR(memcpy_bandwidth_doc,
             "memcpy_bandwidth(nbytes, reps)\n--\n\n"
             "Bytes per second of memcpy between two buffers of nbytes, best of reps.");

static PyObject *memcpy_bandwidth(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_ssize_t n;
    int reps;
    if (!PyArg_ParseTuple(args, "ni", &n, &reps)) return NULL;
    if (n < 1 || reps < 1) {
        PyErr_SetString(PyExc_ValueError, "nbytes and reps must be positive");
        return NULL;
    }
    char *a = malloc((size_t)n), *b = malloc((size_t)n);
    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return PyErr_NoMemory();
    }
    int64_t best = INT64_MAX;
    Py_BEGIN_ALLOW_THREADS
    memset(a, 1, (size_t)n);
    memset(b, 2, (size_t)n); /* both faulted in: the copy is all that is timed */
    for (int r = 0; r < reps; r++) {
        int64_t t0 = cp_now_ns();
        memcpy(r % 2 ? a : b, r % 2 ? b : a, (size_t)n);
        int64_t dt = cp_now_ns() - t0;
        if (dt < best) best = dt;
    }
    Py_END_ALLOW_THREADS
    volatile char sink = a[n / 2] + b[n / 3];
    (void)sink;
    free(a);
    free(b);
    return PyFloat_FromDouble((double)n / ((double)best / 1e9));
}

static PyMethodDef floor_methods[] = {
    {"futex_roundtrip", (PyCFunction)(void (*)(void))futex_roundtrip,
     METH_VARARGS | METH_KEYWORDS, futex_roundtrip_doc},
    {"memcpy_bandwidth", memcpy_bandwidth, METH_VARARGS, memcpy_bandwidth_doc},
    {NULL, NULL, 0, NULL},
};

int cp_floor_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, floor_methods);
}
