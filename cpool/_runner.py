"""Programs run unmodified on cpool: ``python -m cpool run`` and cpool.install().

install() makes the standard library's process pools cpool's for the whole
process, for code already imported as much as for code imported later: the
classes themselves are changed, not the names that lead to them.
``multiprocessing.pool.Pool`` and ``concurrent.futures.process.
ProcessPoolExecutor`` (the very classes; so every alias of them, the
``multiprocessing.Pool`` function, every context's ``.Pool`` method, which
call the class, and ``concurrent.futures.ProcessPoolExecutor``) get a
``__new__`` that, when the class itself is called, returns a new instance of
cpool's class (a subclass of it), whose ``__init__`` then runs with the same
arguments, as ``type.__call__`` does for any instance of the class called.
Subclasses (ThreadPool; a program's own subclass, which may rely on the
stdlib's internals) are left alone, isinstance() holds both ways, and the
original classes stay what they are (cpool.Pool subclasses one of them).

Children: install() also adds an entry to multiprocessing's spawn
preparation data (what a child started by spawn or forkserver, or cpool's
exec'ed template, loads before it runs anything of the program) whose
unpickling calls install() in the child.  Children forked inherit the
change.  Other interpreters (a subprocess running ``python`` again) see the
environment variable CPOOL_INSTALL=1 that ``python -m cpool run`` sets; the
one-line ``cpool-install.pth`` that an installed cpool puts into
site-packages calls install() at start-up when it is set.

run() is ``python -m cpool run``: a script, ``-m module`` or ``-c command``
run as python runs them (sys.argv, sys.path[0], a fresh ``__main__``, exit
code, signals, tracebacks without cpool's frames).
"""
import os
import sys
import threading

__all__ = ["install", "uninstall", "run"]

ENV = "CPOOL_INSTALL"
USAGE = ("usage: python -m cpool run script.py [args...]\n"
         "       python -m cpool run -m module [args...]\n"
         "       python -m cpool run -c command [args...]")
_HELP = USAGE + """

Run a Python program as python would (the same sys.argv, __main__, exit code,
signals and tracebacks), with multiprocessing.Pool, multiprocessing.pool.Pool,
every context's .Pool and concurrent.futures.ProcessPoolExecutor replaced by
cpool's, in the program, the libraries it imports and the processes it starts."""

_lock = threading.Lock()
_undo = None        # while installed: what uninstall() puts back


def installed():
    """True while install() is in effect."""
    return _undo is not None


def install():
    """Replace the standard library's process pools with cpool's in this
    process and in the children it starts (see the module's docstring).
    Idempotent; uninstall() undoes it."""
    global _undo
    with _lock:
        if _undo is not None:
            return
        import concurrent.futures.process as cf_process
        import multiprocessing.pool as mp_pool
        from multiprocessing import spawn

        from .pool import Pool
        undo = [_stand_in(mp_pool.Pool, Pool, _pool_context)]
        executor = _cpool_executor()
        if executor is not None:
            undo.append(_stand_in(cf_process.ProcessPoolExecutor, executor,
                                  _executor_context))
        undo.append(_hook_preparation(spawn))
        _undo = undo


def uninstall():
    """Undo install(): pools and executors made from now on are the
    standard library's again (those made meanwhile stay cpool's)."""
    global _undo
    with _lock:
        if _undo is None:
            return
        for undo in reversed(_undo):
            undo()
        _undo = None


def _cpool_executor():
    """cpool.futures.ProcessPoolExecutor, or None while there is no such
    module (only that: any other error in it is raised)."""
    try:
        from .futures import ProcessPoolExecutor
    except ModuleNotFoundError as e:
        if e.name != __package__ + ".futures":
            raise
        return None
    return ProcessPoolExecutor


def _pool_context(args, kwargs):
    """The context a multiprocessing.pool.Pool called with (args, kwargs)
    would use when given none: multiprocessing's (what the program set with
    set_start_method, else multiprocessing's default), as its Pool does.
    None when it is given one."""
    if (args[4] if len(args) > 4 else kwargs.get("context")) is not None:
        return None
    import multiprocessing
    return multiprocessing.get_context()


def _executor_context(args, kwargs):
    """The same for concurrent.futures.ProcessPoolExecutor: with no
    mp_context, the stdlib's takes multiprocessing's default context
    (spawn's when max_tasks_per_child is given, from 3.11)."""
    if (args[1] if len(args) > 1 else kwargs.get("mp_context")) is not None:
        return None
    import multiprocessing
    per_child = args[4] if len(args) > 4 else kwargs.get("max_tasks_per_child")
    if per_child is not None and sys.version_info >= (3, 11):
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context()


# While installed: {standard library class: (cpool's class, a function of
# the call's arguments giving the context to default to, or None)}.
_targets = {}


def _stand_in(std, ours, default_context):
    """Make calls of the class `std` itself make an instance of `ours` (a
    subclass of it), initialized with the same arguments; returns the undo.

    The __new__ put on `std` stays after the undo, inert: deleting it would
    not give the class its old constructor back (CPython keeps the slot it
    installed, and object.__new__ then refuses the call's arguments)."""
    if std.__dict__.get("__new__") is not _NEW:
        std.__new__ = _NEW
    _targets[std] = (ours, default_context)

    def undo():
        _targets.pop(std, None)
    return undo


def _new(cls, *args, **kwargs):
    """The __new__ of the replaced standard library classes."""
    target = _targets.get(cls)      # the class itself: subclasses (ThreadPool,
    if target is None:              # cpool's, a program's own) are left alone
        return object.__new__(cls)
    ours, default_context = target
    obj = ours.__new__(ours, *args, **kwargs)   # type.__call__ runs ours.__init__ next
    if default_context is not None:
        context = default_context(args, kwargs)
        if context is not None:     # (cpool.Pool's own default is fork, always)
            obj._mp_default_context = context
    return obj


_NEW = staticmethod(_new)


# What an entry of the preparation data runs in the child as it is loaded
# (before spawn.prepare() gives the child the parent's sys.path): cpool from
# the child's own path, else from where the parent's came from.
_CHILD = """\
import sys
try:
    try:
        import cpool
    except ImportError:
        sys.path.insert(0, {root!r})
        import cpool
    cpool.install()
except Exception as e:
    sys.stderr.write("cpool: the standard library's pools are not replaced in "
                     "process %d: %r\\n" % (__import__("os").getpid(), e))
"""


class _InstallInChild:
    """An entry of multiprocessing's spawn preparation data: unpickled, it
    runs install() in the child.  It unpickles as a call of exec (not of a
    function of cpool's), so that a child that cannot import cpool yet
    still loads its preparation data."""

    def __reduce__(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return exec, (_CHILD.format(root=root), {})


def _hook_preparation(spawn):
    """Add _InstallInChild to every spawn.get_preparation_data() (the
    callers, multiprocessing's Popen classes and cpool's template, look the
    function up in the module each time); returns the undo."""
    original = spawn.get_preparation_data

    def get_preparation_data(name):
        data = original(name)
        data["cpool_install"] = _InstallInChild()     # spawn.prepare() ignores the key
        return data

    get_preparation_data.__wrapped__ = original
    spawn.get_preparation_data = get_preparation_data

    def undo():
        if spawn.get_preparation_data is get_preparation_data:
            spawn.get_preparation_data = original
    return undo


# -- python -m cpool run --

class _Usage(Exception):
    """A bad command line: the message, then exit status 2."""


def run(argv):
    """``python -m cpool run ARGV``: run the program ARGV names, as python
    would, with cpool installed.  Returns 0 when it ends normally; its
    SystemExit and uncaught exceptions leave as they would leave python."""
    try:
        kind, target, args = _parse(argv)
    except _Usage as e:
        print(f"python -m cpool run: {e}\n{USAGE}", file=sys.stderr)
        return 2
    if kind == "help":
        print(_HELP)
        return 0
    if kind == "script" and not _is_importer_path(target):
        import io
        try:
            with io.open_code(target) as f:
                source = f.read()
        except OSError as e:    # as python says it
            print(f"python -m cpool run: can't open file {os.path.abspath(target)!r}: "
                  f"[Errno {e.errno}] {e.strerror}", file=sys.stderr)
            return 2
    install()
    os.environ[ENV] = "1"      # python run again by the program installs too (.pth)
    try:
        if kind == "module":
            sys.argv = ["-m", *args]    # runpy puts the module's file first, as python -m
            _fresh_main()
            _run_module(target, True)
        elif kind == "command":
            sys.argv = ["-c", *args]
            _set_path0("")
            main = _fresh_main()
            from importlib.machinery import BuiltinImporter
            main.__loader__ = BuiltinImporter
            exec(compile(target, "<string>", "exec", dont_inherit=True), main.__dict__)
        elif _is_importer_path(target):    # a directory or zip file: its __main__.py
            sys.argv = [target, *args]
            sys.path.insert(0, os.path.abspath(target))
            if not _safe_path():
                del sys.path[1]         # python -m cpool's own first entry, the cwd
            _fresh_main()
            _run_module("__main__", False)
        else:
            sys.argv = [target, *args]
            _set_path0(os.path.dirname(os.path.realpath(target)))
            path = os.path.abspath(target)
            main = _fresh_main()
            from importlib.machinery import SourceFileLoader
            main.__file__ = path
            main.__cached__ = None
            main.__loader__ = SourceFileLoader("__main__", path)
            exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        _report_as_python(e)
        raise
    return 0


def _parse(argv):
    """(kind, target, args): kind "script", "module", "command" or "help"."""
    if not argv:
        raise _Usage("no program given")
    first = argv[0]
    if first in ("-h", "--help"):
        return "help", None, ()
    if first in ("-m", "-c"):
        if len(argv) < 2:
            raise _Usage(f"argument expected for the {first} option")
        return ("module" if first == "-m" else "command"), argv[1], argv[2:]
    if first.startswith("-"):
        raise _Usage(f"unknown option {first!r}")
    return "script", first, argv[1:]


def _is_importer_path(path):
    """Whether python runs `path` as a directory or zip file holding a
    __main__.py (rather than as a script)."""
    if os.path.isdir(path):
        return True
    import zipfile
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _safe_path():
    """Whether python was told not to put a script's directory (or the
    current one) first on sys.path (-P, PYTHONSAFEPATH, -I)."""
    return bool(getattr(sys.flags, "safe_path", 0) or sys.flags.isolated)


def _set_path0(entry):
    """sys.path[0] as python would have it for the program: `entry` in
    place of the current directory that ``python -m cpool`` put there."""
    if not _safe_path():
        sys.path[0] = entry


def _fresh_main():
    """A new module __main__ in sys.modules, as the interpreter makes it, in
    place of python -m cpool's own: the program's globals are its own, and
    spawned children find the program (not cpool) as the main module."""
    import builtins
    import types
    old = sys.modules["__main__"]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    if "__annotations__" in vars(old):
        main.__annotations__ = {}
    sys.modules["__main__"] = main
    return main


def _run_module(name, alter_argv):
    """What python -m does (and python DIR, with "__main__"): runpy's own
    entry point, which the interpreter itself calls by this name; it runs
    the module in sys.modules["__main__"]'s namespace."""
    import runpy
    runpy._run_module_as_main(name, alter_argv)


def _report_as_python(exc):
    """Let the uncaught `exc` go on to the interpreter (which prints it with
    sys.excepthook, exits 1, or by SIGINT for a KeyboardInterrupt, after
    running atexit), but shown without python -m cpool's frames: the next
    call of sys.excepthook (the interpreter's, right after) gets the
    traceback from the program's first frame on, as python would show it."""
    tb = exc.__traceback__
    mine = globals()
    while tb is not None and tb.tb_frame.f_globals is mine:
        tb = tb.tb_next
    hook = sys.excepthook

    def excepthook(etype, value, traceback):
        if sys.excepthook is excepthook:
            sys.excepthook = hook
        if value is exc:
            traceback = tb
            value.__traceback__ = tb
            sys.last_traceback = tb
        hook(etype, value, traceback)

    sys.excepthook = excepthook
