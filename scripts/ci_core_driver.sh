#!/usr/bin/env bash
# CI gate: the Python-free core of src/ (events, rings, segments, copies, the
# template loop) tested from plain C by tests/c/core_driver, built twice and
# run twice: under ThreadSanitizer, and under AddressSanitizer with
# UndefinedBehaviorSanitizer.
#
# Usage: scripts/ci_core_driver.sh [driver arguments]   (default: every test;
#        core_driver -l lists them, a section or test name runs only it)
#
# Why: the pytest suite reaches the core only through Python, a worker and
# a template; a race in a ring or a lost wake-up shows there as a rare hang.
# Here each contract of cpool.h is checked directly, with threads and
# forked processes on both ends, and TSan sees every access of the threads
# (the suite's TSan-less ASan build cannot see races at all).
#
# CORE_SRCS are the core's files (tests/test_layers.py's CORE): no Python.h,
# so they link into a plain C program, which this gate also proves.  A new
# core file is one word here; its tests are a new tests/c/test_<section>.c,
# which the driver picks up by itself (check.h).
#
# The compiler is clang-19 when present (the other gates' compiler, see
# scripts/ci_sanitizers.sh; apt-get install clang-19 libclang-rt-19-dev),
# else clang, else gcc (CORE_CC=... chooses).  Flags: -std=c11 -Wall
# -Wextra -Werror, -O1 -g (sanitizers want optimised code with frames).
#
# ThreadSanitizer maps its shadow memory at fixed addresses; with the
# high-entropy ASLR of newer kernels (vm.mmap_rnd_bits = 32, as Ubuntu 24.04
# sets) a binary may land where the shadow should be and TSan dies with
# "unexpected memory mapping" (LLVM 18+ re-execs itself without ASLR then,
# older runtimes and gcc 12's do not).  So the TSan run goes under
# `setarch -R` (no ASLR for that process only), when setarch works here; no
# sysctl is changed on the machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CORE_SRCS="src/sync.c src/ring.c src/shm.c src/copy.c src/template.c src/dispatch.c"
DRIVER_SRCS=$(ls tests/c/*.c)
CFLAGS="-std=c11 -Wall -Wextra -Werror -O1 -g -fno-omit-frame-pointer -pthread -Isrc -Itests/c"
TIMEOUT_S=300 # per run: far above the ~20 s it takes; a hang is caught by the driver first

CC=${CORE_CC:-}
if [ -z "$CC" ]; then
    for c in clang-19 clang gcc; do
        if command -v "$c" >/dev/null; then CC=$c; break; fi
    done
fi
if [ -z "$CC" ] || ! command -v "$CC" >/dev/null; then
    echo "no C compiler (clang-19, clang or gcc; apt-get install clang-19 libclang-rt-19-dev)" >&2
    exit 1
fi
SYMBOLIZER=
for s in "$(dirname "$(command -v "$CC")")/llvm-symbolizer" /usr/lib/llvm-19/bin/llvm-symbolizer \
         "$(command -v llvm-symbolizer || true)"; do
    if [ -x "$s" ] && [ -f "$s" ]; then SYMBOLIZER=$(readlink -f "$s"); break; fi
done
# Reports with file:line: any llvm-symbolizer does (Debian's clang-19 has
# none of its own; /usr/bin's may be another version's).
SYM_TSAN= SYM_ASAN=()
if [ -n "$SYMBOLIZER" ]; then
    SYM_TSAN=":external_symbolizer_path=$SYMBOLIZER"
    SYM_ASAN=(ASAN_SYMBOLIZER_PATH="$SYMBOLIZER")
fi
NOASLR=()
if setarch "$(uname -m)" -R true 2>/dev/null; then NOASLR=(setarch "$(uname -m)" -R); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpool-core-driver.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "-- $($CC --version | head -1); core: $CORE_SRCS"
echo "-- symbolizer: ${SYMBOLIZER:-none found (reports without file:line)}"
echo "-- kernel $(uname -r), vm.mmap_rnd_bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?'); TSan run under: ${NOASLR[*]:-(as is: setarch -R does not work here)}"

failed=()
# run NAME SANITIZE_FLAGS ENV... -- runs the driver built with those flags
run() {
    local name=$1 san=$2
    shift 2
    local bin="$WORK/core_driver-$name" start=$SECONDS rc=0
    echo
    echo "== $name: building ($san)"
    # shellcheck disable=SC2086  # word splitting of the flag and file lists is meant
    if ! $CC $CFLAGS $san -o "$bin" $DRIVER_SRCS $CORE_SRCS; then
        failed+=("$name (build)")
        return
    fi
    local built=$SECONDS
    echo "== $name: built in $((built - start)) s; running"
    env "$@" timeout "$TIMEOUT_S" "$bin" "${ARGS[@]}" || rc=$?
    echo "== $name: exit $rc, ran in $((SECONDS - built)) s"
    [ $rc -eq 0 ] || failed+=("$name")
}

ARGS=("$@")
# halt_on_error: the first report ends the run with a failure (exitcode 66
# is TSan's default); second_deadlock_stack: both stacks of a lock inversion.
run tsan "-fsanitize=thread" \
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1$SYM_TSAN" \
    "${NOASLR[@]}"
# detect_leaks: the driver frees what it makes, so a leak of the core's
# (a descriptor is not memory: the tests count those) is an error here.
run asan-ubsan "-fsanitize=address,undefined -fno-sanitize-recover=all" \
    "${SYM_ASAN[@]}" \
    ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo
if [ ${#failed[@]} -ne 0 ]; then
    echo "core driver: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "core driver: passed under TSan and ASan+UBSan"
