"""Dataset mixtures: several datasets in one ``data_path``, each with its own rows budget.

``data_path`` is one dataset (a registry name, a path or a Hub name), a comma-separated string of them
(LLaMA-Factory's ``dataset: a,b``), or a list whose items are names or dicts::

    data_path = ['identity', dict(path='alpaca_demo', max_samples=100, weight=2.0),
                 dict(path='my.jsonl', data_format='sharegpt', columns={'messages': 'dialog'})]

Each dataset is read, converted, tokenised and cached on its own (so adding a dataset to a mixture does not
reprocess the others), after every one of them was checked (:mod:`xtune.dataset.precheck`). Then
``max_samples`` keeps its first rows (LLaMA-Factory's ``max_samples``), the registry's ``num_samples`` draws
that many rows (seeded, with repeats when it is larger than the dataset, as LLaMA-Factory does), and
``weight`` scales how often its rows are used per epoch: 2.0 uses each row twice, 0.5 a seeded random half.
Weights therefore set the mixture's proportions: a dataset's share is ``rows * weight`` over the sum of all
of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xtune.dataset.dataset_info import DatasetSpec, load_dataset_info, resolve_dataset
from xtune.errors import ConfigError

ITEM_KEYS = ("path", "data_format", "max_samples", "weight", "columns", "tags")


def split_data_path(data_path: Any, dataset_info: str | None = None) -> list[Any]:
    """The mixture's items: a list as given, or a string split at commas (unless it names one dataset)."""
    if isinstance(data_path, (list, tuple)):
        if not data_path:
            raise ConfigError("data_path: the list of datasets is empty. Name at least one dataset.")
        return list(data_path)
    if not isinstance(data_path, str) or not data_path.strip():
        raise ConfigError(
            f"data_path must be a dataset name or path, a comma-separated string of them, or a list, got {data_path!r}."
        )
    if "," not in data_path or Path(data_path).expanduser().exists() or data_path in load_dataset_info(dataset_info):
        return [data_path]
    items = [part.strip() for part in data_path.split(",")]
    if not all(items):
        raise ConfigError(f"data_path {data_path!r} has an empty name between commas. Remove the extra comma.")
    return items


def resolve_mixture(
    data_path: Any,
    data_format: str | None = None,
    columns: dict | None = None,
    tags: dict | None = None,
    dataset_info: str | None = None,
) -> list[DatasetSpec]:
    """One :class:`DatasetSpec` per mixture item; an item's own settings win over the shared ones."""
    specs = []
    for index, item in enumerate(split_data_path(data_path, dataset_info)):
        where = f"data_path item {index}"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ConfigError(
                f"{where}: expected a name/path or a dict with 'path' (and optional data_format, max_samples, "
                f"weight, columns, tags), got {item!r}."
            )
        unknown = sorted(set(item) - set(ITEM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}. Valid keys: {', '.join(ITEM_KEYS)}.")
        spec = resolve_dataset(
            item["path"],
            item.get("data_format") or data_format,
            {**(columns or {}), **(item.get("columns") or {})},
            {**(tags or {}), **(item.get("tags") or {})},
            dataset_info,
        )
        max_samples = item.get("max_samples")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)):
            raise ConfigError(f"{where}: max_samples must be a positive integer or None, got {max_samples!r}.")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"{where}: max_samples must be a positive integer or None, got {max_samples!r}.")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{where}: weight must be a number > 0, got {weight!r}.")
        spec.max_samples, spec.weight = max_samples, float(weight)
        specs.append(spec)
    names = [spec.name for spec in specs]
    if len(set(names)) < len(names):
        raise ConfigError(f"data_path names a dataset twice ({names}). Use weight=2.0 to use a dataset twice.")
    return specs


def draw(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` indices of ``range(n)``: every index ``count // n`` times, plus a seeded random subset."""
    full, rest = divmod(count, n)
    rng = np.random.default_rng(seed)
    extra = np.sort(rng.permutation(n)[:rest])
    return np.concatenate([np.tile(np.arange(n), full), extra]).astype(np.int64)


def select_rows(spec: DatasetSpec, valid: np.ndarray, seed: int = 0) -> np.ndarray:
    """Which of a dataset's usable rows train, in order, after ``max_samples``, ``num_samples`` and ``weight``.

    Args:
        spec: The dataset and its budget.
        valid: Indices of its rows that were converted and encoded (in file order).
        seed: Seeds the draws, so a run and its resume see the same rows.
    """
    if spec.max_samples is not None:
        valid = valid[: spec.max_samples]
    if not len(valid):
        return valid
    if spec.num_samples is not None:
        valid = valid[draw(len(valid), spec.num_samples, seed)]
    if spec.weight != 1.0:
        valid = valid[draw(len(valid), max(1, round(len(valid) * spec.weight)), seed + 1)]
    return valid
