"""Write the shipped tiny image-text demo: coloured shapes and questions a tiny model can learn.

    python tools/make_vision_demo.py          # rewrites data/vision_demo/images/*.png and the two JSON files

Twelve 32 x 32 PNGs (red/green/blue/yellow x circle/square/triangle on white, the tiny CLIP's input
size) in ``data/vision_demo/images/``, and two datasets over them, image paths relative to ``data/``
(the folder of ``data/dataset_info.json``, where registered datasets' image paths resolve):

* ``data/llava_pretrain_demo.json`` (LLaVA's JSON: ``image`` + ShareGPT ``conversations``): captions,
  ``<image>\\nDescribe the image.`` -> ``A red circle.``, for the projector-only pretrain stage;
* ``data/mllm_demo.json`` (LLaMA-Factory's layout: ``messages`` + ``images``): colour and shape
  questions, two-image comparisons, a follow-up turn and text-only rows, for the finetune stage.

The answers depend only on what the image shows, so training can be checked by asking them back.
It also writes ``data/models/tiny_clip``, the random-init tiny CLIP vision tower of the CPU demo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent / "data"
IMAGES = Path("vision_demo") / "images"  # relative to data/
SIZE = 32
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str) -> Image.Image:
    """One shape, filled, centred on white."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    pen = ImageDraw.Draw(image)
    box = (5, 5, SIZE - 6, SIZE - 6)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(SIZE // 2, 4), (SIZE - 5, SIZE - 6), (4, SIZE - 6)], fill=fill)
    return image


def _path(colour: str, shape: str) -> str:
    return str(IMAGES / f"{colour}_{shape}.png")


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pretrain_rows() -> list[dict]:
    """One caption per image, LLaVA's pretraining layout."""
    return [
        {
            "id": f"{colour}_{shape}",
            "image": _path(colour, shape),
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": f"A {colour} {shape}."},
            ],
        }
        for colour in COLOURS
        for shape in SHAPES
    ]


def finetune_rows() -> list[dict]:
    """Colour and shape questions (one image), comparisons (two images), a follow-up, text-only rows."""
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            image = [_path(colour, shape)]
            answer = _assistant(f"{colour.capitalize()}.")
            rows.append({"messages": [_user("<image>What colour is the shape?"), answer], "images": image})
            rows.append({"messages": [_user("<image>What shape is this?"), _assistant(f"A {shape}.")], "images": image})
    pairs = [("red", "circle", "red", "square"), ("blue", "triangle", "yellow", "triangle"),
             ("green", "square", "green", "circle"), ("yellow", "circle", "blue", "square")]  # fmt: skip
    for first_colour, first_shape, second_colour, second_shape in pairs:
        same = "Yes" if first_colour == second_colour else "No"
        rows.append(
            {
                "messages": [
                    _user("<image>\n<image>\nAre the two shapes the same colour?"),
                    _assistant(f"{same}: the first is {first_colour}, the second is {second_colour}."),
                ],
                "images": [_path(first_colour, first_shape), _path(second_colour, second_shape)],
            }
        )
    for colour, shape in (("green", "triangle"), ("blue", "circle")):
        rows.append(
            {
                "messages": [
                    _user("<image>What colour is the shape?"),
                    _assistant(f"{colour.capitalize()}."),
                    _user("And what shape is it?"),
                    _assistant(f"A {shape}."),
                ],
                "images": [_path(colour, shape)],
            }
        )
    rows += [
        {"messages": [_user("Which colours can the shapes be?"), _assistant("Red, green, blue or yellow.")]},
        {"messages": [_user("Which shapes are there?"), _assistant("Circles, squares and triangles.")]},
        {"messages": [_user("How many sides does a triangle have?"), _assistant("Three.")]},
    ]
    return rows


def write(root: Path = ROOT) -> list[Path]:
    """Write the images and both datasets under ``root``; the files written."""
    folder = root / IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for colour in COLOURS:
        for shape in SHAPES:
            file = root / _path(colour, shape)
            draw(colour, shape).save(file, optimize=True)
            written.append(file)
    for name, rows in (("llava_pretrain_demo.json", pretrain_rows()), ("mllm_demo.json", finetune_rows())):
        file = root / name
        file.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(file)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the data folder to write into (default: data/)")
    args = parser.parse_args()
    files = write(args.root)
    from xtune.testing.tiny_vision import make_tiny_clip

    # the tiny CLIP tower the CPU demo composes with data/models/tiny_llama (configs/tiny/llava_*)
    clip = make_tiny_clip(args.root / "models" / "tiny_clip")
    files += sorted(clip.iterdir())
    print(f"wrote {len(files)} files under {args.root} ({sum(f.stat().st_size for f in files)} bytes)")


if __name__ == "__main__":
    main()
