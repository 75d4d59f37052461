"""glibc's malloc arenas: `etl run` caps them before its threads start (etl.cli.limit_malloc_arenas), so
memory freed by one thread is reused by the others instead of staying in an arena of its own. Checked on a
real process through glibc's own report (`malloc_info`: one <heap> per arena), never on RSS figures.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etl.cli import MALLOC_ARENAS

GLIBC = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# 8 threads allocate at the same moment (100 KB buffers: malloc'd, below the mmap threshold) and hold them
# while glibc describes its arenas; prints whether the cap was set and the number of arenas
PROBE = """
import ctypes, sys, tempfile, threading
from etl.cli import limit_malloc_arenas
applied = limit_malloc_arenas() if sys.argv[1] == "cap" else False
start, held, keep = threading.Barrier(8), threading.Barrier(9), []
def work():
    start.wait()
    keep.append([bytearray(100_000) for _ in range(20)])
    held.wait()
    held.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
held.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    arenas = open(f.name).read().count("<heap nr=")
held.wait()
for t in threads:
    t.join()
print(applied, arenas)
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=clean, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_threads_share_at_most_the_capped_arenas() -> None:
    """Uncapped, 8 threads allocating at once get an arena each; capped, all of them share MALLOC_ARENAS."""
    applied, arenas = probe("none")
    # the main thread's arena and one per thread (glibc allows 8 per core)
    assert applied == "False" and arenas > MALLOC_ARENAS
    assert probe("cap") == ("True", MALLOC_ARENAS)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_an_operators_malloc_arena_max_is_left_as_it_is() -> None:
    """MALLOC_ARENA_MAX in the environment is the operator's choice: glibc applies it, etl does not override."""
    assert probe("cap", MALLOC_ARENA_MAX="4") == ("False", 4)
