"""Scheduler spans in iterations."""

from xtune.engine.loop import schedulers_in_iterations


def test_epoch_spans_become_iterations_and_empty_spans_are_dropped():
    warmup = {"type": "LinearLR", "by_epoch": True, "begin": 0, "end": 0.03 * 3, "convert_to_iter_based": True}
    cosine = {"type": "CosineAnnealingLR", "by_epoch": True, "begin": 0.09, "end": 3, "convert_to_iter_based": True}
    # 10 iterations per epoch: a 0.9-iteration warmup rounds to 1 iteration
    converted = schedulers_in_iterations([warmup, cosine], 10, 3)
    assert converted[0] == {"type": "LinearLR", "by_epoch": False, "begin": 0, "end": 1}
    assert converted[1] == {"type": "CosineAnnealingLR", "by_epoch": False, "begin": 1, "end": 30}
    # 2 iterations per epoch: the warmup would be 0.18 iterations and is dropped
    assert [s["type"] for s in schedulers_in_iterations([warmup, cosine], 2, 3)] == ["CosineAnnealingLR"]
    assert schedulers_in_iterations([], 5, 1) == []


def test_skip_nonfinite_drops_only_the_bad_step():
    import torch

    from xtune.engine.optim import DtypeOptimWrapper

    weight = torch.nn.Parameter(torch.ones(3))
    wrapper = DtypeOptimWrapper(torch.optim.SGD([weight], lr=0.1), dtype="fp32", accumulative_counts=2)
    wrapper.skip_nonfinite = True
    wrapper.initialize_count_status(torch.nn.Linear(1, 1), 0, 4)
    # step 1: one finite and one NaN micro-batch -> skipped, gradients dropped
    wrapper.update_params((weight * 1.0).sum())
    wrapper.update_params((weight * float("nan")).sum())
    torch.testing.assert_close(weight.detach(), torch.ones(3))
    assert weight.grad is None or not weight.grad.any()
    # step 2: finite -> applied (gradient 1 per micro-batch, divided by 2 micro-batches, summed: 1)
    wrapper.update_params((weight * 1.0).sum())
    wrapper.update_params((weight * 1.0).sum())
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9))
