"""Vision-language runs for the conversion tests: a FinetuneModel trained a few steps by hand on image batches
(the data layer's batch contract), saved as a checkpoint with the config that builds it.

Training goes through ``FinetuneModel(**batch, mode="loss")`` exactly as the loop calls it; only the runner
is left out, so these runs take a second.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from xtune.dataset.collate import sft_collate_fn
from xtune.hf.vision import load_processor

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}


@dataclass
class VisionRun:
    """A trained run: its config file, checkpoint, and the training model's logits on ``batch``."""

    config: Path
    checkpoint: Path
    settings: dict  # the config's model dict
    processor: object
    batch: dict  # image+prompt rows (the model's input contract)
    logits: torch.Tensor  # of the trained FinetuneModel, in eval mode, on ``batch``
    model: object  # the trained FinetuneModel


def image(i: int, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, ((70 * i) % 256, (210 - 50 * i) % 256, (40 + 80 * i) % 256))


def sample(processor, prompt: str, images: list, answer: str) -> dict:
    """One chat-templated sample whose user turn holds ``images`` before ``prompt``; the answer is trained."""
    tokenizer = processor.tokenizer
    counts = processor.token_counts([(img.height, img.width) for img in images])
    user = "".join(processor.image_text(n) for n in counts) + prompt
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids, "images": images}


def batch_of(processor, samples: list[dict]) -> dict:
    items = [{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples]
    batch = sft_collate_fn(items, pad_token_id=processor.tokenizer.pad_token_id)
    images = [img for s in samples for img in s["images"]]
    if images:
        batch["vision"] = processor.pixels(images)
    return batch


def _config_text(model: dict, tokenizer: str) -> str:
    return f"model = {model!r}\ntrain_dataset = dict(tokenizer={tokenizer!r}, prompt_template='auto')\n"


def vision_run(model: dict, work_dir: Path, steps: int = 3, lr: float = 2e-2) -> VisionRun:
    """Build ``model`` (a FinetuneModel config dict), train it ``steps`` steps on image batches and save
    ``iter_N.pth`` and the config beside it."""
    import xtune.model  # noqa: F401  (registers FinetuneModel)
    from xtune.registry import MODELS

    work_dir.mkdir(parents=True, exist_ok=True)
    settings = {"type": "FinetuneModel", "dtype": "fp32", "gradient_checkpointing": False, **model}
    lm = settings["pretrained_model_name_or_path"]
    processor = load_processor(lm, vision_tower=settings.get("vision_tower"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trained = MODELS.build(dict(settings))
    colour = sample(processor, "What colour?", [image(0)], "red")
    batches = [
        batch_of(processor, [colour, sample(processor, "hi", [], "hello")]),
        batch_of(processor, [sample(processor, "Compare them", [image(1), image(2)], "the first is darker")]),
        batch_of(processor, [sample(processor, "Describe it", [image(3, (64, 48))], "a green square")]),
    ]
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        trained(**batches[step % len(batches)], mode="loss")["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    checkpoint = work_dir / f"iter_{steps}.pth"
    torch.save({"state_dict": trained.state_dict(), "meta": {}}, checkpoint)
    config = work_dir / "run.py"
    config.write_text(_config_text(settings, lm))
    probe = batch_of(processor, [sample(processor, "What is it?", [image(5, (50, 40))], "")])
    trained.eval()
    with torch.no_grad():
        logits = trained(**probe, mode="tensor")
    return VisionRun(config, checkpoint, settings, processor, probe, logits, trained)
