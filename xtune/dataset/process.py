"""One dataset's rows -> conversation schema -> ids and labels, cached on disk by everything that decides them.

Each processed row keeps its place (row ``i`` of the output is row ``i`` of the file) and says what
happened to it in ``status``: ``""`` (used as is), ``"truncated"`` or ``"dropped: <reason>"``; a row
skipped by ``skip_bad_rows`` also keeps the error in ``note``, so statistics can say how many, why and
which rows.

A dataset whose rows carry more than text (images) passes a :class:`RowMedia`: it reads its columns
from each converted row, rewrites the sample before encoding, checks the encoded ids and adds its own
output columns, so one path converts, encodes, counts and caches every kind of row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import datasets
from mmengine.dist import barrier, broadcast_object_list, get_rank, get_world_size

from xtune import __version__
from xtune.dataset.cache import load_cached, remove_stale_builds, work_suffix
from xtune.dataset.dataset_info import DatasetSpec
from xtune.dataset.encode import EncodeOptions, encode_conversations, encode_texts
from xtune.dataset.formats import convert_row, fill_placeholders
from xtune.dataset.loading import load_rows
from xtune.errors import ConfigError, DataError, XtuneError

BAD_ROW = "dropped: bad row"
# The placeholders of LLaMA-Factory's and xtune's identity data; every config has these two knobs.
PLACEHOLDER_KNOBS = ("name", "author")
_LEFT_PLACEHOLDER = re.compile(r"\{\{\s*(" + "|".join(PLACEHOLDER_KNOBS) + r")\s*\}\}")
T = TypeVar("T")
SKIP_HINT = "Or set skip_bad_rows=True to leave such rows out (they are counted in the dataset statistics)."


class RowMedia(Protocol):
    """What a dataset with media rows (images) adds to :func:`process_batch` (picklable: ``num_proc``).

    Attributes:
        uses: The media columns it reads (passed to :func:`convert_row` as ``uses``).
        features: The output columns it adds, with their types.
    """

    uses: tuple[str, ...]
    features: dict[str, Any]

    def prepare(self, row: dict, sample: dict, where: str) -> dict:
        """The sample to encode for a converted ``row``; raises DataError for a bad row."""

    def encode_options(self, options: EncodeOptions) -> EncodeOptions:
        """The options to encode with (the media applies the length rule itself, in :meth:`finish`)."""

    def finish(self, result: dict, sample: dict, options: EncodeOptions, where: str) -> dict:
        """The encoded ``result`` with its media columns, the length rule applied; raises DataError."""

    def empty(self) -> dict:
        """The media columns of a row that was dropped before encoding."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XTUNE_CACHE", Path.home() / ".cache" / "xtune")) / "datasets"


def _hash_path(digest, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def cache_key(spec: DatasetSpec, tokenizer, options: EncodeOptions, placeholders: dict, skip_bad_rows: bool) -> str:
    """A digest of everything that decides one dataset's processed rows (not which rows a mixture uses)."""
    digest = hashlib.sha256()
    path = Path(spec.path)
    if not spec.from_hub and path.exists():
        _hash_path(digest, path)
    else:
        digest.update(f"hub:{spec.path}:{spec.split}:{spec.subset}:{spec.folder}".encode())
    tok = tokenizer
    digest.update(tok.backend_tokenizer.to_str().encode() if tok.is_fast else repr(tok.get_vocab()).encode())
    settings = {
        "xtune": __version__,
        "format": spec.data_format,
        "columns": spec.columns,
        "tags": spec.tags,
        "template": tok.chat_template,
        "special": [tok.bos_token, tok.eos_token, tok.pad_token],
        "options": options.__dict__,
        "placeholders": placeholders,
        "skip_bad_rows": skip_bad_rows,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


Rows = Callable[[DatasetSpec], datasets.Dataset]
"""Gives a dataset's raw rows (:meth:`xtune.dataset.loading.ParsedRows.get`: parsed once per build)."""


def shared_key(compute: Callable[[], T], cached: bool) -> T:
    """The cache key(s) from ``compute``; with a cache, computed by rank 0 alone and sent to the other ranks.

    Only rank 0 builds a cache entry and the others read it, so they need its key, not the data (the key of
    image-text data reads every row). An error computing it on rank 0 is raised on every rank, none waits.
    """
    if not cached or get_world_size() == 1:
        return compute()
    message: list = [None, None]
    failure = None
    if get_rank() == 0:
        try:
            message[0] = compute()
        except Exception as exc:  # noqa: BLE001  (re-raised below, after the other ranks are told)
            failure = exc
            # xtune's errors and OSError travel as they are; another error's class may not unpickle there
            shared = isinstance(exc, (XtuneError, OSError))
            message[1] = exc if shared else XtuneError(f"on rank 0: {type(exc).__name__}: {exc}")
    broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    if message[1] is not None:
        raise message[1]
    return message[0]


def build_or_load(
    spec: DatasetSpec, key: str, cache_root: Path | None, fn_kwargs: dict, num_proc: int, rows: Rows | None = None
):
    """The processed rows of ``spec``: from the cache under ``cache_root/key``, or built (and cached) from
    ``rows(spec)`` (default: :func:`load_rows`)."""
    if cache_root is None:
        return _process(spec, fn_kwargs, num_proc, rows=rows)
    target = cache_root / key
    data = None
    if get_rank() == 0:
        remove_stale_builds(cache_root)
        data = load_cached(target)  # None when missing or damaged (then removed, with a message)
    if get_rank() == 0 and data is None:
        tmp = target.with_name(target.name + work_suffix("tmp"))
        work = target.with_name(target.name + work_suffix("build"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            # written to disk batch by batch, so memory does not grow with the number of rows
            _process(spec, fn_kwargs, num_proc, work / "rows.arrow", rows).save_to_disk(str(tmp))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not target.exists():
            os.replace(tmp, target)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()  # other ranks wait for rank 0 and then read its cache
    return data if data is not None else datasets.load_from_disk(str(target))


def _process(
    spec: DatasetSpec, fn_kwargs: dict, num_proc: int, out_file: Path | None = None, rows: Rows | None = None
) -> datasets.Dataset:
    raw = rows(spec) if rows is not None else load_rows(spec, work_dir=out_file.parent if out_file else None)
    media = fn_kwargs.get("media")
    # Typed up front when media columns are added: a first batch of rows without images would otherwise
    # fix the images column's type as a list of nulls.
    features = datasets.Features({**_FEATURES, **media.features}) if media is not None else None
    return raw.map(
        process_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"spec": spec, **fn_kwargs},
        remove_columns=raw.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        desc=f"Tokenizing {spec.name}",
        load_from_cache_file=False,
        cache_file_name=str(out_file) if out_file else None,
        # uncached: the result stays in memory, not beside the raw rows' files (removed with them)
        keep_in_memory=out_file is None,
        features=features,
    )


_FEATURES = {
    "input_ids": datasets.Sequence(datasets.Value("int64")),
    "labels": datasets.Sequence(datasets.Value("int64")),
    "length": datasets.Value("int64"),
    "trained": datasets.Value("int64"),
    "status": datasets.Value("string"),
    "note": datasets.Value("string"),
}


def _check_placeholders(sample: dict[str, Any], where: str) -> None:
    texts = [sample.get("text") or ""] + [m.get("content") or "" for m in sample.get("messages", ())]
    texts += [(sample.get(key) or {}).get("content") or "" for key in ("chosen", "rejected")]
    for text in texts:
        found = _LEFT_PLACEHOLDER.search(text)
        if found:
            knob = found.group(1)
            raise ConfigError(
                f"{where}: the text holds the placeholder {found.group(0)}, and no value was given for it, so it "
                f"would be trained literally. Set the knob: {knob} = '...' in the config, or "
                f"--cfg-options {knob}='...'."
            )


def _bad_row(exc: DataError, skip_bad_rows: bool, bad: dict) -> dict:
    """A bad row's output (kept with its error for statistics), or the error with the skip hint."""
    if not skip_bad_rows:
        raise DataError(f"{exc} {SKIP_HINT}") from None
    return {**bad, "note": str(exc)}


def process_batch(
    batch: dict,
    spec: DatasetSpec,
    tokenizer,
    options: EncodeOptions,
    placeholders: dict,
    skip_bad_rows: bool,
    media: RowMedia | None = None,
) -> dict:
    """Convert and encode a batch of raw rows; one output row per input row, in order."""
    names = list(batch)
    rows = [dict(zip(names, values)) for values in zip(*batch.values())]
    samples, where, positions = [], [], []
    results: list[dict | None] = [None] * len(rows)
    bad = {"input_ids": [], "labels": [], "status": BAD_ROW, **(media.empty() if media else {})}
    for index, row in enumerate(rows):
        origin = f"{row.get('_source', spec.path)}, row {row.get('_row', '?')}"
        try:
            sample = convert_row(row, spec, media.uses if media else ())
            sample = fill_placeholders(sample, placeholders) if placeholders else sample
            _check_placeholders(sample, origin)
            sample = media.prepare(row, sample, origin) if media is not None else sample
        except DataError as exc:
            results[index] = _bad_row(exc, skip_bad_rows, bad)
            continue
        samples.append(sample)
        where.append(origin)
        positions.append(index)
    if not samples:
        encoded = []
    elif spec.data_format == "text":
        encoded = encode_texts(tokenizer, samples, options)
    else:
        encode_options = media.encode_options(options) if media else options
        encoded = encode_conversations(tokenizer, samples, encode_options, where=where, skip_bad=skip_bad_rows)
    for index, result, origin, sample in zip(positions, encoded, where, samples):
        if media is not None:
            try:
                result = media.finish(result, sample, options, origin)
            except DataError as exc:
                result = _bad_row(exc, skip_bad_rows, bad)
        if result["status"].startswith("dropped: template"):
            result["note"] = f"{origin}: {result['status'][len('dropped: ') :]}"
        results[index] = result
    out = {"input_ids": [], "labels": [], "length": [], "trained": [], "status": [], "note": []}
    for column in media.features if media else ():
        out[column] = [result[column] for result in results]
    for result in results:
        ids, labels = result["input_ids"], result["labels"]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained"].append(len(labels) - labels.count(-100) if ids else 0)
        out["status"].append(result["status"])
        out["note"].append(result.get("note", ""))
    return out
