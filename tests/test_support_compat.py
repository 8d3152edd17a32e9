"""tests/support_compat.py, which lets tests/test_cpython_futures.py run a
newer CPython's executor tests (3.13's on 3.12): which version a test
folder is of, what it adds to test.support (in a fresh interpreter, since it
changes test.support for good), and a borrowed package whose modules need
those names, imported by cpool's workers under each start method."""
import sys
import sysconfig

import pytest

import support_compat
from conftest import START_METHODS, run_scenario


def test_suite_version_reads_the_test_folder(tmp_path):
    pkg = tmp_path / "lib" / "python3.13" / "test" / "test_concurrent_futures"
    pkg.mkdir(parents=True)
    assert support_compat.suite_version(str(pkg)) == (3, 13)
    mod = tmp_path / "lib" / "python3.9" / "test" / "test_concurrent_futures.py"
    mod.parent.mkdir(parents=True)
    mod.write_text("")
    assert support_compat.suite_version(str(mod)) == (3, 9)
    link = tmp_path / "elsewhere"
    link.symlink_to(pkg)
    assert support_compat.suite_version(str(link)) == (3, 13)   # links resolved
    # Anywhere else (a source checkout's Lib/test): this interpreter's.
    for other in (tmp_path / "Lib" / "test" / "test_concurrent_futures",
                  tmp_path / "python3.13" / "tests" / "test_concurrent_futures",
                  tmp_path / "python3.x" / "test" / "test_concurrent_futures"):
        other.mkdir(parents=True)
        assert support_compat.suite_version(str(other)) == sys.version_info[:2]


def test_add_missing_adds_what_is_missing_with_its_meaning_here():
    out = run_scenario("""
        import inspect, sysconfig, unittest
        from test import support
        import support_compat

        before = dict(vars(support))
        had_thread = "thread" in inspect.signature(support.check_sanitizer).parameters
        check_before = support.check_sanitizer
        support_compat.add_missing()
        support_compat.add_missing()        # twice: the same
        replaced = {n for n, v in before.items() if getattr(support, n) is not v}
        added = set(vars(support)) - set(before)
        print(sorted(added), sorted(replaced), had_thread)

        flags = (sysconfig.get_config_var("CFLAGS") or "") + " " + (
            sysconfig.get_config_var("CONFIG_ARGS") or "")
        tsan = "-fsanitize=thread" in flags or "--with-thread-sanitizer" in flags
        gil_disabled = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
        assert support.Py_GIL_DISABLED is gil_disabled
        assert support.check_sanitizer(thread=True) is tsan
        for kind in ("address", "memory", "ub"):
            assert support.check_sanitizer(**{kind: True}) == check_before(**{kind: True})
        try:
            support.check_sanitizer()
        except ValueError:
            pass
        else:
            raise AssertionError("check_sanitizer() named no sanitizer and said nothing")

        ran = []

        class T(unittest.TestCase):
            @support.requires_gil_enabled("why")
            def test_gil(self):
                ran.append("gil")

            @support.skip_if_sanitizer("why", thread=True)
            def test_tsan(self):
                ran.append("tsan")

        result = unittest.TextTestRunner(stream=open("/dev/null", "w")).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(T))
        assert result.wasSuccessful()
        assert sorted(ran) == sorted(["gil"] * (not gil_disabled) + ["tsan"] * (not tsan)), ran
        print("ok")
    """)
    if sys.version_info >= (3, 13):
        # 3.13's test.support has all of it: nothing is added or replaced.
        assert out.splitlines() == ["[] [] True", "ok"]
    else:
        assert out.splitlines() == [
            "['Py_GIL_DISABLED', 'requires_gil_enabled'] "
            "['check_sanitizer', 'skip_if_sanitizer'] False", "ok"]


@pytest.mark.parametrize("method", START_METHODS)
def test_a_borrowed_package_imports_in_every_worker(method, tmp_path):
    # A "newer" test package whose modules take from test.support what
    # support_compat adds; a task of it, which workers started by spawn and
    # forkserver import by module name, through the package of ours that
    # borrows it (as tests/test_cpython_futures.py writes it).
    newer = tmp_path / "lib" / "python3.99" / "test" / "newer_tests"
    newer.mkdir(parents=True)
    (newer / "__init__.py").write_text(
        "from test.support import requires_gil_enabled\nTHE_INIT_RAN = True\n")
    (newer / "tasks.py").write_text(
        "import os\n"
        "from test import support\n"
        "from test.support import Py_GIL_DISABLED\n"
        "@support.skip_if_sanitizer('not under TSan', thread=True)\n"
        "def where(x):\n"
        "    return os.getpid(), Py_GIL_DISABLED, x * 2\n")
    ours = tmp_path / "top" / "newer_tests"
    ours.mkdir(parents=True)
    (ours / "__init__.py").write_text(
        f"import support_compat\nsupport_compat.borrow(globals(), {str(newer)!r})\n")
    out = run_scenario(f"""
        import multiprocessing, os, sys
        import cpool

        if __name__ == "__main__":
            # Here only: the workers find the package on the sys.path they
            # are given, as they find tests/test_cpython_futures.py's.
            sys.path.append({str(tmp_path / "top")!r})
            import newer_tests, newer_tests.tasks
            assert newer_tests.THE_INIT_RAN and newer_tests.__path__ == [{str(newer)!r}]
            ctx = multiprocessing.get_context({{method}})
            with cpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                results = list(ex.map(newer_tests.tasks.where, range(4)))
            assert all(pid != os.getpid() for pid, _, _ in results), results
            print([r[1:] for r in results])
    """, method=method, tmp_path=tmp_path)
    gil_disabled = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert out.strip() == repr([(gil_disabled, 2 * x) for x in range(4)])
