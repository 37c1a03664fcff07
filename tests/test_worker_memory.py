"""A worker hands memory it has freed back to the system (``free_memory_releaser``), so its
RSS follows what it holds, not the most it ever held."""

import subprocess
import sys

import pytest

from traitortrack.server import free_memory_releaser

SCRIPT = """
import psutil
from traitortrack.server import free_memory_releaser

rss = lambda: psutil.Process().memory_info().rss / 2**20
kept, chunks = [], [bytearray(2048) for _ in range(40_000)]  # ~80 MB from malloc, not pymalloc
kept = chunks[::50]  # what stays alive pins the heap's pages around the freed ones
del chunks
before = rss()
free_memory_releaser()()
print(before, rss())
"""


def test_freed_heap_memory_goes_back_to_the_system_when_released():
    if free_memory_releaser() is None:
        pytest.skip("not glibc: no malloc_trim here")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True, text=True)
    before, after = (float(v) for v in out.stdout.split())
    assert before - after > 40, f"RSS {before:.1f} MB -> {after:.1f} MB"
