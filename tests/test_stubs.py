"""cpool's stubs agree with the modules they describe.

mypy.stubtest imports cpool and each of its modules (the extension built in
place, found through PYTHONPATH = the repository root) and compares them
with their stubs, cpool/*.pyi: the package's (__init__.pyi), the public
modules' (pool, results, imap, errors, sharedctypes) and the extension's
(_cpool.pyi).  Every public runtime name is in the stub and every stub name
at runtime, with the same kind (function, class, property, constant), the
parameters as far as the runtime exposes them (for the extension,
__text_signature__), __all__ the same, and classes marked @final or
@disjoint_base as the runtime says.  Known disagreements that the stubs
cannot fix are in tests/stubtest_allowlist.txt, each with its reason; an
entry that no longer matches anything fails the test (stubtest's default),
so the list only shrinks.

mypy reads the stubs only: the modules' .py files are excluded (the
private ones, which have no stub, are not stubtest's business; a public
module without one is reported, and test_every_public_module_has_a_stub
says which may).  mypy is a test extra: a missing mypy fails, never skips.
"""
import os

from conftest import REPO_ROOT, run_python

MYPY_CONFIG = """\
[mypy]
cache_dir = {cache}
exclude = (^|/)cpool/[^/]*\\.py$
"""

ALLOWLIST = os.path.join(REPO_ROOT, "tests", "stubtest_allowlist.txt")
# What mypy 1.x (the newest for Python 3.9) reports besides, from its older
# typeshed: used only under it, where its entries must all match too.
ALLOWLIST_MYPY1 = os.path.join(REPO_ROOT, "tests", "stubtest_allowlist_mypy1.txt")


def allowlists():
    import mypy.version
    major = int(mypy.version.__version__.split(".")[0])
    return [ALLOWLIST] + ([ALLOWLIST_MYPY1] if major < 2 else [])
# Public modules with no stub, and why (stubtest reports them: the allowlist
# names them too).
UNTYPED = {
    "__main__": "python -m cpool: a demonstration, no API",
    "bench": "python -m cpool.bench: the benchmark's command line, no API",
}


def test_the_stubs_agree_with_the_modules(tmp_path):
    try:
        import mypy.stubtest  # noqa: F401
    except ImportError as e:  # pragma: no cover - loud on purpose
        raise ImportError("the stub check needs mypy: pip install -e '.[test]'") from e
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(cache=tmp_path / "cache"))
    # "cpool": the package and every module in it.
    proc = run_python(module="mypy.stubtest", timeout=50, cwd=REPO_ROOT,
                      args=["cpool", "--mypy-config-file", config,
                            *[a for path in allowlists() for a in ("--allowlist", path)]])
    assert proc.returncode == 0, "stubtest:\n" + proc.stdout + proc.stderr
    assert "Success" in proc.stdout, proc.stdout


def test_the_stubs_ship_with_the_package():
    pkg = os.path.join(REPO_ROOT, "cpool")
    assert os.path.exists(os.path.join(pkg, "_cpool.pyi"))
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        assert '"*.pyi"' in f.read()


def test_every_public_module_has_a_stub():
    pkg = os.path.join(REPO_ROOT, "cpool")
    modules = {name[:-3] for name in os.listdir(pkg) if name.endswith(".py")}
    stubs = {name[:-4] for name in os.listdir(pkg) if name.endswith(".pyi")}
    # stubtest's idea of private: a leading underscore, dunders excepted.
    public = {m for m in modules if not m.startswith("_") or m.endswith("__")}
    assert public - stubs == set(UNTYPED), "public modules without a stub"
    assert stubs <= modules | {"_cpool"}, "stubs of no module"


def test_every_allowlist_entry_says_why():
    """An entry is a line of its own with its reason in a comment on the
    same line or in the comment lines right above it (in both lists)."""
    for path in (ALLOWLIST_MYPY1, ALLOWLIST):
        with open(path) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            entry, _, reason = line.partition("#")
            if not entry.strip():
                continue
            above = (lines[i - 1].lstrip("#").strip()
                     if i and lines[i - 1].startswith("#") else "")
            assert reason.strip() or above, f"allowlist entry without a reason: {line!r}"
    for name, why in UNTYPED.items():
        assert any(line.partition("#")[0].strip() == f"cpool.{name}" for line in lines), (
            f"cpool.{name} ({why}) has no stub: the allowlist must name it")
