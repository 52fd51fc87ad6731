"""The training dataset: data files -> conversation schema -> ids and labels -> (packed) rows.

``data_path`` may name several datasets (see :mod:`xtune.dataset.mixture`); each is processed and
cached on its own (:mod:`xtune.dataset.process`), then the rows a mixture uses are chosen, and packed
(conversations) or joined into blocks (pretraining text, :mod:`xtune.dataset.pretrain`).
"""

from collections import Counter
from functools import partial
from pathlib import Path

import datasets
import numpy as np
from mmengine.logging import print_log
from torch.utils.data import Dataset

from xtune.dataset.cache import work_suffix
from xtune.dataset.dataset_info import DatasetSpec, check_stage
from xtune.dataset.encode import EncodeOptions
from xtune.dataset.loading import ParsedRows
from xtune.dataset.mixture import resolve_mixture, select_rows
from xtune.dataset.packing import pack_indices, packing_efficiency
from xtune.dataset.precheck import check_first_row
from xtune.dataset.pretrain import concat_blocks
from xtune.dataset.process import BAD_ROW, build_or_load, cache_key, default_cache_dir, shared_key
from xtune.dataset.tokenizer import load_tokenizer_with_template
from xtune.errors import ConfigError, DataError
from xtune.registry import DATASETS

TRUNCATIONS = ("truncate", "drop")
SHOWN_BAD_ROWS = 5  # how many skipped rows statistics name
__all__ = ["SFTDataset", "default_cache_dir"]


@DATASETS.register_module()
class SFTDataset(Dataset):
    """Supervised (and pretraining) data, tokenised, masked and optionally packed.

    Args:
        data_path: A registered dataset name, a file or directory, or a hub dataset name; or several
            (a list, or names separated by commas), each optionally a dict with ``path``,
            ``data_format``, ``max_samples`` and ``weight`` (see :mod:`xtune.dataset.mixture`).
        tokenizer: Path or name of the model whose tokenizer to use.
        data_format: ``alpaca``, ``sharegpt``, ``openai`` or ``text`` (``None``: from the registry).
        prompt_template: A built-in template name, or ``auto`` for the tokenizer's own.
        max_length: Longest sample (and packed row, and pretraining block) in tokens.
        pack_to_max_length: Pack samples into rows of ``max_length``.
        truncation: ``truncate`` or ``drop`` over-long samples.
        train_on_prompt: Train on prompts too.
        mask_history: Train only on the last assistant turn.
        keep_history_reasoning: Keep ``<think>`` reasoning in earlier assistant turns too (qwen3 and
            deepseek templates); the replies after the last user query always keep theirs.
        placeholders: Values for ``{{key}}`` placeholders in the data (identity data: name, author);
            ``{{name}}``/``{{author}}`` left without a value are an error.
        columns: Column renames, schema field -> column in the file.
        tags: sharegpt role/content tag names.
        dataset_info: A user's dataset registry file.
        skip_bad_rows: Skip malformed rows (counted and reported) instead of failing.
        concat_texts: Pretraining text: join documents with EOS and cut the stream into ``max_length``
            blocks (no token lost); ``False``: each document is a sample, cut at ``max_length``.
        seed: Seeds the mixture's row draws (``weight`` below 1, ``num_samples``) and the held-out split.
        val_size: Share of the samples (or pretraining blocks) held out for validation, 0 <= val_size < 1.
        part: ``"train"`` (the samples not held out) or ``"val"`` (the held-out ones).
        num_proc: Tokenizer worker processes.
        cache: Keep the processed data on disk, keyed by everything that decides it.
        cache_dir: Where; default ``$XTUNE_CACHE/datasets`` or ``~/.cache/xtune/datasets``.
        trust_remote_code: Passed to the tokenizer.
    """

    def __init__(
        self,
        data_path: str | list,
        tokenizer: str,
        data_format: str | None = None,
        prompt_template: str = "auto",
        max_length: int = 2048,
        pack_to_max_length: bool = True,
        truncation: str = "truncate",
        train_on_prompt: bool = False,
        mask_history: bool = False,
        keep_history_reasoning: bool = False,
        placeholders: dict | None = None,
        columns: dict | None = None,
        tags: dict | None = None,
        dataset_info: str | None = None,
        skip_bad_rows: bool = False,
        concat_texts: bool = True,
        seed: int = 0,
        val_size: float = 0.0,
        part: str = "train",
        num_proc: int = 1,
        cache: bool = True,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {TRUNCATIONS}, got '{truncation}'.")
        if part not in ("train", "val"):
            raise ConfigError(f"part must be 'train' or 'val', got {part!r}.")
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not 0 <= val_size < 1:
            raise ConfigError(f"val_size must be a fraction in [0, 1), got {val_size!r}.")
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}.")
        self.specs: list[DatasetSpec] = resolve_mixture(data_path, data_format, columns, tags, dataset_info)
        self._check_specs()
        text = [spec.data_format == "text" for spec in self.specs]
        self.spec = self.specs[0]
        self.tokenizer = self._load_tokenizer(tokenizer, prompt_template, trust_remote_code)
        self.prompt_template = prompt_template
        self.max_length = max_length
        self.concat = all(text) and concat_texts
        # Blocks of joined text are max_length already: packing them again would change nothing.
        self.pack = pack_to_max_length and not self.concat
        # Joined documents are cut into blocks later, so each document is kept whole here.
        encode_length = 2**62 if self.concat else max_length
        self.options = EncodeOptions(
            encode_length, truncation, train_on_prompt, mask_history, keep_history_reasoning=keep_history_reasoning
        )
        self.placeholders = {k: str(v) for k, v in (placeholders or {}).items() if v is not None}
        self.skip_bad_rows = skip_bad_rows
        self.num_proc = num_proc
        cache_root = (Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
        self.parts: list[datasets.Dataset] = []
        # Every dataset is checked and keyed before any is processed (xtune.dataset.precheck): a broken last
        # file fails in seconds, not after the others were tokenised, and leaves nothing in the cache.
        # Each file is parsed at most once here: for its key (image paths) and, on a cache miss, its processing;
        # parsed rows stay (in the cache folder, where the space is, or /tmp) until their dataset is built.
        with ParsedRows(cache_root, work_suffix("build") if cache_root else "") as raw:
            self._keys: list[str] = shared_key(
                partial(self._check_and_key, raw, cache_root), cached=cache_root is not None
            )
            for spec, key in zip(self.specs, self._keys):
                self.parts.append(build_or_load(spec, key, cache_root, self._process_kwargs(spec), num_proc, raw.get))
                raw.release(spec)
        if cache_root is not None:
            print_log(f"processed data: {', '.join(str(cache_root / key) for key in self._keys)}", logger="current")
        self._used = []  # per dataset: indices of its processed rows that train
        for index, (spec, processed) in enumerate(zip(self.specs, self.parts)):
            usable = np.flatnonzero(np.asarray(processed["length"], dtype=np.int64))
            self._used.append(select_rows(spec, usable, seed + 1000 * index))
        offsets = np.cumsum([0] + [len(processed) for processed in self.parts])
        documents = np.concatenate([used + offset for used, offset in zip(self._used, offsets)])
        self.data = datasets.concatenate_datasets(self.parts) if len(self.parts) > 1 else self.parts[0]
        if self.concat:
            self.data = concat_blocks(self.data, documents, max_length)
            documents = np.arange(len(self.data))
        lengths = np.asarray(self.data["length"], dtype=np.int64)
        # Dropped rows stay in self.data (with their reason) for statistics; training skips them.
        documents = documents.astype(np.int64)
        if len(documents) == 0:
            raise DataError(self._nothing_left())
        self.valid = _split(documents, val_size, part, seed)
        self.rows = None
        if self.pack:
            packed = pack_indices(lengths[self.valid], max_length)
            self.rows = [[int(self.valid[j]) for j in row] for row in packed]

    # ----------------------------------------------------------------------------- building
    # The steps a dataset of other rows (images: xtune.dataset.vision) changes; the rest is shared.
    def _check_specs(self) -> None:
        """Refuse data this dataset would train wrongly (columns of other stages, text mixed with chats)."""
        for spec in self.specs:
            check_stage(spec, "pt" if spec.data_format == "text" else "sft")
        text = [spec.data_format == "text" for spec in self.specs]
        if any(text) and not all(text):
            raise ConfigError(
                "data_path mixes pretraining text with conversations: "
                + ", ".join(f"{s.name} ({s.data_format})" for s in self.specs)
                + ". Train them in separate runs, or convert the text to a conversation format."
            )

    def _load_tokenizer(self, tokenizer: str, prompt_template: str, trust_remote_code: bool):
        return load_tokenizer_with_template(tokenizer, prompt_template, trust_remote_code)

    def _process_kwargs(self, spec: DatasetSpec) -> dict:
        """The arguments of :func:`xtune.dataset.process.process_batch` for one dataset."""
        return {
            "tokenizer": self.tokenizer,
            "options": self.options,
            "placeholders": self.placeholders,
            "skip_bad_rows": self.skip_bad_rows,
        }

    def _check_and_key(self, raw: ParsedRows, cache_root: Path | None) -> list[str]:
        """Check every dataset (:func:`check_first_row`) and compute its cache key; processes none of them.

        Local files first (one row each, so a broken one is found at once), then the keys; a Hub dataset
        is checked when it will be processed (no cache entry): its first row is its download.
        """
        for spec in self.specs:
            if not spec.from_hub:
                check_first_row(spec, self._process_kwargs(spec))
        keys = [self._cache_key(spec, raw) for spec in self.specs]
        for spec, key in zip(self.specs, keys):
            if spec.from_hub and (cache_root is None or not (cache_root / key / "dataset_info.json").exists()):
                check_first_row(spec, self._process_kwargs(spec))
        return keys

    def _cache_key(self, spec: DatasetSpec, raw: ParsedRows) -> str:
        """The cache key of one dataset (``raw``: its rows, for a key that depends on them)."""
        return cache_key(spec, self.tokenizer, self.options, self.placeholders, self.skip_bad_rows)

    def cache_key(self) -> str:
        """A digest of everything that decided the processed data (computed when it was built)."""
        return self._keys[0] if len(self._keys) == 1 else "+".join(self._keys)

    def _nothing_left(self) -> str:
        """Why no sample is left to train on, with the counts (every row dropped, and for which reasons)."""
        reasons = Counter(status for processed in self.parts for status in processed["status"])
        dropped = "; ".join(f"{count} {reason.removeprefix('dropped: ')}" for reason, count in reasons.most_common(3))
        return (
            f"{', '.join(str(spec.path) for spec in self.specs)}: no sample left to train on: "
            f"{sum(len(processed) for processed in self.parts)} rows read, all dropped ({dropped}) with "
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
        return {
            "data_path": ",".join(spec.path for spec in self.specs),
            "data_format": ",".join(sorted({spec.data_format for spec in self.specs})),
        }

    def statistics(self) -> dict:
        """Counts for logs and ``xtune check-dataset``: the whole mixture, then each dataset."""
        per = [_part_statistics(s, p, u) for s, p, u in zip(self.specs, self.parts, self._used)]
        lengths = np.asarray(self.data["length"], dtype=np.int64)
        stats: dict = {
            "rows_read": sum(p["rows_read"] for p in per),
            "samples": len(self.valid),
            "truncated": sum(p["truncated"] for p in per),
            "tokens": int(lengths[self.valid].sum()),
        }
        if self.concat:
            stats["documents"] = sum(p["used"] for p in per)
            stats["blocks"] = stats["samples"]
            stats["tokens_kept"] = stats["tokens"]
            stats["trained_tokens"] = int(sum(max(0, int(n) - 1) for n in lengths[self.valid]))
        else:
            trained = np.asarray(self.data["trained"], dtype=np.int64)
            stats["trained_tokens"] = int(trained[self.valid].sum())
        stats["max_length"] = self.max_length
        dropped: Counter = Counter()
        for part in per:
            dropped.update(part["dropped"])
        stats["dropped"] = dict(dropped)
        bad = [p["skipped_bad_rows"] for p in per if p.get("skipped_bad_rows")]
        if bad:
            reasons: Counter = Counter()
            for b in bad:
                reasons.update(b["reasons"])
            first = [row for b in bad for row in b["first"]][:SHOWN_BAD_ROWS]
            stats["skipped_bad_rows"] = {
                "count": sum(b["count"] for b in bad),
                "reasons": dict(reasons),
                "first": first,
            }
        if self.pack:
            stats["packed_rows"] = len(self.rows)
            efficiency = packing_efficiency(lengths[self.valid], self.rows, self.max_length)
            stats["packing_efficiency"] = round(efficiency, 4)
        if len(per) > 1:
            stats["datasets"] = {spec.name: part for spec, part in zip(self.specs, per)}
        return stats


def _split(items: np.ndarray, val_size: float, part: str, seed: int) -> np.ndarray:
    """The train or the held-out part of ``items``: a seeded ``val_size`` share, in order."""
    if not val_size:
        return items if part == "train" else items[:0]
    held = np.zeros(len(items), dtype=bool)
    count = max(1, round(len(items) * val_size))
    if count >= len(items):
        raise ConfigError(f"val_size={val_size} holds out all {len(items)} samples. Use a smaller val_size.")
    held[np.random.default_rng(seed + 7).permutation(len(items))[:count]] = True
    return items[held] if part == "val" else items[~held]


def _reason(note: str) -> str:
    """The kind of a bad row's error: its message without the file/row prefix and the fix."""
    problem = note.split(": ", 1)[-1]
    return problem.split(". ")[0][:120]


def _part_statistics(spec: DatasetSpec, part: datasets.Dataset, used: np.ndarray) -> dict:
    status = Counter(part["status"])
    lengths = np.asarray(part["length"], dtype=np.int64)
    stats: dict = {
        "path": spec.path,
        "data_format": spec.data_format,
        "rows_read": len(part),
        "used": len(used),
        "truncated": status.pop("truncated", 0),
        "tokens": int(lengths[used].sum()),
    }
    status.pop("", None)
    bad = status.pop(BAD_ROW, 0)
    # Template errors carry the error in their status; counted together, detailed like bad rows.
    template = sum(n for reason, n in status.items() if reason.startswith("dropped: template error"))
    stats["dropped"] = {r: n for r, n in status.items() if not r.startswith("dropped: template error")}
    if bad + template:
        notes = [note for note in part["note"] if note]
        stats["dropped"].update({BAD_ROW: bad} if bad else {})
        stats["dropped"].update({"dropped: template error": template} if template else {})
        stats["skipped_bad_rows"] = {
            "count": bad + template,
            "reasons": dict(Counter(_reason(note) for note in notes).most_common(10)),
            "first": [note.split(": ", 1)[0] for note in notes[:SHOWN_BAD_ROWS]],
        }
    return stats
