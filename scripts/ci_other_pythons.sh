#!/usr/bin/env bash
# CI gate: the other CPythons.  For every pyenv CPython 3.9-3.13 on this
# machine except the main one (whose full suite .ci/run already ran), in its
# own venv made from that interpreter: build and install cpool from a copy of
# the tree with the README's command, `pip install -e '.[test]'`, warnings as
# errors, then run CPython's Pool test classes (tests/test_cpython_pool.py,
# under each start method, and tests/test_cpython_shared.py) against it,
# CPython's executor tests against cpool.ProcessPoolExecutor
# (tests/test_cpython_futures.py, with CPOOL_CPYTHON_FUTURES=required: a
# version whose tests cannot be loaded fails; tests/test_support_compat.py
# checks what lets a newer version's run) and cpool's own
# (tests/test_futures.py), and the checks that differ most between interpreter versions: the start
# methods and os.fork()'s thread warning, which 3.12+ gives
# (tests/test_start_methods.py), reference leaks (tests/test_refleaks.py)
# and the stub against the extension (tests/test_stubs.py).  Every version runs;
# the summary at the end shows each one's result, and any failure (or no
# version found) fails the gate.
#
# Which executor tests: the interpreter's own test.test_concurrent_futures
# (pyenv's 3.9, 3.10 and 3.13 have it), else its distribution's test suite
# (/usr/lib/pythonX.Y/test: Debian's libpython3.11-testsuite, which .ci/run
# installs for the main Python), else the next minor version's package from
# its pyenv CPython, through CPOOL_CPYTHON_TESTS: pyenv's 3.12.1 has none of
# its own and Debian 12 ships no 3.12, so 3.12 runs 3.13's (3.13.0's here),
# as tests/test_cpython_futures.py says.  Each version's line says which.
#
# Why a copy and an editable install: the tests import `cpool` from the tree
# they sit in (pytest's rootdir, and conftest's PYTHONPATH for snippets), so
# the tree must hold the extension built for the interpreter that runs them.
# Editable installs of several Pythons into one copy put differently named
# .so files side by side (_cpool.cpython-39-..., -310-, ...); the copy keeps
# them, and their build/ directories, out of the main tree.
#
# Environment: CPOOL_PYTHONS="3.9 3.12" to choose versions (major.minor);
# CPOOL_GATE_TESTS="tests" to run other test files (here: the whole suite).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/ci_tree_copy.sh
. "$ROOT/scripts/ci_tree_copy.sh"

VERSIONS_DIR=${PYENV_ROOT:-$HOME/.pyenv}/versions
MAIN=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
TESTS=${CPOOL_GATE_TESTS:-tests/test_cpython_pool.py tests/test_cpython_shared.py tests/test_cpython_futures.py tests/test_support_compat.py tests/test_futures.py tests/test_start_methods.py tests/test_refleaks.py tests/test_stubs.py}

pythons=()
for dir in $(ls -d "$VERSIONS_DIR"/3.* 2>/dev/null | sort -V); do
    [ -x "$dir/bin/python3" ] || continue
    mm=$("$dir/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    case "$mm" in 3.9|3.10|3.11|3.12|3.13) ;; *) continue ;; esac
    if [ -n "${CPOOL_PYTHONS:-}" ]; then
        case " $CPOOL_PYTHONS " in *" $mm "*) ;; *) continue ;; esac
    elif [ "$mm" = "$MAIN" ]; then
        continue
    fi
    pythons+=("$dir/bin/python3")
done
if [ ${#pythons[@]} -eq 0 ]; then
    echo "no other CPython 3.9-3.13 found under $VERSIONS_DIR: the gate cannot run" >&2
    exit 1
fi

# executor_tests PYTHON: prints the folder to give CPOOL_CPYTHON_TESTS (empty:
# the interpreter's own tests or its distribution's), and says which on stderr.
executor_tests() {
    local py=$1 mm next dir
    mm=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if "$py" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("test.test_concurrent_futures") is None)' 2>/dev/null; then
        echo "CPython's executor tests: Python $mm's own" >&2
        return 0
    fi
    if [ -e "/usr/lib/python$mm/test/test_concurrent_futures.py" ] ||
        [ -d "/usr/lib/python$mm/test/test_concurrent_futures" ]; then
        echo "CPython's executor tests: Python $mm's, from /usr/lib/python$mm/test" >&2
        return 0
    fi
    next="${mm%.*}.$((${mm#*.} + 1))"
    for dir in $(ls -d "$VERSIONS_DIR/$next".* 2>/dev/null | sort -rV); do
        if [ -d "$dir/lib/python$next/test/test_concurrent_futures" ]; then
            echo "CPython's executor tests: Python $mm lacks its own; $(basename "$dir")'s (the next version's), from $dir/lib/python$next/test" >&2
            echo "$dir/lib/python$next/test"
            return 0
        fi
    done
    echo "CPython's executor tests: Python $mm has none of its own, /usr/lib/python$mm/test has none, and no pyenv CPython $next has them" >&2
    return 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpool-pythons.XXXXXX")
copy_tree "$ROOT" "$WORK/tree"
cd "$WORK/tree"
export CPOOL_WERROR=1

summary=()
failed=0
for py in "${pythons[@]}"; do
    ver=$("$py" -c 'import platform; print(platform.python_version())')
    echo
    echo "---- Python $ver ($py)"
    start=$SECONDS
    venv="$WORK/venv-$ver"
    result=PASS
    if ! "$py" -m venv "$venv"; then
        result="FAIL (venv)"
    elif ! "$venv/bin/python" -m pip install -q --upgrade pip; then
        result="FAIL (pip upgrade)"
    elif ! "$venv/bin/python" -m pip install -q -e '.[test]'; then
        result="FAIL (build/install with -Werror)"
    elif ! "$venv/bin/python" -c '
import sys, cpool, cpool._cpool as c
print("cpool", cpool.__version__, "for", sys.version.split()[0], "from", c.__file__)
assert c.__file__.startswith(sys.argv[1]), "not the copy'"'"'s build"
' "$WORK/tree/cpool/"; then
        result="FAIL (import)"
    elif ! suite=$(executor_tests "$py"); then
        result="FAIL (no CPython executor tests)"
    # shellcheck disable=SC2086
    elif ! CPOOL_CPYTHON_FUTURES=required CPOOL_CPYTHON_TESTS=$suite \
            "$venv/bin/python" -m pytest -p no:cacheprovider -q $TESTS; then
        result="FAIL (tests)"
    fi
    [ "$result" = PASS ] || failed=1
    summary+=("$(printf 'Python %-8s %-40s %4ds' "$ver" "$result" $((SECONDS - start)))")
done

echo
echo "---- other Pythons: results"
printf '%s\n' "${summary[@]}"
if [ $failed -ne 0 ]; then
    echo "other Pythons: FAILED (work tree kept in $WORK)" >&2
    exit 1
fi
rm -rf "$WORK"
echo "other Pythons: all passed"
