"""Callables the standard pickler cannot send by reference (lambdas,
closures, nested functions, functions defined interactively), sent by value
with cloudpickle when it is installed (``pip install cpool[cloudpickle]``).

Only the callable: a task's arguments and results keep cpool's own paths.
The pool pickles a callable as it always did; only when that pickle fails,
and the callable alone is what fails, does it pickle the call again with the
callable in a ``_ByValue``, whose pickle is ``pickle.loads`` of
cloudpickle's bytes: the worker loads it with the plain unpickler and gets
the function itself (cloudpickle's output needs only cloudpickle importable
there).  So the path of a picklable callable costs nothing more, and an
unpicklable argument gives the error it always gave.

One case pickles fine and still fails: under spawn or forkserver the
workers' ``__main__`` is not the parent's (the template runs the main
module's source again as ``__mp_main__``, or nothing at all for ``python
-c``, stdin, a REPL), so a function of ``__main__`` sent by reference is
missing there when it was defined under ``if __name__ == "__main__":`` or
interactively.  For those pools, such a function goes by value from the
first call (main_by_value, which reads the main module's source once to
know what the template will define).
"""
import os
import pickle
import sys
from types import FunctionType

__all__ = ["by_value", "main_by_value", "main_is_gone", "not_a_file"]

HINT = "pip install cpool[cloudpickle]"


class _ByValue:
    """A callable pickled by cloudpickle; unpickles to the callable itself."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    def __reduce__(self):
        return pickle.loads, (self.blob,)


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def by_value(func, exc, dumps=None):
    """What to send instead of func, whose call failed to pickle with exc:
    func wrapped to travel by value.  Raises exc itself when func is not at
    fault (it pickles alone: an argument failed, or exc is no pickling error
    at all); without cloudpickle, an error of exc's type saying how to get
    it, chained to exc.  dumps: how func alone is pickled normally (the
    initializer of an exec'ed template: multiprocessing's ForkingPickler)."""
    if not isinstance(exc, Exception) or isinstance(func, _ByValue):
        raise exc
    try:
        (dumps or _dumps)(func)
    except Exception:
        pass
    else:
        raise exc       # the callable is fine: the arguments' error stands
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        hinted = _hinted(exc, func)
        if hinted is exc:
            raise exc
        raise hinted from exc
    return _ByValue(cloudpickle.dumps(func, protocol=5))


def main_by_value(func, found):
    """func, wrapped to travel by value if it is a callable of __main__ that
    the workers of an exec'ed template (spawn, forkserver) will not find in
    their own __main__ (main_is_gone) and cloudpickle is installed; else
    func itself (by reference, as before).  found: a set of the pool's, of
    the functions of __main__ the workers have, so that the next call of
    one is a set lookup (only module globals: the set stays bounded)."""
    if getattr(func, "__module__", None) != "__main__" or isinstance(func, _ByValue):
        return func
    name = getattr(func, "__qualname__", None)
    if not isinstance(name, str):
        name = getattr(type(func), "__qualname__", "")
    names = _main_names()
    if names is not None and name.partition(".")[0] in names:
        main = sys.modules.get("__main__")
        if type(func) is FunctionType and getattr(main, name, None) is func:
            found.add(func)
        return func
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        return func
    return _ByValue(cloudpickle.dumps(func, protocol=5))


def main_is_gone(method):
    """True when the workers of a pool of this start method may lack
    functions of the parent's __main__: an exec'ed template (spawn,
    forkserver) that imports no main module (``python -c``, stdin, a REPL),
    or whose main module's source binds names under its
    ``if __name__ == "__main__":`` block (main_by_value then says which
    callables go by value).  False otherwise, and then a pool checks
    nothing per call."""
    if method == "fork":
        return False
    names = _main_names()
    if names is None:
        return False        # the source cannot be read: by reference, as before
    if not names:
        return True
    return _main_cache.get(("guarded", _main_path()), True)


def not_a_file(path):
    """True for a main module's __file__ that names no file to run again
    (None; "<stdin>" for a program read from standard input)."""
    if path is None:
        return True
    name = os.path.basename(path)
    return name.startswith("<") and name.endswith(">")


_main_cache = {}


def _main_names():
    """The names an exec'ed template's __main__ binds, as multiprocessing's
    spawn prepares it: the top-level names of the parent's main module's
    source, its ``if __name__ == "__main__":`` blocks left out (the
    template runs the source as ``__mp_main__``); an empty set when the
    template imports no main (``python -c``, stdin, a REPL, ``python -m
    pkg``); None when the source cannot be read (then by reference, as
    before).  Read once per main file."""
    path = _main_path()
    if path is None:
        return frozenset()
    if not isinstance(path, str):
        return None
    try:
        return _main_cache[path]
    except KeyError:
        pass
    names = None
    try:
        import ast
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
        names = frozenset(_bound(tree.body))
        # Whether the main guard binds anything the template will not:
        # if not, no callable of __main__ can be missing there.
        _main_cache["guarded", path] = bool(
            frozenset(_bound(tree.body, guards=True)) - names)
    except (OSError, SyntaxError, ValueError):
        pass
    _main_cache[path] = names
    return names


def _main_path():
    """The file an exec'ed template runs as its __main__ (the parent's main
    module's), or None when it runs none."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if spec_name is not None:
        if spec_name == "__main__" or spec_name.endswith(".__main__"):
            return None
    elif not_a_file(path):
        return None
    return path


def _is_main_guard(test):
    import ast
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = (test.left, test.comparators[0])
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def _bound(body, guards=False):
    """The names a block of module-level statements may bind: every branch
    counted, but the body of a main guard (unless guards)."""
    import ast
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                yield (a.asname or a.name).partition(".")[0]
        elif not guards and isinstance(node, ast.If) and _is_main_guard(node.test):
            yield from _bound(node.orelse)
        else:
            for _, value in ast.iter_fields(node):
                for x in value if isinstance(value, list) else [value]:
                    if isinstance(x, ast.stmt):
                        yield from _bound([x], guards)
                    elif isinstance(x, ast.excepthandler):
                        if x.name:
                            yield x.name
                        yield from _bound(x.body, guards)
                    elif isinstance(x, ast.AST):    # targets, with-as, walrus
                        for n in ast.walk(x):
                            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                                yield n.id


def _dumps(obj):
    return pickle.dumps(obj, 5)


def _hinted(exc, func):
    """An exception of exc's type (so existing except clauses still catch
    it) that says how to send func; exc itself if that type cannot be made
    from a message."""
    what = getattr(func, "__qualname__", None) or type(func).__name__
    msg = (f"{exc} ({what!r} cannot be pickled by reference; cpool sends such a "
           f"callable by value with cloudpickle: {HINT})")
    try:
        return type(exc)(msg)
    except Exception:
        return exc
