#!/usr/bin/env bash
# CI gate: cppcheck's static analysis of src/ must be clean.
#
#   --enable=warning,style,performance,portability   every check but
#        unusedFunction (PyInit__cpool is called by the interpreter, which
#        cppcheck cannot see) and information; errors are always on.
#   --library=python,posix,gnu   cppcheck's models of the Python C API (so
#        it knows that Py_RETURN_NONE returns, which Py* calls allocate...),
#        POSIX and glibc.  Python's own headers are not given: cppcheck is
#        not meant to parse the system headers they pull in.
#   -DCPOOL_VERSION="0"   what setup.py defines (module.c insists).
#   --suppress=readdirCalled   "use readdir_r": that advice is obsolete.
#        glibc's readdir is thread-safe for distinct DIR streams, and
#        readdir_r is deprecated (glibc 2.24, POSIX.1-2024); shm.c's sweep
#        uses its own DIR stream.
#   --inline-suppr   a finding judged false in the code can be silenced
#        there, with a "// cppcheck-suppress id" comment saying why.
# Any finding fails the gate (--error-exitcode=1).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
if ! command -v cppcheck >/dev/null; then
    echo "cppcheck not found (apt-get install cppcheck): the gate cannot run" >&2
    exit 1
fi
echo "-- $(cppcheck --version) on $(ls src/*.c src/*.h | wc -l) files of src/"
cppcheck --quiet --error-exitcode=1 --std=c11 \
    --enable=warning,style,performance,portability \
    --library=python,posix,gnu \
    -I src -DCPOOL_VERSION='"0"' \
    --suppress=missingIncludeSystem --suppress=missingInclude \
    --suppress=readdirCalled --inline-suppr \
    src/
rc=$?
if [ $rc -ne 0 ]; then
    echo "cppcheck: FAILED (findings above, file:line: severity: message [id])" >&2
    exit 1
fi
echo "cppcheck: clean"
