"""``xtune serve``: an OpenAI-compatible HTTP API over a fine-tuned model.

Design (one request, top to bottom):

- :mod:`xtune.serve.app` (FastAPI): reads the body with a size cap, checks the Bearer key, validates it
  (:mod:`xtune.serve.protocol`), renders chat messages with the training chat template through
  :class:`xtune.chat.session.ChatGenerator` (the code path of ``xtune chat``), checks the context
  length, and answers as JSON or as server-sent events. Every error is OpenAI's JSON shape
  ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; nothing a client sends takes the
  server down.
- :mod:`xtune.serve.engine` (``hf`` backend): ``model.generate`` in worker threads, at most
  ``--max-concurrency`` at once (transformers' ``generate`` is not batched across requests; the threads
  overlap their matrix work), more requests wait in a bounded queue. Text streams out of a
  :class:`xtune.chat.stopping.StopWordStreamer`; a stopping criterion ends a generation whose client
  went away. A request with a ``seed`` that samples runs alone, since torch's generator is global.
- :mod:`xtune.serve.tool_calls`: tool calls in an answer, for templates with a known call format.
- :mod:`xtune.serve.vllm_backend`: ``--backend vllm`` hands the same model, adapter and chat template to
  vLLM's own OpenAI server.
"""
