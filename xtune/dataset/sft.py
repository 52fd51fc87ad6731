"""The training dataset: data files -> conversation schema -> ids and labels -> (packed) rows."""

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
from mmengine.dist import barrier, get_rank
from mmengine.logging import print_log
from torch.utils.data import Dataset

from xtune import __version__
from xtune.dataset.cache import load_cached, remove_stale_builds, work_suffix
from xtune.dataset.dataset_info import FORMATS, DatasetSpec, resolve_dataset
from xtune.dataset.encode import EncodeOptions, encode_conversations, encode_texts
from xtune.dataset.formats import convert_row, fill_placeholders
from xtune.dataset.loading import load_rows
from xtune.dataset.packing import pack_indices, packing_efficiency
from xtune.dataset.tokenizer import load_tokenizer
from xtune.errors import ConfigError, DataError
from xtune.registry import DATASETS

TRUNCATIONS = ("truncate", "drop")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XTUNE_CACHE", Path.home() / ".cache" / "xtune")) / "datasets"


def _hash_path(digest, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


@DATASETS.register_module()
class SFTDataset(Dataset):
    """Supervised (and pretraining) data, tokenised, masked and optionally packed.

    Args:
        data_path: A registered dataset name, a file or directory, or a hub dataset name.
        tokenizer: Path or name of the model whose tokenizer to use.
        data_format: ``alpaca``, ``sharegpt``, ``openai`` or ``text`` (``None``: from the registry).
        prompt_template: A built-in template name, or ``auto`` for the tokenizer's own.
        max_length: Longest sample (and packed row) in tokens.
        pack_to_max_length: Pack samples into rows of ``max_length``.
        truncation: ``truncate`` or ``drop`` over-long samples.
        train_on_prompt: Train on prompts too.
        mask_history: Train only on the last assistant turn.
        placeholders: Values for ``{{key}}`` placeholders in the data (identity data: name, author).
        columns: Column renames, schema field -> column in the file.
        tags: sharegpt role/content tag names.
        dataset_info: A user's dataset registry file.
        skip_bad_rows: Skip malformed rows (counted and reported) instead of failing.
        num_proc: Tokenizer worker processes.
        cache: Keep the processed data on disk, keyed by everything that decides it.
        cache_dir: Where; default ``$XTUNE_CACHE/datasets`` or ``~/.cache/xtune/datasets``.
        trust_remote_code: Passed to the tokenizer.
    """

    def __init__(
        self,
        data_path: str,
        tokenizer: str,
        data_format: str | None = None,
        prompt_template: str = "auto",
        max_length: int = 2048,
        pack_to_max_length: bool = True,
        truncation: str = "truncate",
        train_on_prompt: bool = False,
        mask_history: bool = False,
        placeholders: dict | None = None,
        columns: dict | None = None,
        tags: dict | None = None,
        dataset_info: str | None = None,
        skip_bad_rows: bool = False,
        num_proc: int = 1,
        cache: bool = True,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {TRUNCATIONS}, got '{truncation}'.")
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}.")
        self.spec: DatasetSpec = resolve_dataset(data_path, data_format, columns, tags, dataset_info)
        if self.spec.data_format not in FORMATS or self.spec.data_format == "preference":
            raise ConfigError(
                f"data_format '{self.spec.data_format}' cannot train with SFTDataset: use alpaca, sharegpt, "
                "openai (supervised) or text (pretraining). Preference data is for a preference stage."
            )
        self.tokenizer = load_tokenizer(tokenizer, prompt_template, trust_remote_code)
        self.prompt_template = prompt_template
        self.max_length = max_length
        self.pack = pack_to_max_length
        self.options = EncodeOptions(max_length, truncation, train_on_prompt, mask_history)
        self.placeholders = {k: str(v) for k, v in (placeholders or {}).items() if v is not None}
        self.skip_bad_rows = skip_bad_rows
        self.num_proc = num_proc
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        self._key = self._compute_key()
        self.data = self._build_or_load(cache_root if cache else None)
        lengths = np.asarray(self.data["length"], dtype=np.int64)
        # Dropped rows stay in self.data (with their reason) for statistics; training skips them.
        self.valid = np.flatnonzero(lengths)
        if len(self.valid) == 0:
            raise DataError(self._nothing_left())
        self.rows = None
        if self.pack:
            packed = pack_indices(lengths[self.valid], max_length)
            self.rows = [[int(self.valid[j]) for j in row] for row in packed]

    # ----------------------------------------------------------------------------- building
    def cache_key(self) -> str:
        """A digest of everything that decided the processed data (computed when it was built)."""
        return self._key

    def _compute_key(self) -> str:
        digest = hashlib.sha256()
        path = Path(self.spec.path)
        if path.exists():
            _hash_path(digest, path)
        else:
            digest.update(f"hub:{self.spec.path}:{self.spec.split}".encode())
        tok = self.tokenizer
        digest.update(tok.backend_tokenizer.to_str().encode() if tok.is_fast else repr(tok.get_vocab()).encode())
        settings = {
            "xtune": __version__,
            "format": self.spec.data_format,
            "columns": self.spec.columns,
            "tags": self.spec.tags,
            "template": tok.chat_template,
            "special": [tok.bos_token, tok.eos_token, tok.pad_token],
            "options": self.options.__dict__,
            "placeholders": self.placeholders,
            "skip_bad_rows": self.skip_bad_rows,
        }
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:24]

    def _build_or_load(self, cache_root: Path | None) -> datasets.Dataset:
        if cache_root is None:
            return self._process()
        target = cache_root / self._key
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
                self._process(work / "rows.arrow").save_to_disk(str(tmp))
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
        if data is None:
            data = datasets.load_from_disk(str(target))
        print_log(f"processed dataset: {target}", logger="current")
        return data

    def _process(self, out_file: Path | None = None) -> datasets.Dataset:
        raw = load_rows(self.spec)
        fn_kwargs = {
            "spec": self.spec,
            "tokenizer": self.tokenizer,
            "options": self.options,
            "placeholders": self.placeholders,
            "skip_bad_rows": self.skip_bad_rows,
        }
        return raw.map(
            _process_batch,
            batched=True,
            batch_size=1000,
            fn_kwargs=fn_kwargs,
            remove_columns=raw.column_names,
            num_proc=self.num_proc if self.num_proc > 1 else None,
            desc="Tokenizing",
            load_from_cache_file=False,
            cache_file_name=str(out_file) if out_file else None,
        )

    def _nothing_left(self) -> str:
        """Why no sample is left to train on, with the counts (every row dropped, and for which reasons)."""
        reasons = Counter(self.data["status"])
        dropped = "; ".join(f"{count} {reason.removeprefix('dropped: ')}" for reason, count in reasons.most_common(3))
        return (
            f"{self.spec.path}: no sample left to train on: {len(self.data)} rows read, all dropped ({dropped}) with "
            f"max_length={self.max_length}. Raise max_length (check-dataset shows the lengths), or shorten the "
            "prompts: a row whose prompt fills max_length has no answer tokens left to train."
        )

    # ----------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows) if self.pack else len(self.valid)

    def __getitem__(self, index: int) -> dict:
        if not self.pack:
            item = self.data[int(self.valid[index])]
            return {"input_ids": item["input_ids"], "labels": item["labels"]}
        samples = self.data[self.rows[index]]
        input_ids, labels, position_ids = [], [], []
        for ids, sample_labels in zip(samples["input_ids"], samples["labels"]):
            input_ids += ids
            labels += sample_labels
            position_ids += range(len(ids))
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    @property
    def lengths(self) -> list[int]:
        """Tokens in each item (row or packed row), for length-grouped sampling."""
        lengths = self.data["length"]
        if self.pack:
            return [sum(lengths[i] for i in row) for row in self.rows]
        return [lengths[int(i)] for i in self.valid]

    @property
    def metainfo(self) -> dict:
        return {"data_path": self.spec.path, "data_format": self.spec.data_format}

    def statistics(self) -> dict:
        """Counts for logs and ``xtune check-dataset``."""
        status = Counter(self.data["status"])
        lengths = np.asarray(self.data["length"])
        stats = {
            "rows_read": len(self.data),
            "samples": len(self.valid),
            "truncated": status.pop("truncated", 0),
            "tokens": int(sum(lengths)),
            "trained_tokens": int(sum(self.data["trained"])),
            "max_length": self.max_length,
        }
        status.pop("", None)
        stats["dropped"] = dict(status)
        if self.pack:
            stats["packed_rows"] = len(self.rows)
            efficiency = packing_efficiency(lengths[self.valid], self.rows, self.max_length)
            stats["packing_efficiency"] = round(efficiency, 4)
        return stats


def _process_batch(batch: dict, spec, tokenizer, options, placeholders, skip_bad_rows) -> dict:
    names = list(batch)
    rows = [dict(zip(names, values)) for values in zip(*batch.values())]
    out = {"input_ids": [], "labels": [], "length": [], "trained": [], "status": []}
    samples, dropped, where = [], [], []
    for row in rows:
        try:
            sample = convert_row(row, spec)
        except DataError as exc:
            if not skip_bad_rows:
                raise
            dropped.append(f"dropped: bad row ({str(exc)[:200]})")
            continue
        samples.append(fill_placeholders(sample, placeholders) if placeholders else sample)
        where.append(f"{row.get('_source', spec.path)}, row {row.get('_row', '?')}")
    if not samples:
        results = []
    elif spec.data_format == "text":
        results = encode_texts(tokenizer, samples, options)
    else:
        results = encode_conversations(tokenizer, samples, options, where=where, skip_bad=skip_bad_rows)
    for reason in dropped:
        results.append({"input_ids": [], "labels": [], "status": reason})
    for result in results:
        if result["status"].startswith("dropped"):
            out["input_ids"].append([])
            out["labels"].append([])
            out["length"].append(0)
            out["trained"].append(0)
        else:
            out["input_ids"].append(result["input_ids"])
            out["labels"].append(result["labels"])
            out["length"].append(len(result["input_ids"]))
            out["trained"].append(len(result["labels"]) - result["labels"].count(-100))
        out["status"].append(result["status"])
    return out
