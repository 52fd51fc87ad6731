"""Image-text conversations for vision-language fine-tuning: :class:`VisionSFTDataset` (docs/multimodal.md).

Rows become the one conversation schema plus ``images`` (resolved file paths), through the SFT path
(:mod:`xtune.dataset.process`: conversion, caching, statistics, mixtures, the held-out split):

* LLaVA's JSON: ``image`` (one path) and ``conversations`` in ShareGPT style (``human``/``gpt``), the
  image marked ``<image>`` in the text;
* LLaMA-Factory's multimodal layout (``mllm_demo``): ``messages`` (``role``/``content``) and ``images``
  (a list of paths), registered with ``"columns": {"messages": "messages", "images": "images"}``;
* any other conversation format (alpaca, sharegpt, openai) with an ``images`` or ``image`` column.

Without ``data_format`` an unregistered file's format is read from its first row (``conversations`` or
``messages`` turns with ``from``: sharegpt; with ``role``: openai; otherwise alpaca).

Images: a row may hold several, or none (text-only rows mix freely). Each ``<image>`` marker stands
for the next image; a row with images and no marker at all gets them at the start of its first user
message (as LLaMA-Factory does). A marker/image count mismatch or a marker in an assistant turn is a
row-numbered :class:`~xtune.errors.DataError`. Each image is opened once at processing (size and a
PIL ``verify``): a missing or unreadable file is a row-numbered error naming the file and the folder
(or, with ``skip_bad_rows``, a counted skipped row). Its marker becomes the model's image text, the
image token once per feature (:meth:`VisionProcessor.token_counts` of its size), before the template
encodes the conversation, so image tokens sit in user turns; their labels are -100 even with
``train_on_prompt``.

Image paths: absolute, or relative to ``image_folder``. Without ``image_folder``, relative to the folder
of the ``dataset_info.json`` that registers the dataset (LLaMA-Factory's ``media_dir`` default, its
``dataset_dir``), or for a file or folder given by path, to the folder of the data file itself.

Length: truncation never cuts an image. A sample whose image tokens do not all fit ``max_length`` is
dropped and counted (``dropped: image past max_length``); text after the last image is cut as in SFT.

Items: :meth:`VisionSFTDataset.__getitem__` gives the SFT item plus ``vision``, the image processor's
tensors for the item's images in token order (packed rows: their samples' images in row order),
absent when the item has none. :func:`xtune.dataset.collate.vision_collate_fn` batches them.
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

from xtune import paths
from xtune.dataset.dataset_info import DatasetSpec, check_stage, load_dataset_info
from xtune.dataset.encode import IGNORE_INDEX, EncodeOptions, _finish
from xtune.dataset.loading import iter_rows, load_rows
from xtune.dataset.sft import SFTDataset
from xtune.dataset.templates import set_chat_template
from xtune.errors import ConfigError, DataError
from xtune.hf.vision import IMAGE_PLACEHOLDER, VisionProcessor, expand_image_markers, load_processor
from xtune.registry import DATASETS

IMAGE_COLUMNS = ("images", "image")
"""Where a row's images are when ``columns`` does not say: LLaMA-Factory's list, LLaVA's single path."""
DROPPED_IMAGE = "dropped: image past max_length"
_LAYOUTS = ("alpaca", "sharegpt", "openai")


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
    features = {"images": datasets.Sequence(datasets.Value("string")), "image_tokens": datasets.Value("int64")}

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
                f"{str(value)[:80]}. Write file paths (absolute, or relative to image_folder)"
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
                    "against. Set image_folder to the folder the image paths are relative to"
                )
        return os.path.abspath(path)

    def _size(self, path: str, value: str, row: dict, where: str) -> tuple[int, int]:
        """(height, width) of an image, checked readable."""
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(path):
            raise DataError(
                f"{where}: image {value!r} not found: no file {path} ({self._folder_note(row)}). Fix the path, "
                "or set image_folder to the folder the image paths are relative to"
            )
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DataError(
                f"{where}: image {path} is not a readable image ({str(exc)[:120]}). Replace the file, or drop the row"
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
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            marked = {**messages[first], "content": IMAGE_PLACEHOLDER * len(images) + messages[first]["content"]}
            messages = [*messages[:first], marked, *messages[first + 1 :]]
        try:
            messages = expand_image_markers(messages, counts, self.processor)
        except DataError as exc:
            raise DataError(f"{where}: {exc}.") from None
        return {**sample, "messages": messages, "images": images, "image_tokens": sum(counts)}

    def encode_options(self, options: EncodeOptions) -> EncodeOptions:
        # Encoded whole: finish() applies max_length, knowing where the images are.
        return dataclasses.replace(options, max_length=2**62)

    def finish(self, result: dict, sample: dict, options: EncodeOptions, where: str) -> dict:
        """Image tokens checked and untrained, then the length rule: truncation never cuts an image."""
        ids, labels = result["input_ids"], result["labels"]
        if not ids:
            return {**result, **self.empty()}
        expected = sample["image_tokens"]
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
        out = _finish(ids, labels, options)
        kept = bool(out["input_ids"])
        return {**out, "images": sample["images"] if kept else [], "image_tokens": expected if kept else 0}

    def empty(self) -> dict:
        return {"images": [], "image_tokens": 0}

    # ----------------------------------------------------------------------------- cache
    def identity(self, spec: DatasetSpec) -> str:
        """A digest of what decides the images' part of the processed rows: the image processor's settings,
        the image token, where paths resolve and each referenced file's path, size and mtime (not its
        content: image folders are large)."""
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
        raw = load_rows(spec)
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


def collapse_image_tokens(text: str, image_token: str) -> str:
    """``text`` with each run of ``image_token`` shown as ``<image xN>`` (N tokens), for people to read."""
    token = re.escape(image_token)
    return re.sub(f"(?:{token})+", lambda m: f"<image x{len(m.group(0)) // len(image_token)}>", text)


@DATASETS.register_module()
class VisionSFTDataset(SFTDataset):
    """Image-text conversations, tokenised with images expanded, masked and optionally packed.

    Args as :class:`xtune.dataset.SFTDataset` (``data_format`` may be left out for unregistered files:
    guessed from the first row), plus:
        tokenizer: The model folder: a vision-language model (its processor is used), or for LLaVA-style
            training the causal LM (with ``vision_tower``).
        vision_tower: LLaVA-style: the CLIP/SigLIP folder whose image processor is used (the LM's
            tokenizer gets an ``<image>`` token).
        image_folder: The folder relative image paths are under (see the module docstring for the default).
        pack_to_max_length: Pack samples into rows (default False). Only for families whose rows pack
            (LLaVA); Qwen-VL families refuse it.

    Text pretraining (``data_format='text'``) and preference data do not apply.
    """

    def __init__(
        self,
        data_path: str | list,
        tokenizer: str,
        vision_tower: str | None = None,
        image_folder: str | None = None,
        data_format: str | None = None,
        prompt_template: str = "auto",
        max_length: int = 2048,
        pack_to_max_length: bool = False,
        truncation: str = "truncate",
        train_on_prompt: bool = False,
        mask_history: bool = False,
        keep_history_reasoning: bool = False,
        placeholders: dict | None = None,
        columns: dict | None = None,
        tags: dict | None = None,
        dataset_info: str | None = None,
        skip_bad_rows: bool = False,
        seed: int = 0,
        val_size: float = 0.0,
        part: str = "train",
        num_proc: int = 1,
        cache: bool = True,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if image_folder is not None and not Path(image_folder).expanduser().is_dir():
            raise ConfigError(
                f"image_folder {image_folder!r} is not a folder. Set it to the folder the image paths in the data "
                "are relative to, or leave it unset (see docs/multimodal.md)."
            )
        self.vision_tower = vision_tower
        self.image_folder = os.path.abspath(Path(image_folder).expanduser()) if image_folder else None
        self._format_given = data_format is not None
        self._registry_file = Path(dataset_info).expanduser() if dataset_info else paths.DATASET_INFO
        self._registry = load_dataset_info(dataset_info)
        self._wants_packing = pack_to_max_length
        self._media: dict[str, ImageRows] = {}
        super().__init__(
            data_path,
            tokenizer,
            data_format=data_format,
            prompt_template=prompt_template,
            max_length=max_length,
            pack_to_max_length=pack_to_max_length,
            truncation=truncation,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
            keep_history_reasoning=keep_history_reasoning,
            placeholders=placeholders,
            columns=columns,
            tags=tags,
            dataset_info=dataset_info,
            skip_bad_rows=skip_bad_rows,
            concat_texts=False,
            seed=seed,
            val_size=val_size,
            part=part,
            num_proc=num_proc,
            cache=cache,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
        )

    # ----------------------------------------------------------------------------- building
    def _registered(self, spec: DatasetSpec) -> bool:
        return spec.name in self._registry

    def _check_specs(self) -> None:
        for spec in self.specs:
            if not self._format_given and not self._registered(spec) and spec.data_format == "alpaca":
                spec.data_format = guess_format(load_rows(spec)[0])
            if spec.data_format not in _LAYOUTS:
                raise ConfigError(
                    f"dataset '{spec.name}' is {spec.data_format} data; image-text training reads conversations: "
                    f"data_format must be one of {', '.join(_LAYOUTS)} (with an images column)."
                )
            check_stage(spec, "vision sft", uses=("images",))

    def _load_tokenizer(self, tokenizer: str, prompt_template: str, trust_remote_code: bool):
        self.processor = load_processor(tokenizer, vision_tower=self.vision_tower, trust_remote_code=trust_remote_code)
        if self._wants_packing and not self.processor.family.packs:
            raise ConfigError(
                f"{self.processor.model_type} models compute their multimodal positions from whole rows, so packed "
                "rows would mix samples' positions. Set pack_to_max_length=False."
            )
        set_chat_template(self.processor.tokenizer, prompt_template)
        return self.processor.tokenizer

    def media(self, spec: DatasetSpec) -> ImageRows:
        """The image handling of one dataset of the mixture."""
        if spec.name not in self._media:
            local_registry = self._registered(spec) and not spec.from_hub
            self._media[spec.name] = ImageRows(
                self.processor,
                image_folder=self.image_folder,
                base=os.path.abspath(self._registry_file.parent) if local_registry else None,
                column=spec.columns.get("images"),
                from_hub=spec.from_hub,
            )
        return self._media[spec.name]

    def _process_kwargs(self, spec: DatasetSpec) -> dict:
        return {**super()._process_kwargs(spec), "media": self.media(spec)}

    def _cache_key(self, spec: DatasetSpec) -> str:
        text = super()._cache_key(spec)
        return hashlib.sha256(f"{text}:{self.media(spec).identity(spec)}".encode()).hexdigest()[:24]

    # ----------------------------------------------------------------------------- access
    def _samples(self, index: int) -> list[int]:
        return list(self.rows[index]) if self.pack else [int(self.valid[index])]

    def images(self, index: int) -> list[str]:
        """The image files of item ``index``, in token order."""
        return [path for paths_ in self.data[self._samples(index)]["images"] for path in paths_]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        images = self.images(index)
        if images:
            item["vision"] = self.processor.pixels([open_rgb(path) for path in images])
        return item

    def record(self, index: int) -> dict:
        """The item as ``check-dataset --dump`` writes it: ids, labels and image paths, no pixels."""
        item = SFTDataset.__getitem__(self, index)
        return {**item, "images": self.images(index)}

    def shown(self, index: int, text: str) -> str:
        """``text`` of item ``index`` as check-dataset prints it: its images, and image tokens as ``<image xN>``."""
        counts = self.data[self._samples(index)]["image_tokens"]
        images = self.images(index)
        head = "images: " + (", ".join(images) if images else "none") + f" ({sum(counts)} image tokens)\n"
        return head + collapse_image_tokens(text, self.processor.image_token)

    def statistics(self) -> dict:
        stats = super().statistics()
        images = self.data.select_columns(["images", "image_tokens"])[self.valid.tolist()]
        stats["images"] = sum(len(paths_) for paths_ in images["images"])
        stats["image_tokens"] = int(sum(images["image_tokens"]))
        stats["samples_with_images"] = sum(1 for paths_ in images["images"] if paths_)
        return stats
