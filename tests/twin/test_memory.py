"""twin.memory: with keep_freed_memory a freed block is reused without page faults; without
it, glibc hands it back and the next use faults every page in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from twin.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def touch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(200 * 2**20 // 8)  # 200 MB, every page written
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first, second = touch(), touch()
print(first, second)
"""


def _faults(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    first, second = (int(x) for x in out.stdout.split())
    return first, second


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_faults_and_released_memory_is_not() -> None:
    first, second = _faults("keep")
    assert first > 0
    assert second * 10 < first, (first, second)  # the second use finds the block in the heap
    first, second = _faults("default")
    assert second * 10 > first, (first, second)  # glibc gave it back: faulted in again
