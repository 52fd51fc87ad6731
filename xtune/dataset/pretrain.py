"""Pretraining text as one stream: documents joined with EOS and cut into ``max_length`` blocks.

This is what pretraining tools do (Hugging Face's ``group_texts``, LLaMA-Factory's pt stage): no
document is cut short, every token is trained. Unlike ``group_texts`` the last, shorter block is kept
(the collator pads it), so no token is lost at all. Documents inside a block attend to each other, as
in those tools: the EOS between them marks the boundary. ``concat_texts=False`` keeps the older
per-document mode (each document its own sample, cut at ``max_length``).
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xtune.dataset.encode import IGNORE_INDEX


def concat_blocks(data: datasets.Dataset, documents: np.ndarray, max_length: int) -> datasets.Dataset:
    """Join the chosen documents' ids (each already ends with EOS) and cut them into blocks.

    Args:
        data: Processed documents with an ``input_ids`` column.
        documents: Which rows of ``data`` to use, in order (repeats allowed: mixture weights).
        max_length: Block length; only the last block may be shorter.

    Returns:
        A dataset with ``input_ids``, ``labels`` (the ids; the first label of a block is -100 since no
        token of the block predicts it) and ``length`` per block.
    """
    column = data.with_format("arrow").select(documents.tolist())["input_ids"] if len(documents) else None
    if column is None:
        return datasets.Dataset.from_dict({"input_ids": [], "labels": [], "length": []})
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.arange(0, len(flat), max_length)
    lengths = np.minimum(max_length, len(flat) - starts)
    # Arrow lists index their values with int32 offsets; a corpus of 2**31 tokens or more needs large lists.
    small = len(flat) < 2**31
    list_type = pa.ListArray if small else pa.LargeListArray
    offsets = pa.array(np.append(starts, len(flat)).astype(np.int32 if small else np.int64))
    ids = list_type.from_arrays(offsets, pa.array(flat, pa.int32()))
    labels_flat = flat.copy()
    labels_flat[starts] = IGNORE_INDEX
    labels = list_type.from_arrays(offsets, pa.array(labels_flat, pa.int32()))
    table = pa.table({"input_ids": ids, "labels": labels, "length": pa.array(lengths, pa.int64())})
    return datasets.Dataset(table)
