"""``scripts/benchlib.py``: the slice sets the rendering benchmarks time (ours and Orthanc's)."""

from __future__ import annotations

import pytest

from scripts import benchlib


@pytest.mark.parametrize("slices", [10, 40, 100, 101, 300])
def test_cold_slices_are_disjoint_full_and_never_neighbours(slices: int) -> None:
    items = list(range(slices))
    cold = benchlib.cold_slices(items, reps=50)
    sets = [cold.scroll_jpeg, cold.scroll_png, cold.random_jpeg, cold.random_png]
    n = len(cold.scroll_jpeg)
    assert n == min(50, (slices - 3) // 6) and n > 0
    assert [len(s) for s in sets] == [n] * 4  # every row gets all its samples
    used = [i for s in sets for i in s]
    assert len(set(used)) == len(used)  # nothing rendered twice
    assert 0 not in used and cold.warm not in used  # the warm-up slice, the new-window slice
    assert cold.scroll_jpeg == items[1:1 + n]  # scroll order
    for row in (cold.random_jpeg, cold.random_png):  # nothing can have been rendered ahead
        assert all(abs(a - b) > 1 for a, b in zip(row, row[1:]))
    assert benchlib.cold_slices(items, reps=50) == cold  # the same slices for both servers
