"""A mixture's datasets checked before any of them is processed.

Processing one dataset (reading, converting and tokenising every row, then caching it) can take minutes.
Each dataset used to be checked just before it was built, so a broken second file was found only after the
first one had been tokenised and cached. :class:`~xtune.dataset.sft.SFTDataset` now checks every dataset
first, with :func:`check_first_row`, and computes every cache key, and only then processes them.

The first row is read as :func:`~xtune.dataset.loading.load_rows` reads it (so a missing, empty or
unreadable file fails with the error processing would give), its columns are checked against the data
format, and it is processed exactly as the build will process it (:func:`~xtune.dataset.process.process_batch`
with the dataset's own arguments). A row that fails there would have stopped the build at that row, so the
check raises no error the build would not; with ``skip_bad_rows`` a bad first row is left to the build to
skip and count, unless its columns show the whole file is in another format (see :func:`format_problem`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xtune.dataset.dataset_info import DatasetSpec
from xtune.dataset.formats import FORMAT_GUESSES, row_location
from xtune.dataset.loading import first_row
from xtune.dataset.process import process_batch
from xtune.errors import DataError

# The schema field a row of each format cannot do without (DatasetSpec.columns may name its column).
FORMAT_FIELDS = {
    "alpaca": "instruction",
    "sharegpt": "messages",
    "openai": "messages",
    "text": "text",
    "preference": "chosen",
}
# formats' guesses, and a preference row's mark (a first row decides here, so preference data is named too)
_FORMAT_OF_COLUMN = {**FORMAT_GUESSES, "chosen": "preference"}
# Files whose rows all have the same columns: a column missing from the first row is missing from every row.
_FIXED_COLUMNS = (".csv", ".parquet")


def format_columns(spec: DatasetSpec) -> tuple[str, ...]:
    """The columns of which a row of ``spec``'s format must hold one (as :mod:`xtune.dataset.formats` reads)."""
    field = FORMAT_FIELDS[spec.data_format]
    if field in spec.columns:
        return (spec.columns[field],)
    # sharegpt and openai rows hold their turns under either name when the column is not mapped
    return ("conversations", "messages") if field == "messages" else (field,)


def format_problem(row: dict[str, Any], spec: DatasetSpec, skip_bad_rows: bool) -> str | None:
    """Why the first ``row`` shows that ``spec``'s file is not in its data format, or None.

    The row must have one of :func:`format_columns` (even an empty one: a bad value is the row's problem,
    not the format's). With ``skip_bad_rows`` a JSON row without it may be one bad row among good ones, so
    it is a format problem only when it holds another format's column instead; a CSV or Parquet file (or a
    Hub dataset) has the same columns in every row, so there the missing column is the file's problem.
    """
    if spec.data_format not in FORMAT_FIELDS:
        return None  # an unknown format is the build's error (it names the valid ones)
    wanted = format_columns(spec)
    if any(column in row for column in wanted):
        return None
    guess = next((fmt for column, fmt in _FORMAT_OF_COLUMN.items() if row.get(column) is not None), None)
    fixed = spec.from_hub or Path(str(row.get("_source", ""))).suffix.lower() in _FIXED_COLUMNS
    if skip_bad_rows and not fixed and guess is None:
        return None  # skipped and counted by the build, like any other bad row
    named = f" (dataset '{spec.name}')" if spec.name != spec.path else ""
    found = [name for name in row if not name.startswith("_")]
    names = " or ".join(f"'{column}'" for column in wanted)
    hint = f"; is this {guess} data?" if guess and guess != spec.data_format else ""
    fix = f"data_format='{guess}'" if hint else f"the data_format the file is written in ({', '.join(FORMAT_FIELDS)})"
    return (
        f"{_location(row, spec)}{named}: {spec.data_format} data needs the column {names}, and "
        f"the first row has none (its columns: {found}{hint}). Set {fix} for this dataset, or map your column "
        f"with columns={{'{FORMAT_FIELDS[spec.data_format]}': '<column>'}}."
    )


def check_first_row(spec: DatasetSpec, process_kwargs: dict) -> None:
    """Read ``spec``'s first row, check its format and process it as the build will.

    Args:
        spec: One dataset of a mixture.
        process_kwargs: The dataset's arguments of :func:`~xtune.dataset.process.process_batch` (with
            ``skip_bad_rows``: then a bad first row is the build's to skip, not an error here).

    Raises:
        DataError: The file is missing, empty or unreadable, or is not in the dataset's format, or its first
            row is bad (without ``skip_bad_rows``); the message names the file and row and gives the fix.
        ConfigError: The first row needs a setting the config lacks (a ``{{name}}`` placeholder's value).
    """
    row = first_row(spec)
    problem = format_problem(row, spec, process_kwargs["skip_bad_rows"])
    if problem:
        raise DataError(problem)
    process_batch({name: [value] for name, value in row.items()}, spec, **process_kwargs)


def _location(row: dict[str, Any], spec: DatasetSpec) -> str:
    """:func:`row_location`, with the dataset's path where the row does not name its file."""
    return row_location(row if "_source" in row else {**row, "_source": spec.path})
