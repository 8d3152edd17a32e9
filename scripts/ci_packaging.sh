#!/usr/bin/env bash
# CI gate: the sdist, as a distribution would build it, offline.
#   1. Build the sdist from a copy of the tree (setuptools' PEP 517 hook, the
#      active venv's setuptools).
#   2. In a fresh venv whose only build tool is the oldest setuptools a current
#      distribution ships (Debian 12: 66.1.1; CPOOL_OLD_SETUPTOOLS to change),
#      unpack the sdist and install it from there with --no-build-isolation
#      --no-index: nothing is fetched, the setuptools at hand must build it.
#      (Editable, so that the tests, which import cpool from the tree they sit
#      in, find the extension there.)
#   3. Run the sdist's own test suite against it: its conftest.py, procs.py
#      and stubtest allowlist must have come along (MANIFEST.in).
set -uo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/ci_tree_copy.sh
. "$ROOT/scripts/ci_tree_copy.sh"
OLD=${CPOOL_OLD_SETUPTOOLS:-66.1.1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpool-sdist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

copy_tree "$ROOT" "$WORK/tree"
sdist=$(cd "$WORK/tree" && python -c '
import sys
from setuptools import build_meta
print(build_meta.build_sdist(sys.argv[1]))' "$WORK/dist" | tail -1) || { echo "sdist: build failed" >&2; exit 1; }
echo "sdist: $sdist"
tar -C "$WORK" -xzf "$WORK/dist/$sdist" || exit 1
unpacked="$WORK/${sdist%.tar.gz}"

python -m venv "$WORK/venv" || exit 1
VPY="$WORK/venv/bin/python"
# The test extra's requirements, as pyproject.toml lists them (fetched: only
# cpool's own build below is offline).
mapfile -t test_deps < <("$VPY" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
' "$unpacked/pyproject.toml") && [ ${#test_deps[@]} -gt 0 ] || { echo "sdist: no test extra" >&2; exit 1; }
"$VPY" -m pip install -q "setuptools==$OLD" wheel "${test_deps[@]}" || exit 1
echo "sdist: building with setuptools $("$VPY" -c 'import setuptools; print(setuptools.__version__)'), offline"
(cd "$unpacked" && "$VPY" -m pip install -q --no-build-isolation --no-index --no-deps -e .) || {
    echo "sdist: the offline build failed" >&2
    exit 1
}
(cd "$unpacked" && "$VPY" -m pytest -q -p no:cacheprovider) || { echo "sdist: its tests failed" >&2; exit 1; }
echo "sdist: built offline and tested"
