#!/usr/bin/env bash
# CI gate: the whole test suite against the extension built under
# AddressSanitizer and UndefinedBehaviorSanitizer (CPOOL_SANITIZE).
#
# Usage: scripts/ci_sanitizers.sh [pytest arguments]   (default: the suite)
#
# The sanitizer build lives in a copy of the tree with its own venv (same
# interpreter as the main run), so it never replaces the normal build: its
# .so has the same name, and setuptools would even reuse stale objects.
#
# The compiler is clang-19 (Debian 12: apt-get install clang-19
# libclang-rt-19-dev), not gcc 12.  cpool forks its template from a parent
# that runs threads (collector threads, the caller's threads), and the
# template forks the workers and runs Python after the fork.  gcc 12's
# libasan takes no allocator locks around fork(), so a child forked while
# another thread was inside malloc deadlocks in its first malloc (seen here:
# the template stuck in PyOS_AfterFork_Child -> malloc -> asan's allocator
# mutex, the test run hung), and its reports from such children come out
# truncated.  LLVM's runtime locks its allocator around fork since LLVM 18
# (llvm/llvm-project#75290); glibc's malloc always has, so this is a
# sanitizer-runtime limit, not a cpool bug.  CPOOL_SAN_CC=gcc still selects
# gcc's libasan, to reproduce that.
#
# How it runs:
#   LD_PRELOAD=<asan runtime>  the runtime must be the first library loaded;
#                        a non-instrumented python only gets it by preloading.
#                        Every process the tests start inherits it: forked
#                        template and workers, `python -c` snippets, spawn and
#                        forkserver children.
#   PYTHONMALLOC=malloc  every Python object is a malloc block ASan watches,
#                        so a use after free or an overflow of an object (a
#                        refcount bug in our C) is reported; with pymalloc it
#                        would hide inside pymalloc's arenas.
#   ASAN_OPTIONS         detect_leaks=0: CPython leaks at exit by design (the
#                        valgrind gate looks for our leaks).  log_path: every
#                        process writes its reports to its own file, so a
#                        report from a forked worker (whose death a test may
#                        expect) cannot go unnoticed.
#   UBSAN_OPTIONS        print_stacktrace=1:halt_on_error=1, and the same
#                        log_path (the runtimes share it: the last one wins).
#   ASAN_SYMBOLIZER_PATH an llvm-symbolizer, for file:line in the stacks.
# The gate fails if pytest fails or if any process wrote a report.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/ci_tree_copy.sh
. "$ROOT/scripts/ci_tree_copy.sh"

SANITIZE=${CPOOL_SANITIZE:-address,undefined}
CC=${CPOOL_SAN_CC:-clang-19}
if ! command -v "$CC" >/dev/null; then
    echo "$CC not found (apt-get install clang-19 libclang-rt-19-dev): the gate cannot run" >&2
    exit 1
fi
case "$CC" in
    clang*) RUNTIME=$("$CC" -print-file-name=libclang_rt.asan-x86_64.so)
            LDFLAGS="-shared-libasan" ;;   # link the shared runtime, as preloaded
    *)      RUNTIME=$("$CC" -print-file-name=libasan.so)
            LDFLAGS="" ;;
esac
SYMBOLIZER=
for s in "$(dirname "$(command -v "$CC")")/llvm-symbolizer" /usr/lib/llvm-19/bin/llvm-symbolizer \
         "$(command -v llvm-symbolizer)"; do
    if [ -x "$s" ] && [ -f "$s" ]; then SYMBOLIZER=$(readlink -f "$s"); break; fi
done
if [ ! -e "$RUNTIME" ]; then
    echo "$CC has no shared ASan runtime ($RUNTIME): the gate cannot run" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpool-sanitizers.XXXXXX")
LOGS="$WORK/reports"
mkdir -p "$LOGS"
copy_tree "$ROOT" "$WORK/tree"
cd "$WORK/tree" || exit 1

echo "-- building with CC=$CC CPOOL_SANITIZE=$SANITIZE CPOOL_WERROR=1 in $WORK/tree"
python3 -m venv "$WORK/venv" || exit 1
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --upgrade pip || exit 1
CC=$CC LDFLAGS=$LDFLAGS CPOOL_SANITIZE=$SANITIZE CPOOL_WERROR=1 \
    "$PY" -m pip install -q -e '.[test]' || exit 1
SO=cpool/_cpool$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if ! nm -D "$SO" | grep __asan_report >/dev/null; then
    echo "$SO has no ASan instrumentation: not a sanitizer build" >&2
    exit 1
fi
echo "-- $SO is instrumented; runtime $RUNTIME"
if [ -n "$SYMBOLIZER" ]; then
    echo "-- reports symbolized by $SYMBOLIZER"
else
    echo "-- WARNING: no llvm-symbolizer found: report stacks will be module+offset only"
fi

echo "-- running the suite (LD_PRELOAD=$RUNTIME PYTHONMALLOC=malloc)"
start=$SECONDS
LD_PRELOAD=$RUNTIME \
PYTHONMALLOC=malloc \
ASAN_SYMBOLIZER_PATH=$SYMBOLIZER \
ASAN_OPTIONS="detect_leaks=0:log_path=$LOGS/report" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$LOGS/report" \
    "$PY" -m pytest -p no:cacheprovider -q "$@"
rc=$?
echo "-- suite: exit $rc in $((SECONDS - start)) s"

# A crash a test causes on purpose is not a finding: CPython's executor tests
# (tests/test_cpython_futures.py) kill workers with faulthandler._sigsegv(),
# which ASan reports as any SEGV.  Those reports are counted and dropped.
deliberate=0
for f in $(find "$LOGS" -type f); do
    if grep -q "in faulthandler_raise_sigsegv" "$f"; then
        rm -f "$f"
        deliberate=$((deliberate + 1))
    fi
done
[ "$deliberate" -gt 0 ] && echo "-- $deliberate deliberate crashes (faulthandler._sigsegv in a test) not counted"
reports=$(find "$LOGS" -type f | sort)
if [ -n "$reports" ]; then
    echo "-- sanitizer reports ($(echo "$reports" | wc -l) processes):" >&2
    for f in $reports; do
        echo "==== $f" >&2
        cat "$f" >&2
    done
    rc=1
else
    echo "-- no sanitizer report from any process"
fi
if [ $rc -ne 0 ]; then
    echo "sanitizers: FAILED (work tree kept in $WORK)" >&2
    exit 1
fi
rm -rf "$WORK"
echo "sanitizers: passed"
