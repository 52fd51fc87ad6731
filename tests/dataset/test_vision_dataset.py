"""VisionSFTDataset: both data layouts, image tokens and labels, pixels, collation, errors, length rule, cache,
check-dataset, and the shipped demo."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from xtune.cli import main
from xtune.dataset import SFTDataset, VisionSFTDataset, sft_collate_fn, vision_collate_fn
from xtune.dataset.encode import IGNORE_INDEX
from xtune.dataset.vision import DROPPED_IMAGE, collapse_image_tokens
from xtune.errors import ConfigError, DataError
from xtune.hf.vision import load_processor
from xtune.paths import MODEL_DIR
from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm

LM = str(MODEL_DIR / "tiny_llama")
DATA = Path(__file__).resolve().parents[2] / "data"
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_models")
    return {
        "clip": str(make_tiny_clip(root / "clip")),
        "llava": str(make_tiny_vlm("llava", root / "llava")),
        "qwen": str(make_tiny_vlm("qwen2_5_vl", root / "qwen")),
    }


@pytest.fixture
def images(tmp_path):
    """A folder of distinct solid-colour images (sizes differ, so Qwen's token counts differ)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (name, colour) in enumerate(COLOURS.items()):
        Image.new("RGB", (32 + 28 * i, 32), colour).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def write(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def llava_style(models, data_path, **kwargs) -> VisionSFTDataset:
    """LLaVA-style: the tiny LM's tokenizer with <image> added, the tiny CLIP's image processor."""
    kwargs = {"prompt_template": "llava", "cache": False, "max_length": 256, **kwargs}
    return VisionSFTDataset(data_path, LM, vision_tower=models["clip"], **kwargs)


MIXED = [
    {"messages": [user("<image>What colour?"), assistant("Red.")], "images": ["red.png"]},
    {"messages": [user("Which colours are there?"), assistant("Red, green and blue.")]},
    {"messages": [user("<image> and <image>: same?"), assistant("No.")], "images": ["green.png", "blue.png"]},
    {"messages": [user("No marker here."), assistant("Blue.")], "images": ["blue.png"]},
]


def image_tokens(dataset, item) -> list[int]:
    return [i for i, t in enumerate(item["input_ids"]) if t == dataset.processor.image_token_id]


# ----------------------------------------------------------------------------- layouts


def test_llava_json_trains_the_caption_only_with_the_images_tokens_in_the_prompt(models):
    dataset = llava_style(models, "llava_pretrain_demo")
    stats = dataset.statistics()
    assert stats["samples"] == 12 and stats["images"] == 12 and stats["image_tokens"] == 12 * 16
    item = dataset[0]
    assert len(image_tokens(dataset, item)) == 16  # (32 / 8) ** 2 patches of the tiny CLIP
    trained = dataset.tokenizer.decode([t for t, label in zip(item["input_ids"], item["labels"]) if label != -100])
    assert trained.strip().startswith("A red circle.")
    assert item["vision"]["pixel_values"].shape == (1, 3, 32, 32)
    expected = dataset.processor.pixels([Image.open(DATA / "vision_demo/images/red_circle.png").convert("RGB")])
    assert torch.equal(item["vision"]["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_mllm_layout_with_several_images_and_text_only_rows(models, family):
    dataset = VisionSFTDataset("mllm_demo", models[family], cache=False, max_length=256)
    rows = json.loads((DATA / "mllm_demo.json").read_text())
    stats = dataset.statistics()
    assert stats["samples"] == len(rows) and stats["dropped"] == {}
    assert stats["images"] == sum(len(r.get("images", ())) for r in rows)
    assert stats["samples_with_images"] == sum(1 for r in rows if r.get("images"))
    for index, row in enumerate(rows):
        item = dataset[index]
        files = [str(DATA / p) for p in row.get("images", ())]
        assert dataset.images(index) == files
        sizes = [Image.open(f).size[::-1] for f in files]
        assert len(image_tokens(dataset, item)) == sum(dataset.processor.token_counts(sizes))
        assert ("vision" in item) == bool(files)


def test_unregistered_files_guess_their_layout_and_resolve_paths(models, images, tmp_path):
    llava_rows = [
        {"id": "1", "image": "red.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                           {"from": "gpt", "value": "Red."}]},
        {"id": "2", "image": str(images / "blue.png"), "conversations": [{"from": "human", "value": "<image>Hm?"},
                                                                        {"from": "gpt", "value": "Blue."}]},
    ]  # fmt: skip
    data = write(tmp_path / "llava.json", llava_rows)
    dataset = llava_style(models, data, image_folder=str(images))
    assert dataset.spec.data_format == "sharegpt"
    assert [dataset.images(i) for i in range(2)] == [[str(images / "red.png")], [str(images / "blue.png")]]
    # Without image_folder, relative paths resolve against the data file's own folder.
    beside = write(images / "beside.json", MIXED)
    dataset = llava_style(models, beside)
    assert dataset.spec.data_format == "openai"
    assert dataset.images(2) == [str(images / "green.png"), str(images / "blue.png")]


# ----------------------------------------------------------------------------- tokens, labels, pixels


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_image_tokens_are_never_trained_and_match_the_processor(models, images, tmp_path, family, train_on_prompt):
    data = write(tmp_path / "mixed.json", MIXED)
    dataset = VisionSFTDataset(
        data, models[family], image_folder=str(images), train_on_prompt=train_on_prompt, cache=False, max_length=512
    )
    processor = dataset.processor
    for index, row in enumerate(MIXED):
        item = dataset[index]
        sizes = [Image.open(images / name).size[::-1] for name in row.get("images", ())]
        positions = image_tokens(dataset, item)
        assert len(positions) == sum(processor.token_counts(sizes))
        assert all(item["labels"][p] == IGNORE_INDEX for p in positions)
        assert any(label != IGNORE_INDEX for label in item["labels"])
        if family == "qwen":  # the family's markers around each image are not trained either
            starts = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
            assert all(label == IGNORE_INDEX for t, label in zip(item["input_ids"], item["labels"]) if t == starts)
    # A row with images and no marker gets them at the start of its first user message.
    text = processor.tokenizer.decode(dataset[3]["input_ids"])
    assert text.index(processor.image_token) < text.index("No marker here.")
    two = dataset[2]["vision"]
    expected = processor.pixels([Image.open(images / n).convert("RGB") for n in ("green.png", "blue.png")])
    assert two.keys() == expected.keys()
    for key in two:
        assert torch.equal(two[key], expected[key])
    if family == "qwen":
        grids = two["image_grid_thw"]
        assert grids.shape == (2, 3) and two["pixel_values"].shape[0] == int(grids.prod(-1).sum())
    else:
        assert two["pixel_values"].shape == (2, 3, 32, 32)


def test_collate_concatenates_images_in_item_order_with_a_packed_row(models, images, tmp_path):
    rows = [
        {"messages": [user("<image>A?"), assistant("Red.")], "images": ["red.png"]},
        {"messages": [user("<image>B?"), assistant("Green.")], "images": ["green.png"]},
        {"messages": [user("Text only, and long enough to need a row of its own " * 3), assistant("Yes.")]},
        {"messages": [user("<image>C?"), assistant("Blue.")], "images": ["blue.png"]},
    ]
    data = write(tmp_path / "pack.json", rows)
    dataset = llava_style(models, data, image_folder=str(images), pack_to_max_length=True, max_length=80)
    packed = [i for i in range(len(dataset)) if len(dataset.images(i)) == 2]
    text_only = [i for i in range(len(dataset)) if not dataset.images(i)]
    assert packed and text_only, [dataset.rows, dataset.lengths]
    row = dataset[packed[0]]
    starts = [j for j, p in enumerate(row["position_ids"]) if p == 0]
    assert len(starts) == 2 and len(image_tokens(dataset, row)) == 32
    batch_items = [dataset[text_only[0]], row, dataset[3 - packed[0] - text_only[0]]]
    batch = vision_collate_fn(batch_items, pad_token_id=dataset.tokenizer.pad_token_id)
    order = [p for item in (text_only[0], packed[0], 3 - packed[0] - text_only[0]) for p in dataset.images(item)]
    expected = dataset.processor.pixels([Image.open(p).convert("RGB") for p in order])["pixel_values"]
    assert torch.equal(batch["vision"]["pixel_values"], expected)
    assert (batch["input_ids"] == dataset.processor.image_token_id).sum() == 16 * len(order)
    text = vision_collate_fn([dataset[text_only[0]]], 3)
    assert "vision" not in text
    plain = sft_collate_fn([dataset[text_only[0]]], 3)
    assert text.keys() == plain.keys() and all(torch.equal(text[k], plain[k]) for k in plain)


# ----------------------------------------------------------------------------- errors and counts

BAD = {
    "missing": ({"messages": [user("<image>Hm?"), assistant("A.")], "images": ["nowhere.png"]}, "nowhere.png"),
    "corrupt": ({"messages": [user("<image>Hm?"), assistant("A.")], "images": ["broken.png"]}, "broken.png"),
    "mismatch": ({"messages": [user("<image><image>Hm?"), assistant("A.")], "images": ["red.png"]}, "2 <image>"),
    "assistant": (
        {"messages": [user("<image>Hm?"), assistant("<image> A.")], "images": ["red.png"]},
        "assistant message",
    ),
    "marker_no_image": ({"messages": [user("<image>Hm?"), assistant("A.")]}, "0 image(s)"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_rows_are_row_numbered_errors(models, images, tmp_path, kind):
    row, fragment = BAD[kind]
    data = write(tmp_path / "bad.json", [MIXED[0], row])
    with pytest.raises(DataError) as info:
        llava_style(models, data, image_folder=str(images))
    message = str(info.value)
    assert "bad.json, row 2" in message and fragment in message and "skip_bad_rows" in message
    if kind == "missing":
        assert f"image_folder={images}" in message and str(images / "nowhere.png") in message


def test_skip_bad_rows_counts_every_bad_row(models, images, tmp_path):
    data = write(tmp_path / "bad.json", [MIXED[0]] + [row for row, _ in BAD.values()])
    stats = llava_style(models, data, image_folder=str(images), skip_bad_rows=True).statistics()
    assert stats["samples"] == 1 and stats["rows_read"] == 1 + len(BAD)
    assert stats["skipped_bad_rows"]["count"] == len(BAD) and stats["dropped"] == {"dropped: bad row": len(BAD)}


def test_truncation_never_cuts_an_image(models, images, tmp_path):
    rows = [
        {"messages": [user("word " * 30 + "<image>"), assistant("Red.")], "images": ["red.png"]},
        {"messages": [user("<image>" + "word " * 30), assistant("Red.")], "images": ["red.png"]},
    ]
    data = write(tmp_path / "long.json", rows)
    dataset = llava_style(models, data, image_folder=str(images), max_length=30, train_on_prompt=True)
    stats = dataset.statistics()
    assert stats["dropped"] == {DROPPED_IMAGE: 1} and stats["truncated"] == 1 and stats["samples"] == 1
    item = dataset[0]
    assert len(item["input_ids"]) == 30 and len(image_tokens(dataset, item)) == 16
    assert dataset.images(0) == [str(images / "red.png")]


def test_packing_is_refused_for_qwen_and_other_stages_columns_are_refused(models, tmp_path):
    with pytest.raises(ConfigError, match="pack_to_max_length=False"):
        VisionSFTDataset("mllm_demo", models["qwen"], pack_to_max_length=True, cache=False)
    registry = tmp_path / "dataset_info.json"
    write(tmp_path / "v.json", [{"messages": [user("Hi"), assistant("Yo")], "videos": ["a.mp4"]}])
    registry.write_text(
        json.dumps({"v": {"file_name": "v.json", "formatting": "openai", "columns": {"videos": "videos"}}})
    )
    with pytest.raises(ConfigError, match="multimodal \\(video\\) stage"):
        VisionSFTDataset("v", models["llava"], dataset_info=str(registry), cache=False)
    with pytest.raises(ConfigError, match="cannot train the sft stage"):  # text SFT still refuses images
        SFTDataset("mllm_demo", LM, cache=False)
    llava_file = str(DATA / "llava_pretrain_demo.json")  # unregistered: LLaVA's "image" column is seen too
    with pytest.raises(DataError, match="row 1: column 'image' holds images"):
        SFTDataset(llava_file, LM, data_format="sharegpt", cache=False)


def test_cache_key_follows_the_image_files_and_image_folder(models, images, tmp_path):
    data = write(tmp_path / "mixed.json", MIXED)
    cache = str(tmp_path / "cache")
    first = llava_style(models, data, image_folder=str(images), cache=True, cache_dir=cache)
    again = llava_style(models, data, image_folder=str(images), cache=True, cache_dir=cache)
    assert first.cache_key() == again.cache_key() and again.statistics() == first.statistics()
    other = tmp_path / "other"
    shutil.copytree(images, other)
    moved = llava_style(models, data, image_folder=str(other), cache=True, cache_dir=cache)
    assert moved.cache_key() != first.cache_key() and moved.images(0) == [str(other / "red.png")]
    Image.new("RGB", (40, 40), "red").save(images / "red.png")
    stat = os.stat(images / "red.png")
    os.utime(images / "red.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert llava_style(models, data, image_folder=str(images), cache=True, cache_dir=cache).cache_key() not in (
        first.cache_key(),
        moved.cache_key(),
    )


# ----------------------------------------------------------------------------- tools and shipped data


def test_check_dataset_shows_images_and_their_token_counts(models, tmp_path, capsys):
    config = tmp_path / "vision_check.py"
    config.write_text(
        f"train_dataset = dict(type='VisionSFTDataset', data_path='mllm_demo', tokenizer={LM!r}, "
        f"vision_tower={models['clip']!r}, prompt_template='llava', max_length=256, cache=False)\n"
    )
    dump = tmp_path / "rows.jsonl"
    assert main(["check-dataset", str(config), "--num", "1", "--dump", str(dump)]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[: out.index("--- row 0")])
    assert stats["images"] == 34 and stats["image_tokens"] == 34 * 16
    assert "images: " + str(DATA / "vision_demo/images/red_circle.png") + " (16 tokens)\n" in out
    assert "USER: <image x16>What colour is the shape? ASSISTANT:] Red." in out
    first = json.loads(dump.read_text().splitlines()[0])
    assert first["images"] == [str(DATA / "vision_demo/images/red_circle.png")] and "vision" not in first
    assert collapse_image_tokens("a<|image_pad|><|image_pad|>b", "<|image_pad|>") == "a<image x2>b"
    assert (
        collapse_image_tokens("a" + "<image>" * 5 + "b<image>", "<image>", [3, 2, 1])
        == "a<image x3><image x2>b<image x1>"
    )


def test_shipped_demo_files_load_and_match_the_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_vision_demo", DATA.parent / "tools" / "make_vision_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make_demo = module.write
    info = json.loads((DATA / "dataset_info.json").read_text())
    for name in ("llava_pretrain_demo", "mllm_demo"):
        rows = json.loads((DATA / info[name]["file_name"]).read_text())
        column = info[name]["columns"]["images"]
        files = [
            p for row in rows for p in ([row[column]] if isinstance(row.get(column), str) else row.get(column, []))
        ]
        assert files and all((DATA / p).is_file() for p in files), name
    shipped = sorted((DATA / "vision_demo/images").iterdir())
    assert sum(p.stat().st_size for p in shipped) < 200_000
    made = {p.name: p for p in make_demo(tmp_path)}
    for file in shipped:  # pixels, not bytes: PNG compression differs between zlib versions
        assert list(Image.open(file).getdata()) == list(Image.open(made[file.name]).getdata()), file.name
    for name in ("llava_pretrain_demo.json", "mllm_demo.json"):
        assert json.loads((DATA / name).read_text()) == json.loads(made[name].read_text())


def test_llava_style_processor_adds_the_image_token(models):
    processor = load_processor(LM, vision_tower=models["clip"])
    assert processor.image_token == "<image>" and processor.token_counts([(32, 32), (64, 10)]) == [16, 16]


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_the_model_accepts_a_collated_batch(models, images, tmp_path, family):
    """transformers checks that image tokens and image features agree: the batch is what the VLM reads."""
    from transformers import AutoModelForImageTextToText

    data = write(tmp_path / "mixed.json", MIXED)
    dataset = VisionSFTDataset(data, models[family], image_folder=str(images), cache=False, max_length=512)
    batch = vision_collate_fn([dataset[i] for i in range(len(dataset))], dataset.tokenizer.pad_token_id)
    if family == "qwen":  # one token per 2 x 2 merged patches of each image's grid
        assert (batch["input_ids"] == dataset.processor.image_token_id).sum() == batch["vision"]["image_grid_thw"].prod(
            -1
        ).sum() // 4
    model = AutoModelForImageTextToText.from_pretrained(models[family])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        **batch["vision"],
    )
    assert torch.isfinite(out.loss)
