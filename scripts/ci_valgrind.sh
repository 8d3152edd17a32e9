#!/usr/bin/env bash
# CI gate: valgrind's memcheck over scripts/valgrind_smoke.py (a Pool's
# map/apply/imap..., a Value, an Array, a Lock, an RLock).
#
# Usage: scripts/ci_valgrind.sh [python]   (default: python, the active venv's,
# with cpool installed: .ci/run's normal build, which has -g from Python's
# CFLAGS, so reports have file:line)
#
#   PYTHONMALLOC=malloc         every Python object is a malloc block memcheck
#                               sees (pymalloc would hide them in its arenas).
#   --leak-check=full --errors-for-leak-kinds=definite
#                               a definite leak is an error; "possibly lost"
#                               and "still reachable" are CPython's normal
#                               state at exit and are not shown.
#   --trace-children=no         no exec'ed child is followed (the smoke starts
#                               none).  Forked children are a different thing:
#                               a fork()ed process stays under valgrind (the
#                               template, and the workers it forks, run under
#                               memcheck like the parent), which is why
#   --log-file=.../vg.%p        gives each process its own log.  A worker's
#                               errors would not change the parent's exit
#                               status, so every log is checked.
#   --suppressions=scripts/valgrind.supp   CPython's own reports, explained
#                               there; none names a cpool frame.
# The gate fails if the smoke fails, valgrind's exit status says errors, or
# any process's log reports an error.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-python}
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/cpool-valgrind.XXXXXX")

start=$SECONDS
PYTHONMALLOC=malloc timeout 600 valgrind -q \
    --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --trace-children=no --num-callers=40 \
    --suppressions="$ROOT/scripts/valgrind.supp" --log-file="$LOGS/vg.%p" \
    "$PY" "$ROOT/scripts/valgrind_smoke.py"
rc=$?
echo "-- valgrind: exit $rc in $((SECONDS - start)) s, $(find "$LOGS" -type f | wc -l) processes"

bad=0
for f in "$LOGS"/vg.*; do
    # -q leaves only errors (and the leak summary of processes with leaks)
    # in a log; an empty log is a clean process.
    if grep -qE '(Invalid (read|write|free)|uninitialised|Syscall param|Mismatched free|overlap|definitely lost in loss record|Process terminating)' "$f"; then
        bad=1
        echo "==== $f" >&2
        cat "$f" >&2
    fi
done
if [ $rc -ne 0 ] || [ $bad -ne 0 ]; then
    echo "valgrind: FAILED (logs in $LOGS)" >&2
    exit 1
fi
rm -rf "$LOGS"
echo "valgrind: no error and no definite leak in any process"
