"""Packing: whole samples into rows of at most ``max_length`` tokens.

Samples are never split across rows (a split sample would train on a context it never had). Rows are
filled best-fit-decreasing, which leaves little padding. Inside a row every sample gets its own
``position_ids`` starting at 0; the model turns the restarts into a block-diagonal causal mask
(transformers builds it from ``position_ids`` when no ``attention_mask`` is given, for sdpa and eager
attention), so no sample attends to another.
"""

import bisect

import numpy as np


def pack_indices(lengths: list[int] | np.ndarray, max_length: int) -> list[list[int]]:
    """Group sample indices into rows whose total length is at most ``max_length``.

    Args:
        lengths: Token count of each sample (each at most ``max_length``).
        max_length: Row capacity.

    Returns:
        Rows of sample indices. Within a row, indices are in ascending order; rows are ordered by their
        first index, so the result does not depend on the sort used to fill them.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    # free[i] is the free space of row row_of[i]; kept sorted so bisect finds the tightest fit.
    free: list[int] = []
    row_of: list[int] = []
    for index in order.tolist():
        need = int(lengths[index])
        slot = bisect.bisect_left(free, need)
        if slot == len(free):
            rows.append([index])
            remaining, row = max_length - need, len(rows) - 1
        else:
            remaining, row = free.pop(slot) - need, row_of.pop(slot)
            rows[row].append(index)
        if remaining > 0:
            slot = bisect.bisect_left(free, remaining)
            free.insert(slot, remaining)
            row_of.insert(slot, row)
    for row in rows:
        row.sort()
    rows.sort(key=lambda r: r[0])
    return rows


def packing_efficiency(lengths: list[int] | np.ndarray, rows: list[list[int]], max_length: int) -> float:
    """Share of row capacity filled with real tokens."""
    if not rows:
        return 0.0
    return float(np.sum(lengths)) / (len(rows) * max_length)
