"""The chunked output-layer loss equals the loss of the full logits, in value and in gradients."""

import pytest
import torch

from xtune.model import SupervisedFinetune
from xtune.model.finetune import CHUNKED_LOSS_MODEL_TYPES
from xtune.model.loss import chunked_token_loss_sum, shifted_token_loss_sum
from xtune.testing import TINY_ARCHS, make_tiny_model


def _inputs(dtype: torch.dtype, vocab: int = 50, hidden: int = 16, softcap: float | None = None):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(3, 11, hidden, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (3, 11), generator=generator)
    labels[0, :4] = -100  # a prompt
    labels[2, 7:] = -100  # padding
    return states, weight, labels


def _plain(states, weight, labels, softcap=None):
    logits = states @ weight.t()
    if softcap:
        logits = torch.tanh(logits.float() / softcap) * softcap
    return shifted_token_loss_sum(logits, labels)


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_fp32_loss_and_gradients_match_the_full_logits(chunk_size, softcap):
    states, weight, labels = _inputs(torch.float32)
    expected, expected_count = _plain(states, weight, labels, softcap)
    (expected * 0.37).backward()
    expected_grads = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None

    loss, count = chunked_token_loss_sum(states, weight, labels, chunk_size, softcap)
    (loss * 0.37).backward()

    assert int(count) == int(expected_count) == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(states.grad, expected_grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, expected_grads[1], rtol=1e-5, atol=1e-6)
    assert states.grad[2, 7:].abs().sum() == 0  # positions predicting padding get no gradient


def _loss_grads(states, weight, labels, chunk_size=None):
    states = states.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    if chunk_size:
        loss, _ = chunked_token_loss_sum(states, weight, labels, chunk_size)
    else:
        loss, _ = _plain(states, weight, labels)
    loss.backward()
    return loss.detach(), states.grad, weight.grad


def test_bf16_is_as_close_to_fp32_as_the_full_logits_are():
    states, weight, labels = _inputs(torch.bfloat16)
    truth = _loss_grads(states.float(), weight.float(), labels)
    plain = _loss_grads(states, weight, labels)
    chunked = _loss_grads(states, weight, labels, chunk_size=4)
    assert chunked[0].dtype == torch.float32 and chunked[1].dtype == torch.bfloat16
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=1e-5)  # same bf16 logits, fp32 loss
    for index in (1, 2):
        reference = truth[index].norm()
        plain_error = float((plain[index].float() - truth[index]).norm() / reference)
        chunked_error = float((chunked[index].float() - truth[index]).norm() / reference)
        assert chunked_error <= 1.5 * plain_error + 1e-3, (index, chunked_error, plain_error)


def test_a_frozen_output_layer_gets_no_gradient_and_nothing_is_trained_on_empty_labels():
    states, weight, labels = _inputs(torch.float32)
    weight.requires_grad_(False)
    loss, _ = chunked_token_loss_sum(states, weight, labels, 4)
    loss.backward()
    assert weight.grad is None and states.grad.abs().sum() > 0
    loss, count = chunked_token_loss_sum(states, weight, torch.full_like(labels, -100), 4)
    assert float(loss.detach()) == 0.0 and int(count) == 0
    weight.requires_grad_(True)
    states.grad = None
    loss, _ = chunked_token_loss_sum(states, weight, torch.full_like(labels, -100), 4)
    loss.backward()
    assert weight.grad.abs().sum() == 0 and states.grad.abs().sum() == 0


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("chunk_size", [4, 1000])
def test_the_trained_count_known_on_the_host_gives_the_same_numbers(chunk_size, shifted):
    states, weight, labels = _inputs(torch.float32)
    trained = int((labels[:, 1:] != -100).sum()) if not shifted else int((labels != -100).sum())
    results = []
    for count in (None, trained):  # read back from the labels / counted on the host
        leaf = states.detach().requires_grad_(), weight.detach().requires_grad_()
        loss, total = chunked_token_loss_sum(*leaf, labels, chunk_size, shifted=shifted, trained_tokens=count)
        (loss * 0.37).backward()
        results.append((loss.detach(), total, leaf[0].grad, leaf[1].grad))
    for read_back, known in zip(*results, strict=True):
        assert torch.equal(read_back, known)  # the same rows in the same order: bit for bit
    assert int(results[1][1]) == trained


def test_a_wrong_host_count_is_an_error_not_a_different_loss():
    states, weight, labels = _inputs(torch.float32)
    trained = int((labels[:, 1:] != -100).sum())
    for wrong in (trained - 1, trained + 1):
        with pytest.raises(RuntimeError, match=f"trained_tokens={wrong} is not the number of trained targets"):
            chunked_token_loss_sum(states, weight, labels, 4, trained_tokens=wrong)
    with pytest.raises(ValueError, match="trained_tokens must be a count"):
        chunked_token_loss_sum(states, weight, labels, 4, trained_tokens=-1)
    loss, count = chunked_token_loss_sum(states, weight, torch.full_like(labels, -100), 4, trained_tokens=0)
    assert float(loss.detach()) == 0.0 and int(count) == 0


class _Nonzero(torch.overrides.TorchFunctionMode):
    """Counts ``nonzero`` calls: reads of a tensor's values back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += getattr(func, "__name__", "") == "nonzero"
        return func(*args, **(kwargs or {}))


def test_the_loop_s_unit_count_spares_the_loss_its_read_back(tiny_llama):
    from xtune.dataset.collate import count_trained_tokens

    model = SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="fp32", loss_chunk_size=7)
    batch = _batches(model.causal_lm().config.vocab_size)[0]  # unpacked rows: the model reads no positions
    units = count_trained_tokens(batch["labels"])
    assert units == model.objective.units(batch)
    expected, _ = _loss_and_grads(model, batch)
    with _Nonzero() as counted:
        loss, _ = _loss_and_grads(model, {**batch, "units": units})
    assert counted.calls == 0 and loss == expected
    with _Nonzero() as counted:  # without it (validation): the loss reads the labels back once
        model(**batch)
    assert counted.calls == 1


def _loss_and_grads(model: SupervisedFinetune, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch)["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _batches(vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100
    padded_mask = torch.ones_like(ids)
    padded_mask[1, 17:] = 0
    labels[1, 17:] = -100
    packed_positions = torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0)
    return [
        {"input_ids": ids, "labels": labels, "attention_mask": padded_mask},
        {"input_ids": ids[:1], "labels": labels[:1], "position_ids": packed_positions},
    ]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_listed_architecture_trains_the_same_with_and_without_chunks(arch, tmp_path):
    path = make_tiny_model(arch, tmp_path / arch)
    chunked = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", loss_chunk_size=7)
    plain = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", loss_chunk_size=0)
    assert chunked.causal_lm().config.model_type in CHUNKED_LOSS_MODEL_TYPES
    assert chunked._chunkable_head() is not None and plain._chunkable_head() is None
    for batch in _batches(chunked.causal_lm().config.vocab_size):
        loss, grads = _loss_and_grads(chunked, batch)
        expected_loss, expected_grads = _loss_and_grads(plain, batch)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lora_with_the_output_layer_saved_falls_back_to_full_logits(tiny_llama):
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    adapters = SupervisedFinetune(str(tiny_llama), finetune_type="lora", dtype="fp32", lora=lora)
    assert adapters._chunkable_head() is not None  # lm_head frozen and plain: chunked
    saved = SupervisedFinetune(
        str(tiny_llama), finetune_type="lora", dtype="fp32", lora={**lora, "modules_to_save": ["lm_head"]}
    )
    assert saved._chunkable_head() is None
    batch = _batches(saved.causal_lm().config.vocab_size)[0]
    loss, grads = _loss_and_grads(saved, batch)
    assert any("lm_head" in name for name in grads) and loss > 0


def test_loss_chunk_size_must_be_a_whole_number(tiny_llama):
    from xtune.errors import ConfigError

    with pytest.raises(ConfigError, match="loss_chunk_size"):
        SupervisedFinetune(str(tiny_llama), finetune_type="full", loss_chunk_size=-1)
