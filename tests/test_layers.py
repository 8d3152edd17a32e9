"""The layering rules of docs/architecture.md, read off the sources: a test
that fails when a change breaks them (issue 12's guard).

- The core (events, rings, segments, the template loop, copies) has no
  Python in it: it neither includes Python.h nor asks cpool.h for it.
- C never imports the package: what it calls is handed to it
  (_cpool._set_hooks) as the package is imported.
- A constant both languages use is defined once, in cpool.h, and the package
  reads it from the module.
"""
import ast
import os
import re

import pytest

from cpool import _cpool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PKG = os.path.join(ROOT, "cpool")
CORE = ["copy.c", "dispatch.c", "ring.c", "shm.c", "sync.c", "template.c"]
# What runs in the template and the workers reads a plain cp_wconfig, never
# the parent's Core object.
WORKER_SIDE = ["spawn.c", "template.c", "worker.c"]
# What the module exports for the package to read (not VERSION, a string).
SHARED = sorted(n for n in dir(_cpool)
                if n.isupper() and isinstance(getattr(_cpool, n), int))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def c_sources():
    return {name: read(os.path.join(SRC, name))
            for name in sorted(os.listdir(SRC)) if name.endswith((".c", ".h"))}


def package_sources():
    return {name: read(os.path.join(PKG, name))
            for name in sorted(os.listdir(PKG)) if name.endswith(".py")}


@pytest.mark.parametrize("name", CORE)
def test_the_core_has_no_python(name):
    text = read(os.path.join(SRC, name))
    assert not re.search(r"^\s*#\s*define\s+CP_NEED_PYTHON\b", text, re.M), name
    assert not re.search(r"^\s*#\s*include\s*[<\"]Python\.h[>\"]", text, re.M), name


@pytest.mark.parametrize("name", WORKER_SIDE + CORE)
def test_the_worker_side_never_sees_the_parents_core(name):
    assert "CoreObject" not in read(os.path.join(SRC, name)), name


# The parent's side of a pool: seven files around one CoreObject, which call
# one another.  Every other file is below them or beside them.
PARENT = {"pool.c", "submit.c", "collect.c", "deliver.c", "death.c", "stats.c",
          "limits.c"}


def c_call_graph():
    """{file: files whose cp_ functions it calls}, with the parent's side as
    one node, "parent", and without module.c's registration calls
    (cp_*_add_*: the module's init fans out to every type)."""
    files = {n: t for n, t in c_sources().items() if n.endswith(".c")}
    node = {n: "parent" if n in PARENT else n for n in files}
    defined = {}
    for n, t in files.items():
        for m in re.finditer(r"^[A-Za-z_][\w \*]*?\b(cp_\w+)\s*\([^;{]*\)\s*\{", t, re.M):
            defined[m.group(1)] = node[n]
    graph = {v: set() for v in node.values()}
    for n, t in files.items():
        for f in set(re.findall(r"\b(cp_\w+)\s*\(", t)):
            if n == "module.c" and re.match(r"cp_\w+_add_\w+$", f):
                continue
            to = defined.get(f)
            if to is not None and to != node[n]:
                graph[node[n]].add(to)
    return graph


def test_the_c_files_form_no_circle():
    """module.c calls other files only to register their types, arena.c is
    below lock.c, lock.c below value.c, spawn.c below pool.c: no file calls
    back into a file that calls it."""
    graph = c_call_graph()
    assert {"arena.c", "dispatch.c", "wait.c", "parent"} <= set(graph)
    assert "dispatch.c" in graph["parent"]   # the graph does see calls

    def path(a, b, seen=()):
        return a == b or any(path(x, b, seen + (a,)) for x in graph[a] if x not in seen)

    for a in graph:
        for b in graph[a]:
            assert not path(b, a), f"{a} calls {b}, and {b} calls back into {a}"


def test_c_never_imports_the_package():
    for name, text in c_sources().items():
        assert not re.search(r'Import\w*\(\s*"cpool\b', text), \
            f"{name} imports the cpool package: hand it what it needs (_set_hooks)"


def test_the_exports_are_there():
    """The constants the package reads: if one goes, the checks below would
    check nothing."""
    assert {"OOB_MIN", "S_DEAD", "S_READY", "S_SPAWNED", "ST_OK",
            "TEMPLATE_FD_BOOT", "TEMPLATE_FD_SOCKS"} <= set(SHARED)


def test_shared_constants_are_defined_once_in_c():
    defines = "\n".join(c_sources().values())
    for macro in ("CP_OOB_MIN", "CP_TFD_CTL", "CP_TFD_EVENT", "CP_TFD_BOOT", "CP_TFD_SOCKS",
                  "SYS_pidfd_open"):
        n = len(re.findall(rf"^\s*#\s*define\s+{macro}\b", defines, re.M))
        assert n == 1, f"{macro} is defined {n} times in src/"


def test_the_package_does_not_write_a_shared_constant_again():
    """No module of the package gives a name of an exported constant (with
    or without a leading underscore) a value of its own: it reads the
    module's."""
    for name, text in package_sources().items():
        for node in ast.walk(ast.parse(text, name)):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id.lstrip("_") in SHARED:
                    uses_module = any(isinstance(n, ast.Name) and n.id == "_cpool"
                                      for n in ast.walk(node.value))
                    assert uses_module, \
                        f"{name}:{node.lineno}: {t.id} is written again, not read from _cpool"


def test_the_package_spells_no_worker_state_or_descriptor_number():
    """Worker states and the template's descriptor numbers are the module's:
    compared or unpacked as bare numbers they would drift from cpool.h."""
    for name, text in package_sources().items():
        assert not re.search(r"\bstate\s*(==|!=|in)\s*\(?\d", text), name
        assert not re.search(r"_fd\b.*=\s*\d+\s*,\s*\d+", text), name
