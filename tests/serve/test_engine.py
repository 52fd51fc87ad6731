"""The hf backend's queue: a bounded number wait, the rest are refused; cancelled jobs end or never start."""

import asyncio

import pytest

from xtune.chat.loading import load_model_for_chat
from xtune.chat.session import GenerationSettings
from xtune.paths import MODEL_DIR
from xtune.serve.engine import HFEngine, Job, Overloaded


def test_waiting_requests_are_bounded_and_cancelled_ones_stop():
    engine = HFEngine(
        load_model_for_chat(str(MODEL_DIR / "tiny_llama"), device="cpu"), max_concurrency=1, max_waiting=1
    )
    ids = engine.generator.encode(engine.generator.render([{"role": "user", "content": "Hi"}]))
    long_job = Job(ids, GenerationSettings(max_new_tokens=1000, temperature=0), engine.stop_words, ignore_eos=True)

    async def scenario():
        running = engine.submit(long_job)
        while engine.stats()["running"] == 0:
            await asyncio.sleep(0.01)
        waiting = engine.submit(long_job)
        assert engine.stats()["waiting"] == 1
        with pytest.raises(Overloaded, match="--max-concurrency"):
            engine.submit(long_job)
        waiting.cancel()
        running.cancel()
        return await running.outcome(), await waiting.outcome()

    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.close()
    assert first.finish_reason == "cancelled" and first.completion_tokens < 1000
    assert second.finish_reason == "cancelled" and second.completion_tokens == 0  # never started
    assert engine.stats() == {"running": 0, "waiting": 0, "completed": 0, "cancelled": 2, "failed": 0}
