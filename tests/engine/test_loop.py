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
