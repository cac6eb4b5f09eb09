"""The software prefetch of the numba kernels (twin/kernels/prefetch.py)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from twin.kernels.prefetch import prefetch


@njit(cache=True, nogil=True)
def _sum_asking_ahead(row: np.ndarray, ahead: int) -> float:
    total = 0.0
    for i in range(row.shape[0]):
        if i % 16 == 0:
            prefetch(row, i + ahead)
        total += row[i]
    return total


def test_prefetch_past_the_end_neither_faults_nor_changes_a_result():
    """Hints far past the end of an array (and before its start) are harmless: the sum is
    numpy's."""
    row = np.random.default_rng(3).random(10_000)
    for ahead in (0, 1024, 1 << 40, -(1 << 40)):
        assert _sum_asking_ahead(row, ahead) == pytest.approx(row.sum(), rel=1e-12)


def test_prefetch_takes_a_row_and_an_integer_index():
    """A 2-D array or a float index is a typing error, not a wrong hint."""
    @njit
    def hint(a: np.ndarray, i: object) -> None:
        prefetch(a, i)

    with pytest.raises(TypingError):
        hint(np.zeros((2, 2)), 0)
    with pytest.raises(TypingError):
        hint(np.zeros(4), 1.5)
