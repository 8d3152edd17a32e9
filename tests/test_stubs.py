"""cpool/_cpool.pyi agrees with the C extension it describes.

mypy.stubtest imports cpool._cpool (the extension built in place, found
through PYTHONPATH = the repository root) and compares it with the stub:
every public runtime name is in the stub and every stub name at runtime,
with the same kind (function, class, property, constant), the methods'
parameters as far as the runtime exposes them (__text_signature__), and
classes marked @final or @disjoint_base as the runtime says.  Known
disagreements that the stub cannot fix are in tests/stubtest_allowlist.txt,
each with its reason; an entry that no longer matches anything fails the
test, so the list only shrinks.

cpool's Python modules are imported by the check too (cpool._cpool's
package); mypy errors in them are not the stub's business and are ignored.
mypy is a test extra: a missing mypy fails, never skips.
"""
import os

from conftest import REPO_ROOT, run_python

MYPY_CONFIG = """\
[mypy]
cache_dir = {cache}
[mypy-cpool]
ignore_errors = True
[mypy-cpool.*]
ignore_errors = True
[mypy-cpool._cpool]
ignore_errors = False
"""


def test_the_stub_agrees_with_the_extension(tmp_path):
    try:
        import mypy.stubtest  # noqa: F401
    except ImportError as e:  # pragma: no cover - loud on purpose
        raise ImportError("the stub check needs mypy: pip install -e '.[test]'") from e
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(cache=tmp_path / "cache"))
    allowlist = os.path.join(REPO_ROOT, "tests", "stubtest_allowlist.txt")
    proc = run_python(module="mypy.stubtest", timeout=50, cwd=REPO_ROOT,
                      args=["cpool._cpool", "--mypy-config-file", config,
                            "--allowlist", allowlist])
    assert proc.returncode == 0, "stubtest:\n" + proc.stdout + proc.stderr
    assert "Success" in proc.stdout, proc.stdout


def test_the_stub_ships_with_the_package():
    pkg = os.path.join(REPO_ROOT, "cpool")
    assert os.path.exists(os.path.join(pkg, "_cpool.pyi"))
    assert os.path.exists(os.path.join(pkg, "py.typed"))
