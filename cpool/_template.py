"""The template process of a pool whose start method is "spawn" or "forkserver".

Under those methods the template is not forked from the parent but is a
fresh interpreter (sys.executable, exec'ed by cpool._cpool with
posix_spawn), so a parent that already runs threads is safe.  It prepares
itself as multiprocessing's spawned children do (sys.path, the working
directory, the main module imported as ``__mp_main__``: the same
``if __name__ == "__main__"`` rules), unpickles the pool's initializer and
its arguments (by reference, as multiprocessing pickles them), and then runs
the same C loop as a forked template, forking every worker from itself.

``spec()`` runs in the parent, ``main()`` in the new interpreter.  What
travels (``_cpool.TEMPLATE_FD_*``): fds 3 and 4 are the pool's control segment
and request eventfd, fds 6 to 5 + processes the workers' ends of the slots'
socketpairs that segments travel on (the C side puts them there); fd 5 is a
memfd holding two pickles, written before
the exec so that Pool() never waits for the child to read: first the
preparation data with the parent's pid and the resource tracker's fd, then
the pool's (processes, maxtasks, initializer, initargs, bootstrap,
pack_error), pickled while multiprocessing considers itself "spawning", so
locks, queues and connections in initargs pickle as they do for
multiprocessing's own spawned processes.  An initializer that does not
pickle by reference (a lambda, a closure) travels by value with
cloudpickle (cpool._cloud).
"""
import os
import pickle

from . import _cpool

__all__ = ["spec", "main"]

_ENTRY = "from cpool._template import main; main()"


class _Launch:
    """What multiprocessing's reducers ask of a spawning Popen: a descriptor
    to hand to the child (Connection, DupFd) is recorded, and named by the
    number it will have there."""

    def __init__(self, boot, nslots):
        from multiprocessing.popen_spawn_posix import _DupFd
        self.DupFd = _DupFd
        self.fds = [boot]   # the child's TEMPLATE_FD_BOOT; then its slots' sockets
        self._first = _cpool.TEMPLATE_FD_SOCKS + nslots

    def duplicate_for_child(self, fd):
        self.fds.append(fd)
        return self._first + len(self.fds) - 2


def spec(method, processes, maxtasks, initializer, initargs, bootstrap, pack_error):
    """(executable, argv, fds) for cpool._cpool.Core's spawn argument.

    Raises as multiprocessing would: RuntimeError when called while this
    process is itself still importing its main module as a spawned child
    (the missing ``if __name__ == "__main__"`` guard), a pickling error when
    the initializer or its arguments cannot travel."""
    from multiprocessing import context, resource_tracker, spawn, util
    from multiprocessing.reduction import ForkingPickler
    prep = spawn.get_preparation_data("CPoolTemplate")
    from ._cloud import not_a_file
    if not_a_file(prep.get("init_main_from_path")):
        # A program read from stdin: its __file__ "<stdin>" is no file to run
        # again (multiprocessing's spawned child fails on it); such a main
        # is not imported, as for `python -c` (its functions go by value).
        prep.pop("init_main_from_path", None)
    boot = _cpool._memfd("cpool-template-boot")   # as every memfd of cpool's
    try:
        launch = _Launch(boot, processes)
        tracker = launch.duplicate_for_child(resource_tracker.getfd())
        with open(boot, "wb", closefd=False) as f:
            context.set_spawning_popen(launch)   # the authkey pickles only then
            try:
                ForkingPickler(f, 5).dump((prep, os.getpid(), tracker, method))
                cfg_at = f.tell()
                try:
                    ForkingPickler(f, 5).dump((processes, maxtasks, initializer,
                                               tuple(initargs), bootstrap, pack_error))
                except Exception as e:
                    # A lambda or a closure as the initializer: by value
                    # (cpool._cloud; the template's plain unpickler loads it).
                    from ._cloud import by_value
                    initializer = by_value(initializer, e, ForkingPickler.dumps)
                    f.seek(cfg_at)
                    f.truncate()
                    ForkingPickler(f, 5).dump((processes, maxtasks, initializer,
                                               tuple(initargs), bootstrap, pack_error))
            finally:
                context.set_spawning_popen(None)
        os.lseek(boot, 0, os.SEEK_SET)
    except BaseException:
        os.close(boot)
        raise
    # The child imports cpool before its sys.path is the parent's: the
    # directory this cpool comes from goes first, so it is this very build.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); {_ENTRY}"
    exe = spawn.get_executable()
    argv = [exe, *util._args_from_interpreter_flags(), "-c", code, "--cpool-template"]
    return os.fsdecode(exe), argv, launch.fds


def spawn_done(spec_):
    """Close the parent's copy of the boot memfd (the child has its own)."""
    os.close(spec_[2][0])


def main():
    """The exec'ed template: prepare, unpickle, run the C loop (never returns)."""
    ctl_fd, ev_fd, boot_fd, socks_fd = (_cpool.TEMPLATE_FD_CTL, _cpool.TEMPLATE_FD_EVENT,
                                        _cpool.TEMPLATE_FD_BOOT, _cpool.TEMPLATE_FD_SOCKS)
    try:
        with open(boot_fd, "rb") as f:
            prep, parent, tracker, method = pickle.load(f)
            from multiprocessing import process, resource_tracker, spawn
            resource_tracker._resource_tracker._fd = tracker
            me = process.current_process()
            me._inheriting = True       # a Pool() at import time raises, as in multiprocessing
            try:
                spawn.prepare(prep)
                cfg = pickle.load(f)
            finally:
                del me._inheriting
        processes, maxtasks, initializer, initargs, bootstrap, pack_error = cfg
        _cpool._template_main(ctl_fd, ev_fd, socks_fd, parent, processes, maxtasks,
                              initializer, initargs, bootstrap, pack_error)  # never returns
    except BaseException as e:
        _abort(_cpool, ctl_fd, method if "method" in locals() else "spawn", e)


def _abort(_cpool, ctl_fd, method, exc):
    """Tell the parent why this template could not start (its pool is then
    broken with that reason), and leave."""
    import traceback
    try:
        from ._worker import _pack_error
        err = RuntimeError(f"cpool's template process (start method {method!r}) could "
                           f"not load the pool's initializer, its arguments or the main "
                           f"module: {exc!r}")
        err.__cause__ = exc
        _cpool._template_abort(ctl_fd, _pack_error(err))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)
