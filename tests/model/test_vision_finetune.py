"""Vision-language finetuning: FinetuneModel on a composed LLaVA and a Qwen2.5-VL equals plain transformers/peft.

Batches are built by hand as the data layer's contract says: the image token repeated once per image
feature, labels -100 on prompt and image tokens, ``vision`` = the processor's tensors for the batch's images
in token order (absent when there is none).
"""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

from xtune.dataset.collate import sft_collate_fn
from xtune.errors import ConfigError
from xtune.hf.vision import compose_llava, load_processor
from xtune.model import SupervisedFinetune
from xtune.testing.tiny_models import make_tiny_model
from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
PROJECTOR = "model.multi_modal_projector"
SAVED = {  # what a plain peft user lists in modules_to_save to train each tiny family's projector
    "llava": [PROJECTOR],
    "qwen2_5_vl": ["model.visual.merger"],
    # the deepstack mergers one by one: the model indexes the list, which peft's wrapper could not be
    "qwen3_vl": ["model.visual.merger", "model.visual.deepstack_merger_list.0"],
}


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A tiny Llama, a tiny CLIP vision tower, their LLaVA processor and the composed model saved as plain LLaVA."""
    root = tmp_path_factory.mktemp("llava")
    lm, clip = make_tiny_model("llama", root / "lm"), make_tiny_clip(root / "clip")
    processor = load_processor(lm, vision_tower=clip)
    compose_llava(lm, clip).save_pretrained(root / "composed")  # the same weights FinetuneModel starts from
    return lm, clip, processor, root / "composed"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = make_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "model")
    return path, load_processor(path)


def _image(i: int, size=(32, 32)) -> Image.Image:
    return Image.new("RGB", size, ((60 * i) % 256, (200 - 40 * i) % 256, (30 + 90 * i) % 256))


def _sample(processor, prompt: str, images: list, answer: str) -> dict:
    """One sample: prompt, its images' tokens, the answer; only the answer is trained."""
    tokenizer = processor.tokenizer
    counts = processor.token_counts([(img.height, img.width) for img in images])
    text = prompt + "".join(processor.image_text(n) for n in counts)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids, "images": images}


def _batch(processor, samples: list[dict], packed: bool = False) -> dict:
    """The SFT batch of ``samples`` (one packed row when ``packed``) plus ``vision`` when any has an image."""
    if packed:
        items = [
            {
                "input_ids": sum((s["input_ids"] for s in samples), []),
                "labels": sum((s["labels"] for s in samples), []),
                "position_ids": sum((list(range(len(s["input_ids"]))) for s in samples), []),
            }
        ]
    else:
        items = [{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples]
    batch = sft_collate_fn(items, pad_token_id=processor.tokenizer.pad_token_id)
    images = [img for s in samples for img in s["images"]]
    if images:
        batch["vision"] = processor.pixels(images)
    return batch


def _llava_steps(processor) -> list[dict]:
    """Three batches with images: one sample with two, a sample without any beside one with."""
    return [
        _batch(processor, [_sample(processor, "what colour?", [_image(0)], "red"),
                           _sample(processor, "compare", [_image(1), _image(2)], "the first is darker")]),
        _batch(processor, [_sample(processor, "describe", [_image(3)], "a square"),
                           _sample(processor, "no picture here", [], "fine")]),
        _batch(processor, [_sample(processor, "hello", [], "hi there"),
                           _sample(processor, "and?", [_image(4)], "blue")]),
    ]  # fmt: skip


def _text_only(processor) -> dict:
    return _batch(processor, [_sample(processor, "hello", [], "hi there"), _sample(processor, "bye", [], "see you")])


def _train_ours(model, batches, lr=1e-3) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for batch in batches:
        loss = model(**batch, mode="loss")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _hf_inputs(batch: dict, token_types: dict | None = None) -> dict:
    """What a plain transformers loop passes: the padded rows, the mask, the labels and the processor tensors."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    if "vision" in batch:
        inputs.update(batch["vision"])
        if token_types is not None:
            types = torch.zeros_like(batch["input_ids"], dtype=torch.int32)
            for token, kind in token_types.items():
                types[batch["input_ids"] == token] = kind
            inputs["mm_token_type_ids"] = types
    return inputs


def _train_reference(model, batches, token_types=None, lr=1e-3) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for batch in batches:
        loss = model(**_hf_inputs(batch, token_types)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _assert_same_losses(ours: list[float], theirs: list[float]) -> None:
    """Equal to float32 rounding: within 1e-6 relative (a few units in the last place of a loss near 8)."""
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))
    assert worst <= 1e-6, (ours, theirs)


def _assert_same_weights(ours, reference, start: dict, prefix="llm."):
    """Within 1% of what training moved them (3 Adam steps of lr 1e-3: about 3e-3).

    Adam divides each gradient by its own running size, so where a gradient is tiny (the output layer's rows
    of tokens never seen, LoRA A while B is small) rounding-level differences of the chunked loss (1e-6
    relative) become weight differences of ~1e-5; everywhere else they stay ~1e-7.
    """
    theirs = dict(reference.named_parameters())
    worst, moved = (0.0, ""), 0.0
    for name, param in ours.named_parameters():
        other = theirs[name.removeprefix(prefix)].detach()
        worst = max(worst, (float((param.detach() - other).abs().max()), name))
        moved = max(moved, float((other - start[name.removeprefix(prefix)]).abs().max()))
    assert worst[0] <= 3e-5 and moved > 2.5e-3, (worst, moved)


def _lora_reference(base, targets: list[str], modules_to_save: list[str], ours):
    """Plain peft over ``base`` with ``targets`` adapted and ``modules_to_save`` trained, starting from our
    adapters' weights.

    LoRA B starts at zero, so A's first gradients are exactly zero and its next ones tiny: Adam would turn
    their rounding-level differences into differences of a whole step. Both start from the same small
    random B instead, which compares the same computation without that amplifier.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", target_modules=targets, modules_to_save=modules_to_save, **LORA)
    reference = get_peft_model(base, config)
    ours_state = {name.removeprefix("llm."): p for name, p in ours.named_parameters() if p.requires_grad}
    theirs = {name: p for name, p in reference.named_parameters() if p.requires_grad}
    assert ours_state.keys() == theirs.keys()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in ours_state.items():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        for name, param in theirs.items():
            param.copy_(ours_state[name])
    return reference


def _linear_names(model, under: str) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(under + ".")]


# ----------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("chunk", [1024, 0])
def test_llava_full_finetune_equals_a_plain_transformers_loop(llava, chunk):
    lm, clip, processor, composed = llava
    ours = SupervisedFinetune(
        str(lm), vision_tower=str(clip), finetune_type="full", dtype="fp32", loss_chunk_size=chunk
    )
    assert (ours._chunkable_head() is not None) == bool(chunk)
    reference = LlavaForConditionalGeneration.from_pretrained(composed, dtype=torch.float32)
    reference.model.vision_tower.requires_grad_(False)  # the vision tower is frozen by default
    trainable = {n.removeprefix("llm.") for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}
    batches = _llava_steps(processor)
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    ours_losses, their_losses = _train_ours(ours, batches), _train_reference(reference, batches)
    _assert_same_losses(ours_losses, their_losses)
    _assert_same_weights(ours, reference, start)
    # the vision tower was not trained and is not saved
    assert not any(".vision_tower." in key for key in ours.state_dict())


def test_llava_lora_equals_plain_peft(llava):
    lm, clip, processor, composed = llava
    torch.manual_seed(0)  # LoRA A's random init: the same numbers every run
    ours = SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="lora", dtype="fp32", lora=LORA)
    base = LlavaForConditionalGeneration.from_pretrained(composed, dtype=torch.float32)
    targets = _linear_names(base, "model.language_model")  # the language model's linear layers only
    assert set(ours.llm.base_model.targeted_module_names) == set(targets)
    reference = _lora_reference(base, targets, [PROJECTOR], ours)
    batches = _llava_steps(processor)
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    ours_losses, their_losses = _train_ours(ours, batches), _train_reference(reference, batches)
    _assert_same_losses(ours_losses, their_losses)
    _assert_same_weights(ours, reference, start)
    assert all("lora_" in key or f"{PROJECTOR}.modules_to_save" in key for key in ours.state_dict())
    # merge_and_unload folds the adapters and keeps the trained projector
    trained = _projector_of(ours)
    merged = ours.llm.merge_and_unload()
    assert type(merged) is LlavaForConditionalGeneration
    for key, value in merged.model.multi_modal_projector.state_dict().items():
        assert torch.equal(value, trained[key]), key


@pytest.mark.parametrize(
    ("arch", "chunk"), [("qwen2_5_vl", 1024), ("qwen2_5_vl", 0), ("llava", 1024), ("qwen3_vl", 1024)]
)
def test_vlm_folder_lora_equals_plain_peft(qwen, tmp_path, arch, chunk):
    """A VLM folder (Qwen2.5-VL, Qwen3-VL; llava-1.5-hf's layout) trained with LoRA equals plain peft on unpacked
    rows."""
    path, processor = qwen if arch == "qwen2_5_vl" else (make_tiny_vlm(arch, tmp_path / arch), None)
    processor = processor or load_processor(path)
    torch.manual_seed(0)
    ours = SupervisedFinetune(str(path), finetune_type="lora", dtype="fp32", lora=LORA, loss_chunk_size=chunk)
    assert (ours._chunkable_head() is not None) == bool(chunk) and ours.attn_implementation == "xtune_varlen"
    assert ours.llm.config.vision_config._attn_implementation == "sdpa"
    base = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    targets = _linear_names(base, "model.language_model")
    assert set(ours.llm.base_model.targeted_module_names) == set(targets)
    reference = _lora_reference(base, targets, SAVED[arch], ours)
    samples = [
        _sample(processor, "what is this?", [_image(0, (56, 56))], "a blue square"),
        _sample(processor, "and these", [_image(1, (30, 100)), _image(2, (56, 84))], "two shapes"),
        _sample(processor, "plain text", [], "yes"),
    ]
    batches = [_batch(processor, samples[:2]), _batch(processor, samples[1:]), _batch(processor, samples[::-1])]
    # what transformers' Qwen processor returns beside input_ids; LLaVA reads none
    token_types = {processor.image_token_id: 1} if arch.startswith("qwen") else None
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    ours_losses = _train_ours(ours, batches)
    their_losses = _train_reference(reference, batches, token_types)
    _assert_same_losses(ours_losses, their_losses)
    _assert_same_weights(ours, reference, start)


def test_pretrain_trains_only_the_projector(llava):
    lm, clip, processor, _ = llava
    model = SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="full", dtype="fp32", freeze_llm=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _train_ours(model, _llava_steps(processor)[:2])
    for name, param in model.named_parameters():
        if name.startswith(f"llm.{PROJECTOR}."):
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name
    assert set(model.state_dict()) == {n for n in before if n.startswith(f"llm.{PROJECTOR}.")}


def test_a_batch_without_images_gives_vision_parameters_zero_gradients(llava):
    lm, clip, processor, composed = llava
    model = SupervisedFinetune(
        str(lm), vision_tower=str(clip), finetune_type="lora", dtype="fp32", lora=LORA, vision_lora=True
    )
    vision = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and (".vision_tower." in n or PROJECTOR in n)
    ]
    assert any("vision_tower" in n and "lora_" in n for n, _ in vision) and any(PROJECTOR in n for n, _ in vision)
    text_only = _text_only(processor)
    assert "vision" not in text_only
    loss = model(**text_only, mode="loss")["loss"]
    plain = LlavaForConditionalGeneration.from_pretrained(composed, dtype=torch.float32)
    assert abs(loss.item() - plain(**_hf_inputs(text_only)).loss.item()) <= 1e-6  # the zero term adds nothing
    loss.backward()
    for name, param in vision:
        assert param.grad is not None and not param.grad.any(), name
    model.zero_grad(set_to_none=True)
    model(**_llava_steps(processor)[0], mode="loss")["loss"].backward()
    # with images the projector and the ViT's adapters learn (B of LoRA starts at zero: A's gradient is zero)
    assert any(param.grad.any() for name, param in vision if "lora_B" in name and "vision_tower" in name)


def test_packed_llava_row_equals_its_samples_unpacked(llava):
    lm, clip, processor, _ = llava
    model = SupervisedFinetune(
        str(lm), vision_tower=str(clip), finetune_type="full", dtype="fp32", freeze_vision_tower=False
    )
    samples = [
        _sample(processor, "first", [_image(0)], "a red one"),
        _sample(processor, "then two", [_image(1), _image(2)], "green and blue"),
    ]
    results = []
    for packed in (False, True):
        batch = _batch(processor, samples, packed=packed)
        assert ("position_ids" in batch) == packed
        model.zero_grad(set_to_none=True)
        loss = model(**batch, mode="loss")["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys() and any(".vision_tower." in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_keeps_the_numbers(llava):
    lm, clip, processor, _ = llava
    batch = _llava_steps(processor)[0]
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SupervisedFinetune(
            str(lm), vision_tower=str(clip), finetune_type="lora", dtype="fp32", lora=LORA, vision_lora=True,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        assert model.causal_lm().is_gradient_checkpointing == checkpointing
        model(**batch, mode="loss")["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
    auto = SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="full", gradient_checkpointing="auto")
    assert not auto.causal_lm().is_gradient_checkpointing  # a tiny model fits


# ----------------------------------------------------------------------------------------- projector
def _changed_projector(model) -> dict:
    with torch.no_grad():
        for param in model.model.multi_modal_projector.parameters():
            param.add_(torch.linspace(-1, 1, param.numel()).reshape(param.shape))
    return {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}


def _projector_of(model) -> dict:
    module = model.causal_lm().model.multi_modal_projector
    module = module.modules_to_save["default"] if hasattr(module, "modules_to_save") else module
    return module.state_dict()


def test_projector_loads_from_a_checkpoint_and_a_converted_folder(llava, tmp_path):
    lm, clip, _, _ = llava
    pretrain = SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="full", dtype="fp32", freeze_llm=True)
    trained = _changed_projector(pretrain.llm)
    torch.save({"state_dict": pretrain.state_dict(), "meta": {}}, tmp_path / "iter_3.pth")
    converted = compose_llava(lm, clip)
    _changed_projector(converted)
    converted.save_pretrained(tmp_path / "hf")
    for source in (tmp_path / "iter_3.pth", tmp_path / "hf"):
        model = SupervisedFinetune(
            str(lm), vision_tower=str(clip), finetune_type="lora", dtype="fp32", lora=LORA, projector=str(source)
        )
        for key, value in _projector_of(model).items():
            assert torch.equal(value, trained[key]), (source, key)


def test_bad_projector_files_are_clear_errors(llava, tmp_path):
    lm, clip, _, _ = llava
    text = SupervisedFinetune(str(lm), finetune_type="full", dtype="fp32")
    torch.save({"state_dict": text.state_dict(), "meta": {}}, tmp_path / "text.pth")
    build = dict(pretrained_model_name_or_path=str(lm), vision_tower=str(clip), finetune_type="full", dtype="fp32")
    with pytest.raises(ConfigError, match="holds no projector weights"):
        SupervisedFinetune(**build, projector=str(tmp_path / "text.pth"))
    shapes = {"linear_1.weight": (64, 7), "linear_1.bias": (64,), "linear_2.weight": (64, 64), "linear_2.bias": (64,)}
    wrong = {f"llm.{PROJECTOR}.{key}": torch.zeros(shape) for key, shape in shapes.items()}
    torch.save({"state_dict": wrong, "meta": {}}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match=r"linear_1.weight' is \(64, 7\) there but \(64, 32\) here"):
        SupervisedFinetune(**build, projector=str(tmp_path / "wrong.pth"))
    with pytest.raises(ConfigError, match="model.projector=.*checkpoint not found"):
        SupervisedFinetune(**build, projector=str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------------------------------- refusals
def test_refused_combinations_say_what_to_set(llava, qwen):
    lm, clip, _, _ = llava
    path, _ = qwen
    with pytest.raises(ConfigError, match="pack_to_max_length=False"):
        SupervisedFinetune(str(path), finetune_type="lora", lora=LORA, pack_to_max_length=True)
    SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="lora", lora=LORA, pack_to_max_length=True)
    composed = dict(pretrained_model_name_or_path=str(lm), vision_tower=str(clip), dtype="fp32")
    cases = [
        (dict(finetune_type="full", sequence_parallel_size=2), "sequence_parallel_size=1"),
        (dict(finetune_type="full", tiled_mlp=64), "tiled_mlp=0"),
        (dict(finetune_type="full", vision_lora=True), "vision_lora=True adds LoRA"),
        (dict(finetune_type="lora", freeze_vision_tower=False), "Set vision_lora=True"),
        (dict(finetune_type="lora", freeze_llm=True), "finetune_type='full' with freeze_llm=True"),
    ]
    for knobs, message in cases:
        with pytest.raises(ConfigError, match=message):
            SupervisedFinetune(**composed, **knobs)
    with pytest.raises(ConfigError, match="freeze_llm=True set, but .* is a text model"):
        SupervisedFinetune(str(lm), finetune_type="full", freeze_llm=True)


def test_freeze_type_trains_the_last_layers_and_the_projector(llava):
    lm, clip, _, _ = llava
    model = SupervisedFinetune(
        str(lm), vision_tower=str(clip), finetune_type="freeze", dtype="fp32", freeze={"trainable_layers": 1}
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(PROJECTOR in n for n in trainable) and any(".layers.1." in n for n in trainable)
    assert all(PROJECTOR in n or "language_model.layers.1." in n for n in trainable)
    assert set(model.state_dict()) == trainable


def test_qlora_keeps_vision_parts_unquantized_and_needs_a_gpu(llava, qwen):
    from transformers import BitsAndBytesConfig

    from xtune.errors import XtuneError
    from xtune.hf.vision import VISION_FAMILIES, quantization_skips

    config = BitsAndBytesConfig(load_in_4bit=True)
    quantization_skips(config, VISION_FAMILIES["qwen2_5_vl"])
    assert config.llm_int8_skip_modules == ["model.visual", "model.visual.merger", "lm_head"]
    lm, clip, _, _ = llava
    for build in (
        dict(pretrained_model_name_or_path=str(lm), vision_tower=str(clip)),
        dict(pretrained_model_name_or_path=str(qwen[0])),
    ):
        with pytest.raises(XtuneError, match="qlora needs a CUDA GPU"):
            SupervisedFinetune(**build, finetune_type="qlora")


def test_throughput_hook_counts_the_language_model(llava):
    from types import SimpleNamespace

    from xtune.engine.hooks.throughput import ThroughputHook

    lm, clip, _, _ = llava
    model = SupervisedFinetune(str(lm), vision_tower=str(clip), finetune_type="lora", lora=LORA)
    hook = ThroughputHook()
    hook.before_train(SimpleNamespace(model=model))
    assert (hook._flops.layers, hook._flops.width) == (2, 64)
    assert hook._flops.vision is not None  # the tower and projector count per image (tests/engine/test_flops.py)
    assert hook._settings["attn_implementation"] == "xtune_varlen"


def _ddp_rank(rank: int, port: int, lm: str, clip: str, out: str) -> None:
    """One of two gloo ranks: DDP (no unused-parameter search) over a LoRA LLaVA with ViT adapters, the ranks
    taking turns at a text-only batch."""
    import os

    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = SupervisedFinetune(
            lm, vision_tower=clip, finetune_type="lora", dtype="fp32", lora=LORA, vision_lora=True
        )
        processor = load_processor(lm, vision_tower=clip)
        ddp = DistributedDataParallel(model)
        batches = [_text_only(processor), _llava_steps(processor)[0]]
        for step in range(3):
            ddp(**batches[(rank + step) % 2], mode="loss")["loss"].backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            model.zero_grad(set_to_none=True)
        torch.save(grads, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_agree_when_one_has_no_image(llava, tmp_path):
    """Without the zero term, DDP stops at the second step: the text-only rank never used the projector or
    the ViT adapters (nor does any rank use the ViT's last layer, which LLaVA does not read)."""
    import socket

    import torch.multiprocessing as mp

    lm, clip, _, _ = llava
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(lm), str(clip), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(PROJECTOR in name and grad.any() for name, grad in first.items())
