/* spawn.c: the template as a fresh interpreter (the "spawn" and "forkserver"
 * start methods), and os.fork()'s warning about threads for "fork".
 *
 * Under the fork method the parent forks the template (pool.c).  Under spawn
 * and forkserver it execs a new interpreter instead, with posix_spawn: none
 * of the parent's threads, held locks or fork hooks reach the template.  The
 * child gets the control segment's memfd as fd 3, the request eventfd as
 * fd 4, cpool._template's boot memfd as fd 5, the workers' ends of the
 * slots' socketpairs as fds 6 to 5 + n, and the other descriptors
 * cpool._template asks for (the resource tracker's pipe, descriptors that
 * the pickled initargs refer to) after them; every other descriptor keeps
 * its close-on-exec flag.
 * SIGINT starts blocked: a Ctrl-C while the interpreter boots stays pending
 * and is dropped when the template ignores it, as a forked template does.
 *
 * The new interpreter runs cpool._template.main, which prepares itself as
 * multiprocessing's spawn does, unpickles the pool's initializer and its
 * arguments, and calls _template_main here: map the control segment and run
 * the same loop as a forked template (cp_template_main), forking the workers
 * from itself.  If it cannot get that far, _template_abort tells the parent
 * why, as an initializer error of slot 0 with every slot dead: the pool is
 * broken with a reason instead of waiting for workers forever.
 */
#define CP_NEED_PYTHON
#include "cpool.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

/* The child's control segment; then the eventfd, the boot memfd, the
 * slots' sockets, then the rest of spec's (cpool.h's CP_TFD_*, which
 * cpool/_template.py reads from the module). */
#define FIRST_FD CP_TFD_CTL
_Static_assert(CP_TFD_EVENT == FIRST_FD + 1 && CP_TFD_BOOT == FIRST_FD + 2 &&
                   CP_TFD_SOCKS == FIRST_FD + 3,
               "cp_exec_template puts ctl, eventfd, boot, sockets in that order");

Py_ssize_t cp_count_threads(void)
{
    int fd;
    do {
        fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    /* Field 2, the command, is parenthesised and may hold spaces: count the
     * fields from the last ')'.  Field 20 is num_threads. */
    char *p = strrchr(buf, ')');
    if (p == NULL) return 0;
    p++;
    for (int field = 3; field <= 20; field++) {
        if (*p != ' ') return 0;
        p++;
        if (field == 20) return (Py_ssize_t)strtol(p, NULL, 10);
        while (*p != '\0' && *p != ' ') p++;
    }
    return 0;
}

int cp_warn_fork_with_threads(Py_ssize_t os_threads)
{
#if PY_VERSION_HEX < 0x030C0000
    (void)os_threads;
    return 0;
#else
    /* As CPython's posixmodule.c (warn_about_fork_with_threads): the OS's
     * count, else the threading module's (an undercount, best effort). */
    Py_ssize_t n = os_threads;
    if (n <= 0) {
        PyObject *name = PyUnicode_FromString("threading");
        PyObject *threading = name ? PyImport_GetModule(name) : NULL;
        Py_XDECREF(name);
        if (threading == NULL) {
            PyErr_Clear();
            return 0;
        }
        PyObject *active = PyObject_GetAttrString(threading, "_active");
        PyObject *limbo = PyObject_GetAttrString(threading, "_limbo");
        Py_DECREF(threading);
        if (active != NULL && limbo != NULL)
            n = PyMapping_Length(active) + PyMapping_Length(limbo);
        PyErr_Clear();
        Py_XDECREF(active);
        Py_XDECREF(limbo);
    }
    if (n <= 1) return 0;
    int rc = PyErr_WarnFormat(PyExc_DeprecationWarning, 1,
                              "This process (pid=%d) is multi-threaded, use of %s() may "
                              "lead to deadlocks in the child.",
                              (int)getpid(), "fork");
#if PY_VERSION_HEX >= 0x030F0000
    return rc; /* 3.15 raises a warning made an error (gh-135427) */
#else
    if (rc < 0) PyErr_Clear(); /* 3.12-3.14 never raise it */
    return 0;
#endif
#endif
}

pid_t cp_exec_template(int ctl_fd, int evfd, const int *wsock, int n, PyObject *spec)
{
    PyObject *exe = NULL, *argl, *fdl, *args = NULL, *fds = NULL;
    PyObject **argb = NULL;
    char **argv = NULL;
    int *src = NULL;
    Py_ssize_t nargs = 0, nfd = 0;
    pid_t pid = -1;
    int fa_ok = 0, at_ok = 0, rc;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;

    if (!PyArg_ParseTuple(spec, "O&OO;spawn spec", PyUnicode_FSConverter, &exe, &argl,
                          &fdl))
        return -1;
    args = PySequence_Fast(argl, "argv must be a sequence");
    fds = args ? PySequence_Fast(fdl, "fds must be a sequence") : NULL;
    if (fds == NULL) goto done;
    nargs = PySequence_Fast_GET_SIZE(args);
    if (PySequence_Fast_GET_SIZE(fds) < 1) {
        PyErr_SetString(PyExc_ValueError, "spawn spec: no boot descriptor");
        goto done;
    }
    nfd = 2 + n + PySequence_Fast_GET_SIZE(fds);
    argb = PyMem_Calloc((size_t)nargs + 1, sizeof *argb);
    argv = PyMem_Calloc((size_t)nargs + 1, sizeof *argv);
    src = PyMem_Calloc((size_t)nfd, sizeof *src);
    if (argb == NULL || argv == NULL || src == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(args, i), &argb[i]))
            goto done;
        argv[i] = PyBytes_AS_STRING(argb[i]);
    }
    /* ctl, eventfd, spec's first (the boot memfd), the slots' sockets,
     * then the rest of spec's: as CP_TFD_* say. */
    src[0] = ctl_fd;
    src[1] = evfd;
    for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(fds); k++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, k));
        if (fd == -1 && PyErr_Occurred()) goto done;
        if (fd < 0 || fd > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "bad file descriptor in spawn spec");
            goto done;
        }
        src[k == 0 ? 2 : 2 + n + k] = (int)fd;
    }
    for (int i = 0; i < n; i++) src[3 + i] = wsock[i];

    /* Each source k goes to FIRST_FD + k in the child, without its
     * close-on-exec flag.  A target may be another source's number, so
     * everything is first moved above both ranges, then down, then the
     * high copies closed.  (dup2(fd, fd) clearing the flag is glibc 2.29+.) */
    int hi = FIRST_FD + (int)nfd;
    for (Py_ssize_t k = 0; k < nfd; k++)
        if (src[k] >= hi) hi = src[k] + 1;
    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) goto spawn_error;
    fa_ok = 1;
    for (Py_ssize_t k = 0; k < nfd; k++)
        if ((rc = posix_spawn_file_actions_adddup2(&fa, src[k], hi + (int)k)) != 0)
            goto spawn_error;
    for (Py_ssize_t k = 0; k < nfd; k++)
        if ((rc = posix_spawn_file_actions_adddup2(&fa, hi + (int)k,
                                                   FIRST_FD + (int)k)) != 0)
            goto spawn_error;
    for (Py_ssize_t k = 0; k < nfd; k++)
        if ((rc = posix_spawn_file_actions_addclose(&fa, hi + (int)k)) != 0)
            goto spawn_error;
    if ((rc = posix_spawnattr_init(&at)) != 0) goto spawn_error;
    at_ok = 1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    if ((rc = posix_spawnattr_setsigmask(&at, &mask)) != 0 ||
        (rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK)) != 0)
        goto spawn_error;
    /* With the GIL: environ is read in the child before it execs, and a
     * Python thread could be changing it (os.environ) meanwhile.  glibc's
     * posix_spawn returns once the child has exec'ed (or failed to). */
    rc = posix_spawn(&pid, PyBytes_AS_STRING(exe), &fa, &at, argv, environ);
    if (rc != 0) {
        pid = -1;
        goto spawn_error;
    }
    CP_DEBUG("exec'ed template %d: %s", (int)pid, PyBytes_AS_STRING(exe));
    goto done;
spawn_error:
    errno = rc;
    cp_oserror("posix_spawn");
    pid = -1;
done:
    if (fa_ok) posix_spawn_file_actions_destroy(&fa);
    if (at_ok) posix_spawnattr_destroy(&at);
    for (Py_ssize_t i = 0; argb != NULL && i < nargs; i++) Py_XDECREF(argb[i]);
    PyMem_Free(argb);
    PyMem_Free(argv);
    PyMem_Free(src);
    Py_XDECREF(args);
    Py_XDECREF(fds);
    Py_XDECREF(exe);
    return pid;
}

/* ---- in the exec'ed template ---------------------------------------------- */

/* Map the control segment the parent made, from its memfd.  NULL with
 * errno (EINVAL: not a control segment of this build, or not a memfd the
 * parent made: shm.c's checks). */
static cp_ctl *map_ctl(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) return NULL;
    if ((size_t)sb.st_size < sizeof(cp_ctl) ||
        cp_seg_check(fd, 0, sizeof(cp_ctl)) != NULL) {
        errno = EINVAL;
        return NULL;
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return NULL;
    cp_ctl *ctl = p;
    if (ctl->magic != CP_MAGIC || ctl->size != (uint64_t)sb.st_size) {
        munmap(p, (size_t)sb.st_size);
        errno = EINVAL;
        return NULL;
    }
    return ctl;
}

PyDoc_STRVAR(template_main_doc,
             "_template_main(ctl_fd, ev_fd, socks_fd, parent, processes, maxtasks,\n"
             "               initializer, initargs, bootstrap, pack_error)\n--\n\n"
             "Run an exec'ed template: fork the pool's workers on request, reap them,\n"
             "and go with the parent.  Never returns (raises if it cannot start).");

static PyObject *template_main(PyObject *module, PyObject *args)
{
    int ctl_fd, ev_fd, socks_fd, parent, n;
    unsigned long long maxtasks;
    PyObject *init, *initargs, *bootstrap, *pack_error;
    if (!PyArg_ParseTuple(args, "iiiiiKOO!OO", &ctl_fd, &ev_fd, &socks_fd, &parent, &n,
                          &maxtasks, &init, &PyTuple_Type, &initargs, &bootstrap,
                          &pack_error))
        return NULL;
    cp_ctl *ctl = map_ctl(ctl_fd);
    if (ctl == NULL) return cp_oserror("mmap (the control segment)");
    if (ctl->nslots != (uint32_t)n || ctl->parent_pid != parent) {
        munmap(ctl, ctl->size);
        PyErr_SetString(PyExc_RuntimeError, "cpool: not this pool's control segment");
        return NULL;
    }
    /* The mapping is what the workers inherit; the eventfd and the sockets
     * stay ours and theirs (workers are forked, not exec'ed: close-on-exec
     * keeps them from their own children). */
    close(ctl_fd);
    if (fcntl(ev_fd, F_SETFD, FD_CLOEXEC) != 0) return cp_oserror("fcntl");
    int *wsock = malloc((size_t)n * sizeof(int));
    if (wsock == NULL) return PyErr_NoMemory();
    for (int i = 0; i < n; i++) {
        wsock[i] = socks_fd + i;
        if (fcntl(wsock[i], F_SETFD, FD_CLOEXEC) != 0) {
            free(wsock);
            return cp_oserror("fcntl");
        }
    }
    /* What a worker reads (worker.c): it lives as long as this process,
     * which never returns to Python. */
    static cp_wconfig cfg;
    cfg = (cp_wconfig){.st = cp_get_state(module),
                       .ctl = ctl,
                       .n = n,
                       .maxtasks = maxtasks,
                       .wsock = wsock,
                       .initializer = Py_NewRef(init),
                       .initargs = Py_NewRef(initargs),
                       .bootstrap = Py_NewRef(bootstrap),
                       .pack_error = Py_NewRef(pack_error)};
    /* SIGINT was blocked since the exec: ignore it (a pending one is
     * dropped), then unblock it, so workers start with a clean mask. */
    signal(SIGINT, SIG_IGN);
    sigset_t intr;
    sigemptyset(&intr);
    sigaddset(&intr, SIGINT);
    sigprocmask(SIG_UNBLOCK, &intr, NULL);
    cp_template_main(ctl, ev_fd, (pid_t)parent, cp_spawn_worker, &cfg);
}

PyDoc_STRVAR(template_abort_doc,
             "_template_abort(ctl_fd, report)\n--\n\n"
             "The exec'ed template could not start: post `report` (pickled (exception,\n"
             "traceback text), as a worker's initializer error) on slot 0, mark every\n"
             "slot dead, and wake the parent.  The caller then exits.");

static PyObject *template_abort(PyObject *module, PyObject *args)
{
    (void)module;
    int ctl_fd;
    PyObject *report;
    if (!PyArg_ParseTuple(args, "iO!", &ctl_fd, &PyBytes_Type, &report)) return NULL;
    cp_ctl *ctl = map_ctl(ctl_fd);
    if (ctl == NULL) return cp_oserror("mmap (the control segment)");
    if (ctl->nslots > 0) {
        cp_ring *r = cp_result_ring(ctl, 0);
        cp_rechdr h = {.kind = CP_K_INITERR};
        size_t len = (size_t)PyBytes_GET_SIZE(report);
        /* Too long for the ring: an empty report (the parent says the
         * error could not be described; the template printed it). */
        if (len > cp_ring_inline_max(r)) len = 0;
        cp_ring_try_put(r, &h, PyBytes_AS_STRING(report), len);
        for (uint32_t i = 0; i < ctl->nslots; i++) {
            cp_slot *s = &ctl->slots[i];
            atomic_store(&s->pid, 0);
            atomic_store(&s->wstatus, 1 << 8); /* "exited with code 1" */
            atomic_store(&s->state, CP_S_DEAD);
        }
    }
    cp_event_signal(&ctl->results);
    munmap(ctl, ctl->size);
    Py_RETURN_NONE;
}

static PyMethodDef spawn_methods[] = {
    {"_template_main", template_main, METH_VARARGS, template_main_doc},
    {"_template_abort", template_abort, METH_VARARGS, template_abort_doc},
    {NULL, NULL, 0, NULL},
};

int cp_spawn_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, spawn_methods);
}
