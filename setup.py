"""Build of cpool's C extension, cpool._cpool.

Switches, from the environment:
  CPOOL_WERROR=1                       warnings are errors (CI and development)
  CPOOL_DEBUG=1                        -O0 -g, asserts on
  CPOOL_SANITIZE=address,undefined     build under the sanitizers
"""
import os
import re

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_py import build_py as _build_py

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "cpool", "__init__.py"), encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

SOURCES = [
    "src/module.c",    # init, module state, pickling helpers
    "src/pool.c",      # the parent: the Core type, start, waiting
    "src/submit.c",    # the parent: tasks pickled and queued
    "src/dispatch.c",  # the parent: the task queue, which worker runs what (no Python)
    "src/collect.c",   # the parent: draining results, the collector thread, the token
    "src/deliver.c",   # the parent: outcomes into the Python result objects
    "src/death.c",     # the parent: a worker died (held tasks, resends, respawn)
    "src/limits.c",    # the parent: the watch over running tasks' memory caps
    "src/stats.c",     # the parent: pool.stats(), a snapshot of the counters
    "src/template.c",  # the template process: forks and reaps the workers
    "src/spawn.c",     # the template as a fresh interpreter (spawn, forkserver)
    "src/worker.c",    # the worker loop: unpickle, call, pickle, post
    "src/arena.c",     # shared arenas: where Value/Array and the locks live
    "src/value.c",     # the Synchronized wrapper of Value/Array
    "src/lock.c",      # Lock/RLock: robust process-shared mutexes
    "src/floor.c",     # the benchmark's floor: futex round trip, memcpy
    "src/pack.c",      # pickles for the rings: inline, or out of band in a segment
    "src/ring.c",      # single-producer single-consumer record rings
    "src/sync.c",      # futex waits and wake-ups, deadlines
    "src/wait.c",      # waiting with the GIL released: timeouts, Ctrl-C
    "src/shm.c",       # the control segment and large-record segments
    "src/copy.c",      # large copies into fresh memory, in two halves at once
]

cflags = ["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden",
          f'-DCPOOL_VERSION="{VERSION}"']
ldflags = []
if os.environ.get("CPOOL_WERROR") == "1":
    cflags.append("-Werror")
if os.environ.get("CPOOL_DEBUG") == "1":
    cflags += ["-O0", "-g", "-UNDEBUG"]
sanitize = os.environ.get("CPOOL_SANITIZE")
if sanitize:
    cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    ldflags += [f"-fsanitize={sanitize}"]

# MIT.  setuptools 77+ wants an SPDX expression (its older TOML form stops
# being accepted in 2027); older ones, as distributions ship them (Debian
# 12: 66), know only the plain field.  Hence here, not in pyproject.toml.
_ST = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
LICENSE = {"license_expression": "MIT"} if _ST >= (77, 0) else {"license": "MIT"}


class build_py(_build_py):
    """Also puts cpool-install.pth at the top of the build, whence it lands
    in site-packages: at start-up it runs cpool.install() when the
    environment says CPOOL_INSTALL=1 (python -m cpool run sets it for the
    programs it runs: so python run again from them is cpool's too), and
    costs an environment lookup otherwise."""

    PTH = "cpool-install.pth"

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, self.PTH), os.path.join(self.build_lib, self.PTH),
                       preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, self.PTH)]


setup(
    version=VERSION,
    **LICENSE,
    cmdclass={"build_py": build_py},
    ext_modules=[
        Extension(
            "cpool._cpool",
            sources=SOURCES,
            depends=["src/cpool.h"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            libraries=["rt", "pthread"],
        )
    ],
)
