"""The Data tab: a config's training rows as the model sees them, and every bad row by number.

This is ``xtune check-dataset`` with ``skip_bad_rows`` on, so that one bad row does not hide the rest:
the page lists each one (file and row number, what is wrong) and says whether training, which keeps the
config's own ``skip_bad_rows``, would stop on them.
"""

from dataclasses import dataclass

from xtune.errors import ConfigError


@dataclass
class DataPreview:
    """Attributes:
    statistics: The dataset's counts (rows read, samples, truncated, tokens, dropped).
    rows: The first rows with untrained parts marked ``[-100: ...]``.
    problems: One line per dropped row: bad rows with their file and row number, and other drops.
    fails_training: The config does not skip bad rows, so training would stop at the first one.
    """

    statistics: dict
    rows: list[str]
    problems: list[str]
    fails_training: bool


def preview_dataset(cfg, num_rows: int = 3) -> DataPreview:
    """Build ``cfg``'s training dataset (a resolved config) and show its first ``num_rows`` rows.

    Raises:
        ConfigError: The config has no training dataset.
        XtuneError: The data cannot be read at all (missing file, unknown format, ...).
    """
    import xtune.dataset  # noqa: F401  (registers the datasets)
    from xtune.dataset.encode import masked_text
    from xtune.dataset.process import BAD_ROW
    from xtune.registry import DATASETS

    dataset_cfg = cfg.get("train_dataset") or cfg.train_dataloader.get("dataset")
    if dataset_cfg is None:
        raise ConfigError("the config has no train_dataset or train_dataloader.dataset to preview.")
    skips = bool(dataset_cfg.get("skip_bad_rows", False))
    dataset = DATASETS.build({**dataset_cfg, "skip_bad_rows": True})
    rows = []
    for index in range(min(max(num_rows, 0), len(dataset))):
        row = dataset[index]
        shown = masked_text(dataset.tokenizer, row["input_ids"], row["labels"])
        rows.append(f"--- row {index} ({len(row['input_ids'])} tokens)\n{shown}")
    # each dataset of a mixture keeps its processed rows: a dropped row's status, and for a bad row its error
    processed = getattr(dataset, "parts", None) or [dataset.data]
    problems = [
        f"{status} ({note})" if status == BAD_ROW and note else status
        for part in processed
        for status, note in zip(part["status"], part["note"] if "note" in part.column_names else [""] * len(part))
        if status.startswith("dropped")
    ]
    bad = any(problem.startswith("dropped: bad row") for problem in problems)
    return DataPreview(dataset.statistics(), rows, problems, bad and not skips)
