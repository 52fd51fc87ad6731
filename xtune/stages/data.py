"""Preference pairs and KTO's labelled completions: rows -> schema -> ids and labels -> batches.

Layouts (``data_format`` keeps naming the layout; the stage decides that rows are pairs):

* pairs (``PreferenceDataset``, for dpo/orpo/simpo/rm): a prompt in alpaca (``instruction``, ``input``,
  ``system``, ``history``), sharegpt (``conversations``) or openai (``messages``) layout, plus
  ``chosen`` and ``rejected`` replies (strings or one assistant message object each);
  LLaMA-Factory's ``"ranking": true`` registry entries are such pairs.
* labelled completions (``KTODataset``): an SFT row of any layout whose last assistant turn is the
  completion, plus a boolean ``kto_tag`` column (true: desirable).

Each side's ids equal ``apply_chat_template(prompt + [reply])`` of the template in use; labels cover
the reply only (its content and end-of-turn token, as in SFT). Truncation rule: the prompt is never cut;
with ``truncation='truncate'`` a side longer than ``max_length`` loses tokens from the end of its reply
(each side separately, the same rule for both); a pair whose prompt leaves no room for a reply token, or
any over-long pair with ``truncation='drop'``, is dropped. Both are counted in :meth:`statistics`.

A KTO item also carries a *mismatched* completion for the KL estimate: row ``i``'s prompt with the
completion of row ``i + 1`` (wrapping), fixed by data order so reference log-probs can be precomputed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils.data import Dataset

from xtune.dataset.dataset_info import resolve_dataset
from xtune.dataset.encode import IGNORE_INDEX, EncodeOptions, encode_conversations
from xtune.dataset.formats import convert_row, fill_placeholders
from xtune.dataset.loading import iter_rows, load_rows
from xtune.dataset.tokenizer import load_tokenizer_with_template
from xtune.errors import ConfigError, DataError
from xtune.registry import DATASETS, FUNCTIONS

LAYOUTS = ("alpaca", "sharegpt", "openai", "preference")
TRUNCATIONS = ("truncate", "drop")


def masked_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    from xtune.engine.hooks.info import masked_text as show

    return show(tokenizer, input_ids, labels)


class _StageDataset(Dataset):
    """Shared building: resolve the data, load the tokenizer, read rows; subclasses encode them."""

    kind = ""

    def __init__(
        self,
        data_path: str,
        tokenizer: str,
        data_format: str | None = None,
        prompt_template: str = "auto",
        max_length: int = 2048,
        truncation: str = "truncate",
        placeholders: dict | None = None,
        columns: dict | None = None,
        tags: dict | None = None,
        dataset_info: str | None = None,
        skip_bad_rows: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {TRUNCATIONS}, got '{truncation}'.")
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}.")
        self.spec = resolve_dataset(data_path, data_format, columns, tags, dataset_info)
        if self.spec.data_format not in LAYOUTS:
            raise ConfigError(
                f"data_format '{self.spec.data_format}' cannot hold {self.kind}: use alpaca, sharegpt or openai "
                "layouts (rows with chosen/rejected, or a kto_tag label for KTO)."
            )
        self.tokenizer = load_tokenizer_with_template(tokenizer, prompt_template, trust_remote_code)
        self.max_length = max_length
        self.truncation = truncation
        self.placeholders = {k: str(v) for k, v in (placeholders or {}).items() if v is not None}
        self.skip_bad_rows = skip_bad_rows
        self.status: Counter = Counter()
        self.rows_read = 0
        self.items: list[dict[str, Any]] = []
        self._build()

    def _samples(self, spec) -> list[tuple[dict, dict, str]]:
        """(raw row, schema sample, where) for every usable row; bad rows raise or are counted."""
        out = []
        for row in iter_rows(load_rows(self.spec)):
            self.rows_read += 1
            where = f"{row.get('_source', self.spec.path)}, row {row.get('_row', '?')}"
            try:
                sample = convert_row(row, spec)
                sample = fill_placeholders(sample, self.placeholders) if self.placeholders else sample
                self._check(row, sample, where)
            except DataError as exc:
                if not self.skip_bad_rows:
                    raise
                self.status[f"dropped: bad row ({str(exc)[:120]})"] += 1
                continue
            out.append((row, sample, where))
        return out

    def _check(self, row: dict, sample: dict, where: str) -> None:
        """Stage-specific row checks (raise DataError)."""

    def _encode(self, messages: list[dict], tools, where: str) -> dict:
        """ids/labels of one conversation whose last assistant turn alone is trained (not truncated)."""
        options = EncodeOptions(max_length=10**9, mask_history=True)
        return encode_conversations(self.tokenizer, [{"messages": messages, "tools": tools}], options, [where])[0]

    def _fit(self, encoded: dict) -> tuple[dict | None, str]:
        """Apply the truncation rule to one side: (ids/labels or None when dropped, status)."""
        ids, labels = encoded["input_ids"], encoded["labels"]
        if not ids:
            return None, encoded["status"]
        prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        if prompt + 1 > self.max_length:
            return None, f"dropped: prompt longer than max_length={self.max_length}"
        if len(ids) <= self.max_length:
            return {"input_ids": ids, "labels": labels}, ""
        if self.truncation == "drop":
            return None, f"dropped: longer than max_length={self.max_length}"
        return {"input_ids": ids[: self.max_length], "labels": labels[: self.max_length]}, "truncated"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def metainfo(self) -> dict:
        return {"data_path": self.spec.path, "data_format": self.spec.data_format}


@DATASETS.register_module()
class PreferenceDataset(_StageDataset):
    """Preference pairs (chosen, rejected) sharing a prompt; see the module docstring. Arguments as
    :class:`xtune.dataset.SFTDataset` (no packing: a pair's two sides are compared with each other)."""

    kind = "preference pairs"

    def _check(self, row: dict, sample: dict, where: str) -> None:
        if sample["chosen"] == sample["rejected"]:
            raise DataError(f"{where}: chosen and rejected are identical. Drop the row; a pair must differ")

    def _build(self) -> None:
        spec = type(self.spec)(**{**self.spec.__dict__, "data_format": "preference"})
        for _, sample, where in self._samples(spec):
            sides = {}
            status = ""
            for side in ("chosen", "rejected"):
                encoded = self._encode(sample["messages"] + [sample[side]], sample["tools"], where)
                fitted, side_status = self._fit(encoded)
                if fitted is None:
                    status = side_status
                    break
                status = status or side_status
                sides[side] = fitted
            if len(sides) < 2:
                self.status[status] += 1
                continue
            if status:
                self.status[status] += 1
            self.items.append(
                {
                    "chosen_input_ids": sides["chosen"]["input_ids"],
                    "chosen_labels": sides["chosen"]["labels"],
                    "rejected_input_ids": sides["rejected"]["input_ids"],
                    "rejected_labels": sides["rejected"]["labels"],
                }
            )

    def __getitem__(self, index: int) -> dict:
        return {"index": index, **self.items[index]}

    def record(self, index: int) -> dict:
        """The pair as ``check-dataset --dump`` writes it."""
        return dict(self.items[index])

    def describe(self, index: int) -> str:
        item = self.items[index]
        chosen = masked_text(self.tokenizer, item["chosen_input_ids"], item["chosen_labels"])
        rejected = masked_text(self.tokenizer, item["rejected_input_ids"], item["rejected_labels"])
        return f"[chosen]\n{chosen}\n[rejected]\n{rejected}"

    @property
    def lengths(self) -> list[int]:
        return [len(i["chosen_input_ids"]) + len(i["rejected_input_ids"]) for i in self.items]

    def statistics(self) -> dict:
        status = Counter(self.status)
        trained = [sum(1 for x in i[f"{s}_labels"] if x != IGNORE_INDEX) for i in self.items for s in ("chosen",)]
        rejected = [sum(1 for x in i["rejected_labels"] if x != IGNORE_INDEX) for i in self.items]
        n = max(len(self.items), 1)
        return {
            "rows_read": self.rows_read,
            "pairs": len(self.items),
            "truncated": status.pop("truncated", 0),
            "dropped": dict(status),
            "tokens": int(sum(self.lengths)),
            "chosen_response_tokens_mean": round(sum(trained) / n, 2),
            "rejected_response_tokens_mean": round(sum(rejected) / n, 2),
            "max_length": self.max_length,
        }


@DATASETS.register_module()
class KTODataset(_StageDataset):
    """Completions labelled desirable or not (``kto_tag``); see the module docstring."""

    kind = "KTO rows"

    def _check(self, row: dict, sample: dict, where: str) -> None:
        column = self.spec.columns.get("kto_tag", "kto_tag")
        label = row.get(column)
        if not isinstance(label, bool):
            got = "missing" if label is None else f"{type(label).__name__} {label!r}"
            raise DataError(
                f"{where}: column '{column}' must be true or false (is the completion desirable?), got {got}. "
                "Add the label, or map your column with columns={'kto_tag': '<column>'}"
            )
        sample["kto_label"] = label

    def _build(self) -> None:
        spec = self.spec
        if spec.data_format == "preference":
            raise ConfigError(
                "KTO data are SFT rows with a kto_tag label: set data_format to alpaca, sharegpt or openai."
            )
        samples = self._samples(spec)
        if len(samples) < 2:
            raise DataError(
                f"{spec.path}: KTO needs at least 2 rows (the KL estimate pairs each prompt with another row's "
                f"completion); got {len(samples)}."
            )
        for i, (_, sample, where) in enumerate(samples):
            other = samples[(i + 1) % len(samples)][1]
            target, status = self._fit(self._encode(sample["messages"], sample["tools"], where))
            mismatched = sample["messages"][:-1] + [other["messages"][-1]]
            kl, kl_status = self._fit(self._encode(mismatched, sample["tools"], where))
            if target is None or kl is None:
                self.status[status if target is None else kl_status] += 1
                continue
            if status or kl_status:
                self.status[status or kl_status] += 1
            self.items.append(
                {
                    "input_ids": target["input_ids"],
                    "labels": target["labels"],
                    "kl_input_ids": kl["input_ids"],
                    "kl_labels": kl["labels"],
                    "kto_label": bool(sample["kto_label"]),
                }
            )

    def __getitem__(self, index: int) -> dict:
        return {"index": index, **self.items[index]}

    def record(self, index: int) -> dict:
        item = self.items[index]
        return {"input_ids": item["input_ids"], "labels": item["labels"], "kto_label": item["kto_label"]}

    def describe(self, index: int) -> str:
        item = self.items[index]
        label = "desirable" if item["kto_label"] else "undesirable"
        return f"[{label}]\n" + masked_text(self.tokenizer, item["input_ids"], item["labels"])

    @property
    def lengths(self) -> list[int]:
        return [len(i["input_ids"]) + len(i["kl_input_ids"]) for i in self.items]

    def statistics(self) -> dict:
        status = Counter(self.status)
        desirable = sum(1 for i in self.items if i["kto_label"])
        return {
            "rows_read": self.rows_read,
            "completions": len(self.items),
            "desirable": desirable,
            "undesirable": len(self.items) - desirable,
            "truncated": status.pop("truncated", 0),
            "dropped": dict(status),
            "tokens": int(sum(len(i["input_ids"]) for i in self.items)),
            "max_length": self.max_length,
        }


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) rows into ``input_ids``, ``labels`` and ``attention_mask``."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        labels[row, : len(ids)] = torch.as_tensor(row_labels)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


@FUNCTIONS.register_module()
def pair_collate_fn(batch: list[dict], pad_token_id: int = 0) -> dict:
    """Pairs into one padded batch: the B chosen rows, then the B rejected rows, and ``index`` (B,)."""
    rows = [(b["chosen_input_ids"], b["chosen_labels"]) for b in batch]
    rows += [(b["rejected_input_ids"], b["rejected_labels"]) for b in batch]
    return {**pad_rows(rows, pad_token_id), "index": torch.tensor([b["index"] for b in batch])}


@FUNCTIONS.register_module()
def kto_collate_fn(batch: list[dict], pad_token_id: int = 0) -> dict:
    """KTO items: the B completions, then their B mismatched (KL) completions, ``kto_label`` and ``index``."""
    rows = [(b["input_ids"], b["labels"]) for b in batch] + [(b["kl_input_ids"], b["kl_labels"]) for b in batch]
    out = pad_rows(rows, pad_token_id)
    out["kto_label"] = torch.tensor([b["kto_label"] for b in batch], dtype=torch.bool)
    out["index"] = torch.tensor([b["index"] for b in batch])
    return out
