"""Image-text training under DeepSpeed ZeRO-2 on 2 CPU ranks equals one process with twice the batch.

The tiny LLaVA demo (tiny CLIP + tiny_llama, the finetune config as shipped but with a fresh projector) trains
on the shipped image demo, which mixes rows with one image, two images and none, so micro-batches differ in
their images per rank and some hold none: the loss's zero-weighted term keeps every trainable parameter used
on every rank. Plain SGD (see :func:`xtune.testing.training.sgd_parity_options`): a weight's change is lr x its
gradient, so the comparison measures the gradients. 8 iterations of 4 rows each, in file order.
"""

from pathlib import Path

import pytest
import torch

from xtune.convert.zero import is_zero_checkpoint, load_zero_checkpoint
from xtune.testing.training import PARITY_OPTIONS, final_weights, max_difference, train, train_ranks

pytestmark = pytest.mark.slow
CONFIG = "llava_tiny_llama_tiny_clip_full_mllm_demo_e30"
ITERS = 8


def _options(batch_size: int) -> dict:
    return {
        **PARITY_OPTIONS,
        "projector": None,
        "batch_size": batch_size,
        "accumulative_counts": 2,
        "train_cfg.max_epochs": None,
        "train_cfg.max_iters": ITERS,
        "optim_wrapper.optimizer": {"_delete_": True, "type": "SGD", "lr": 0.1},
    }


def test_zero2_on_two_ranks_equals_one_process(tmp_path):
    single, ranks = tmp_path / "single", tmp_path / "zero2"
    assert train(CONFIG, single, _options(batch_size=4)) == 0
    train_ranks(CONFIG, ranks, _options(batch_size=2), ["--deepspeed", "zero2"], ranks=2)
    reference = final_weights(single)
    folder = Path((ranks / "last_checkpoint").read_text().strip())
    assert is_zero_checkpoint(folder) and folder.name == f"iter_{ITERS}.pth"
    ours = {key.removeprefix("llm."): value for key, value in load_zero_checkpoint(folder).items()}
    # ZeRO's reader also names tiny_llama's tied output layer, the embedding under a second name
    assert set(ours) - set(reference) <= {"lm_head.weight"} and set(reference) <= set(ours)
    assert torch.equal(
        ours.pop("lm_head.weight", ours["model.language_model.embed_tokens.weight"]),
        ours["model.language_model.embed_tokens.weight"],
    )
    # the projector and the language model train; the frozen vision tower is not in either checkpoint
    assert any("multi_modal_projector" in key for key in ours) and not any("vision_tower" in key for key in ours)
    assert max_difference(reference, ours) < 1e-5
    from xtune.hf.vision import compose_llava
    from xtune.paths import MODEL_DIR

    before = compose_llava(MODEL_DIR / "tiny_llama", MODEL_DIR / "tiny_clip").state_dict()
    moved = max(float((ours[key].float() - before[key].float()).abs().max()) for key in ours if key in before)
    assert moved > 1e-3  # training moved the weights: the comparison means something
    assert torch.isfinite(torch.stack([value.float().abs().max() for value in ours.values()])).all()
    # the finetune stage's projector= reads a ZeRO run too: its work dir names the newest ZeRO folder
    from xtune.model import SupervisedFinetune

    loaded = SupervisedFinetune(
        str(MODEL_DIR / "tiny_llama"),
        finetune_type="full",
        vision_tower=str(MODEL_DIR / "tiny_clip"),
        projector=str(ranks),
        dtype="fp32",
    )
    for name, param in loaded.llm.model.multi_modal_projector.named_parameters():
        assert torch.equal(param.detach(), ours[f"model.multi_modal_projector.{name}"].float()), name
