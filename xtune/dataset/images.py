"""The images of image-text rows: where they are, whether they open, how many tokens each becomes.

:class:`ImageRows` is what :class:`xtune.dataset.vision.VisionSFTDataset` adds to the SFT processing path
(:func:`xtune.dataset.process.process_batch`, as its ``RowMedia``): it reads a row's image column, resolves
and checks each file, writes each ``<image>`` marker as the model's image tokens, keeps those tokens out of
the loss and out of truncation's reach, and says what the processed rows depend on for the cache. The
rules are in the module docstring of :mod:`xtune.dataset.vision`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import datasets

from xtune.dataset.encode import IGNORE_INDEX, EncodeOptions, fit_length
from xtune.dataset.loading import iter_rows
from xtune.errors import DataError
from xtune.hf.vision import IMAGE_PLACEHOLDER, VisionProcessor, expand_image_markers

IMAGE_COLUMNS = ("images", "image")
"""Where a row's images are when ``columns`` does not say: LLaMA-Factory's list, LLaVA's single path."""
DROPPED_IMAGE = "dropped: image past max_length"


def guess_format(row: dict[str, Any]) -> str:
    """The conversation format of a raw row: sharegpt (``from`` turns), openai (``role`` turns) or alpaca."""
    for column in ("conversations", "messages"):
        turns = row.get(column)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return "sharegpt" if "from" in turns[0] else "openai"
    return "alpaca"


def open_rgb(path: str):
    """The image at ``path`` as an RGB PIL image.

    Raises:
        DataError: The file is missing or unreadable (it was readable when the data was processed).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"image {path} cannot be read any more ({exc}); it was readable when the data was processed. "
            "Restore the file, or rebuild the processed data (cache=False)."
        ) from None


@dataclasses.dataclass
class ImageRows:
    """The images of each row, for :func:`xtune.dataset.process.process_batch` (a ``RowMedia``).

    Attributes:
        processor: The model's processor (image token, token counts).
        image_folder: Where relative image paths resolve (None: ``base``, or each data file's folder).
        base: The registry's folder for a registered dataset, else None.
        column: The row column holding images (None: ``images`` or ``image``, whichever a row has).
        from_hub: The rows come from the Hub (no data file folder to resolve against).
    """

    processor: VisionProcessor
    image_folder: str | None = None
    base: str | None = None
    column: str | None = None
    from_hub: bool = False

    uses = ("images",)
    # image_tokens: each image's token count, in the order of images
    features = {
        "images": datasets.Sequence(datasets.Value("string")),
        "image_tokens": datasets.Sequence(datasets.Value("int64")),
    }

    def __post_init__(self) -> None:
        tokenizer = self.processor.tokenizer
        before, _, after = self.processor.family.image_text.partition("{tokens}")
        # The family's markers around an image (Qwen's <|vision_start|>, <|vision_end|>) are never trained.
        self.tail = len(tokenizer(after, add_special_tokens=False)["input_ids"]) if after else 0
        markers = tokenizer(before + after, add_special_tokens=False)["input_ids"] if before + after else []
        self.untrained = {self.processor.image_token_id, *markers}

    # ----------------------------------------------------------------------------- paths
    def _folder_note(self, row: dict) -> str:
        if self.image_folder:
            return f"image_folder={self.image_folder}"
        base = self.base or (str(Path(row.get("_source", ".")).parent) if not self.from_hub else None)
        return f"image_folder is not set: relative paths resolve against {base}"

    def raw_paths(self, row: dict, where: str) -> tuple[str | None, list[str]]:
        """The row's image column and the paths written there (empty for a text-only row)."""
        column = self.column or next((c for c in IMAGE_COLUMNS if row.get(c) not in (None, "", [])), None)
        value = row.get(column) if column else None
        if value in (None, "", []):
            return column, []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise DataError(
                f"{where}: column '{column}' must be an image path or a list of image paths, got "
                f"{str(value)[:80]}. Write file paths (absolute, or relative to image_folder)."
            )
        return column, value

    def resolve(self, value: str, row: dict, where: str) -> str:
        """The absolute path of an image path written in ``row``."""
        path = Path(value).expanduser()
        if not path.is_absolute():
            if self.image_folder:
                path = Path(self.image_folder) / path
            elif self.base:
                path = Path(self.base) / path
            elif not self.from_hub:
                path = Path(row.get("_source", ".")).parent / path
            else:
                raise DataError(
                    f"{where}: image path {value!r} is relative, and a Hub dataset has no folder to resolve it "
                    "against. Set image_folder to the folder the image paths are relative to."
                )
        return os.path.abspath(path)

    def _size(self, path: str, value: str, row: dict, where: str) -> tuple[int, int]:
        """(height, width) of an image, checked readable."""
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(path):
            raise DataError(
                f"{where}: image {value!r} not found: no file {path} ({self._folder_note(row)}). Fix the path, "
                "or set image_folder to the folder the image paths are relative to."
            )
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DataError(
                f"{where}: image {path} is not a readable image ({str(exc)[:120]}). Replace the file, or drop the row."
            ) from None
        return height, width

    # ----------------------------------------------------------------------------- RowMedia
    def prepare(self, row: dict, sample: dict, where: str) -> dict:
        """The sample with its images resolved and checked and its markers expanded into image tokens."""
        _, values = self.raw_paths(row, where)
        images = [self.resolve(value, row, where) for value in values]
        counts = self.processor.token_counts([self._size(p, v, row, where) for p, v in zip(images, values)])
        messages = sample["messages"]
        for turn, message in enumerate(messages, 1):
            if message["role"] == "assistant" and IMAGE_PLACEHOLDER in (message.get("content") or ""):
                raise DataError(
                    f"{where}: message {turn} is an assistant message holding {IMAGE_PLACEHOLDER} (the model would "
                    f"be trained to write image tokens). Move the marker into the user message that shows the image."
                )
        markers = sum((m.get("content") or "").count(IMAGE_PLACEHOLDER) for m in messages)
        if images and not markers:
            first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first is None:
                raise DataError(
                    f"{where}: the row has {len(images)} image(s) but no {IMAGE_PLACEHOLDER} marker and no user "
                    f"message to put them in. Write {IMAGE_PLACEHOLDER} where each image belongs."
                )
            marked = {**messages[first], "content": IMAGE_PLACEHOLDER * len(images) + messages[first]["content"]}
            messages = [*messages[:first], marked, *messages[first + 1 :]]
        try:
            messages = expand_image_markers(messages, counts, self.processor)
        except DataError as exc:
            raise DataError(f"{where}: {exc}.") from None
        return {**sample, "messages": messages, "images": images, "image_tokens": counts}

    def encode_options(self, options: EncodeOptions) -> EncodeOptions:
        # Encoded whole: finish() applies max_length, knowing where the images are.
        return dataclasses.replace(options, max_length=2**62)

    def finish(self, result: dict, sample: dict, options: EncodeOptions, where: str) -> dict:
        """Image tokens checked and untrained, then the length rule: truncation never cuts an image."""
        ids, labels = result["input_ids"], result["labels"]
        if not ids:
            return {**result, **self.empty()}
        expected = sum(sample["image_tokens"])
        found = ids.count(self.processor.image_token_id)
        if found != expected:
            raise DataError(
                f"{where}: the encoded conversation holds {found} image tokens but its "
                f"{len(sample['images'])} image(s) need {expected}: the text itself holds the image token "
                f"{self.processor.image_token!r}. Remove it from the text; mark images with {IMAGE_PLACEHOLDER}"
            )
        labels = [IGNORE_INDEX if token in self.untrained else label for token, label in zip(ids, labels)]
        if expected and len(ids) > options.max_length and options.truncation == "truncate":
            last = len(ids) - 1 - ids[::-1].index(self.processor.image_token_id)
            if last + 1 + self.tail > options.max_length:
                return {"input_ids": [], "labels": [], "status": DROPPED_IMAGE, **self.empty()}
        out = fit_length(ids, labels, options)
        kept = bool(out["input_ids"])
        return {
            **out,
            "images": sample["images"] if kept else [],
            "image_tokens": sample["image_tokens"] if kept else [],
        }

    def empty(self) -> dict:
        return {"images": [], "image_tokens": []}

    # ----------------------------------------------------------------------------- cache
    def identity(self, raw: datasets.Dataset) -> str:
        """A digest of what decides the images' part of the processed rows: the image processor's settings,
        the image token, where paths resolve and each referenced file's path, size and mtime (not its
        content: image folders are large).

        Args:
            raw: The dataset's raw rows (:func:`xtune.dataset.loading.load_rows`).
        """
        digest = hashlib.sha256()
        settings = {
            "image_processor": self.processor.image_processor.to_json_string(),
            "image_token": self.processor.image_token,
            "image_seq_length": self.processor.image_seq_length,
            "model_type": self.processor.model_type,
            "image_folder": self.image_folder,
            "base": self.base,
            "column": self.column,
        }
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        wanted = [c for c in ((self.column,) if self.column else IMAGE_COLUMNS) if c in raw.column_names]
        if not wanted:
            return digest.hexdigest()
        for row in iter_rows(raw.select_columns([*wanted, "_source"])):
            try:
                _, values = self.raw_paths(row, "")
                found = [self.resolve(value, row, "") for value in values]
            except DataError:
                digest.update(repr(row).encode())  # an unusable value: the row's error depends on it alone
                continue
            for path in found:
                try:
                    stat = os.stat(path)
                    digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}:missing\n".encode())
        return digest.hexdigest()


def collapse_image_tokens(text: str, image_token: str, counts: list[int] | None = None) -> str:
    """``text`` with image tokens shown as ``<image xN>``, for people to read.

    Each run of ``image_token`` is one image, or with ``counts`` (each image's tokens, in order) as many
    images as those counts fill: adjacent images (``<image><image>``) are told apart.
    """
    remaining = list(counts or [])

    def show(run: re.Match) -> str:
        length = len(run.group(0)) // len(image_token)
        parts = []
        while remaining and length >= remaining[0] > 0:
            parts.append(remaining.pop(0))
            length -= parts[-1]
        parts += [length] if length else []
        return "".join(f"<image x{n}>" for n in parts)

    return re.sub(f"(?:{re.escape(image_token)})+", show, text)
