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

import hashlib
import os
from pathlib import Path

from xtune import paths
from xtune.dataset.dataset_info import DatasetSpec, check_stage, load_dataset_info
from xtune.dataset.images import DROPPED_IMAGE, IMAGE_COLUMNS, ImageRows, collapse_image_tokens, guess_format, open_rgb
from xtune.dataset.loading import ParsedRows, first_row
from xtune.dataset.sft import SFTDataset
from xtune.dataset.templates import set_chat_template
from xtune.errors import ConfigError
from xtune.hf.vision import load_processor
from xtune.registry import DATASETS

__all__ = ["DROPPED_IMAGE", "IMAGE_COLUMNS", "VisionSFTDataset", "collapse_image_tokens", "guess_format", "open_rgb"]
_LAYOUTS = ("alpaca", "sharegpt", "openai")


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
                spec.data_format = guess_format(first_row(spec))
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

    def _cache_key(self, spec: DatasetSpec, raw: ParsedRows) -> str:
        text = super()._cache_key(spec, raw)
        return hashlib.sha256(f"{text}:{self.media(spec).identity(raw.get(spec))}".encode()).hexdigest()[:24]

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
        """``text`` of item ``index`` as check-dataset prints it: its images with their token counts, and the
        image tokens as ``<image xN>``."""
        counts = [n for row in self.data[self._samples(index)]["image_tokens"] for n in row]
        images = [f"{path} ({n} tokens)" for path, n in zip(self.images(index), counts)]
        head = "images: " + (", ".join(images) if images else "none") + "\n"
        return head + collapse_image_tokens(text, self.processor.image_token, counts)

    def statistics(self) -> dict:
        stats = super().statistics()
        images = self.data.select_columns(["images", "image_tokens"])[self.valid.tolist()]
        stats["images"] = sum(len(paths_) for paths_ in images["images"])
        stats["image_tokens"] = int(sum(sum(counts) for counts in images["image_tokens"]))
        stats["samples_with_images"] = sum(1 for paths_ in images["images"] if paths_)
        return stats
