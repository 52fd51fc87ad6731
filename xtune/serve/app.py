"""The HTTP API (FastAPI): ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/health``."""

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from xtune.chat.session import GenerationSettings
from xtune.errors import XtuneError
from xtune.serve.engine import Generation, HFEngine, Job, Outcome, Overloaded
from xtune.serve.media import LocalMedia, read_image
from xtune.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    template_messages,
    validation_error,
)
from xtune.serve.tool_calls import parse_tool_calls, tool_call_format

# A chat request is text; 8 MiB holds a conversation far longer than any context this serves.
MAX_BODY_BYTES = 8 * 1024 * 1024
# A vision-language model's requests carry images inline (base64: 4/3 of the file): room for a few photos.
MAX_IMAGE_BODY_BYTES = 48 * 1024 * 1024


def create_app(
    engine: HFEngine,
    model_name: str,
    api_key: str | None = None,
    max_new_tokens: int = 2048,
    local_media: LocalMedia | None = None,
) -> FastAPI:
    """The API over ``engine``, answering to ``model_name``.

    Args:
        engine: The backend that generates.
        model_name: The ``id`` in ``/v1/models``; requests naming another model get a 404.
        api_key: When set, ``/v1/*`` needs ``Authorization: Bearer <api_key>``.
        max_new_tokens: The most tokens one request may generate (the default when it names none).
        local_media: Which local image files requests may name (default: any; see
            :mod:`xtune.serve.media`). Only used when the model reads images.
    """
    app = FastAPI(title="xtune serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    tool_format = tool_call_format(engine.tokenizer, engine.loaded.template)
    reads_images = engine.loaded.processor is not None
    body_limit = MAX_IMAGE_BODY_BYTES if reads_images else MAX_BODY_BYTES
    local_media = local_media or LocalMedia(None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind)
        return JSONResponse(error.body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(error.body, status_code=500)

    if api_key:
        app.add_middleware(_BearerAuth, api_key=api_key)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **engine.stats()}

    def _model_card() -> dict:
        return {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "xtune",
            "max_model_len": engine.context_length,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        _check_model(name, model_name)
        return _model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = _parse(await _read_json(request, body_limit), ChatCompletionRequest)
        _check_model(body.model, model_name)
        sources: list[tuple[str, str]] | None = [] if reads_images else None
        messages = template_messages(body.messages, sources)
        tools = body.tool_list()
        if tools and _render(engine, messages, tools) == _render(engine, messages, None):
            raise APIError(400, "tools: this model's chat template does not render tools.", param="tools")
        # Reading and decoding images takes a while: off the event loop (text is tokenized on it, as ever).
        images = await asyncio.to_thread(_read_images, sources, local_media) if sources else []
        prompt = _prompt(engine, messages, images, tools)
        job = _job(engine, body, prompt.ids, engine.stop_words + body.stop_words(), max_new_tokens, chat=True)
        if images:  # the prompt fits: now the image processor's work
            job.vision = await asyncio.to_thread(engine.loaded.processor.pixels, images)
        generation = _submit(engine, job)
        parse = tool_format if tools else None
        if body.stream:
            events = _chat_events(generation, request, model_name, body.include_usage(), parse)
            return _sse(events)
        outcome = await _finish(generation, request)
        answer = parse_tool_calls(outcome.text, parse)
        message = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        reason = "tool_calls" if answer.tool_calls else outcome.finish_reason
        choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
        return _response("chat.completion", model_name, [choice], usage=_usage(outcome))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = _parse(await _read_json(request, body_limit), CompletionRequest)
        _check_model(body.model, model_name)
        ids = engine.generator.encode(body.prompt_text(), add_special_tokens=True)
        if reads_images and engine.loaded.processor.image_token_id in ids:
            raise APIError(
                400,
                f"prompt: it spells the image token {engine.loaded.processor.image_token!r}; completions read "
                "text only (send images to /v1/chat/completions).",
                param="prompt",
            )
        eos = [engine.tokenizer.eos_token] if engine.tokenizer.eos_token else []
        job = _job(engine, body, ids, eos + body.stop_words(), max_new_tokens, chat=False)
        generation = _submit(engine, job)
        if body.stream:
            return _sse(_completion_events(generation, request, model_name, body.include_usage()))
        outcome = await _finish(generation, request)
        choice = {"index": 0, "text": outcome.text, "finish_reason": outcome.finish_reason, "logprobs": None}
        return _response("text_completion", model_name, [choice], usage=_usage(outcome))

    return app


class _BearerAuth:
    """ASGI middleware: ``/v1/*`` needs ``Authorization: Bearer <api_key>`` (``/health`` stays open for
    probes). Plain ASGI rather than ``@app.middleware``, which would wrap every streamed response."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not secrets.compare_digest(token, self.key):
                reason = (
                    "Incorrect API key provided." if token else "Missing API key: send 'Authorization: Bearer KEY'."
                )
                error = APIError(401, reason, type="authentication_error", code="invalid_api_key")
                response = JSONResponse(error.body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request: Request, limit: int = MAX_BODY_BYTES) -> object:
    """The body as JSON, read with a size cap (a client cannot make the server buffer gigabytes)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body over {limit} bytes.", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body over {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None


def _parse(data: object, model: type):
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}.", code="invalid_json")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    body.check()
    return body


def _check_model(name: str | None, served: str) -> None:
    if name is not None and name != served:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )


def _render(engine: HFEngine, messages: list[dict], tools: list[dict] | None) -> str:
    try:
        return engine.generator.render(messages, tools)
    except XtuneError as exc:
        raise APIError(400, str(exc), param="messages") from None


def _read_images(sources: list[tuple[str, str]], local: LocalMedia) -> list:
    return [read_image(url, param, local) for param, url in sources]


def _prompt(engine: HFEngine, messages: list[dict], images: list, tools):
    """The prompt for ``messages``, image tokens expanded (pixels are made once its length is checked)."""
    try:
        return engine.generator.prompt(messages, images, tools, pixels=False)
    except XtuneError as exc:
        raise APIError(400, str(exc), param="messages") from None


def _job(engine: HFEngine, body, ids: list[int], stop_words: list[str], limit: int, chat: bool) -> Job:
    """The generation job, with ``max_tokens`` checked against the context and the server's limit."""
    room = engine.context_length - len(ids)
    requested = body.requested_max_tokens()
    if room < 1 or (requested is not None and requested > room):
        wanted = f" + {requested} requested tokens" if requested else ""
        raise APIError(
            400,
            f"This model's maximum context length is {engine.context_length} tokens; the prompt has "
            f"{len(ids)} tokens{wanted}. Shorten the conversation or ask for fewer tokens.",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    if requested is not None and requested > limit:
        raise APIError(
            400,
            f"max_tokens is at most {limit} on this server (--max-new-tokens), got {requested}.",
            param="max_tokens",
        )
    settings = GenerationSettings(max_new_tokens=min(requested or limit, room), **body.sampling())
    return Job(ids, settings, list(dict.fromkeys(stop_words)), chat, body.seed, bool(body.ignore_eos))


def _submit(engine: HFEngine, job: Job) -> Generation:
    try:
        return engine.submit(job)
    except Overloaded as exc:
        raise APIError(503, str(exc), type="server_overloaded", code="server_overloaded") from None


async def _finish(generation: Generation, request: Request) -> Outcome:
    """Wait for a non-streamed answer; cancel it if the client disconnects meanwhile."""
    while not generation.future.done():
        await asyncio.wait([generation.future], timeout=0.25)
        if not generation.future.done() and await request.is_disconnected():
            generation.cancel()
    return await generation.outcome()


def _usage(outcome: Outcome) -> dict:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def _response(kind: str, model_name: str, choices: list[dict], usage: dict | None = None, id_: str = "") -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    body = {
        "id": id_ or f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _streamed(generation: Generation, request: Request, pieces: bool):
    """Text pieces then the outcome; the generation is cancelled if the stream ends early (the client
    disconnected and Starlette cancelled this generator)."""
    try:
        if pieces:
            async for piece in generation.pieces():
                yield piece
        yield await generation.outcome()
    finally:
        if not generation.future.done():
            generation.cancel()


def _error_event(exc: Exception) -> dict:
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error").body


async def _chat_events(generation, request, model_name, include_usage, tool_format) -> AsyncIterator[dict]:
    id_ = f"chatcmpl-{uuid.uuid4().hex}"

    def chunk(delta: dict, reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return _response("chat.completion.chunk", model_name, [choice], id_=id_)

    yield chunk({"role": "assistant", "content": ""})
    try:
        # With tools, the answer is sent whole at the end: a tool call is only known once it is complete.
        async for item in _streamed(generation, request, pieces=tool_format is None):
            if isinstance(item, str):
                yield chunk({"content": item})
                continue
            reason = item.finish_reason
            if tool_format is not None:
                answer = parse_tool_calls(item.text, tool_format)
                delta = {"content": answer.content} if answer.content else {}
                if answer.tool_calls:
                    calls = [{"index": i, **call} for i, call in enumerate(answer.tool_calls)]
                    delta["tool_calls"] = calls
                    reason = "tool_calls"
                if delta:
                    yield chunk(delta)
            yield chunk({}, reason)
            if include_usage:
                yield {**_response("chat.completion.chunk", model_name, [], id_=id_), "usage": _usage(item)}
    except Exception as exc:  # the stream has started: the error can only be reported in it
        yield _error_event(exc)


async def _completion_events(generation, request, model_name, include_usage) -> AsyncIterator[dict]:
    id_ = f"cmpl-{uuid.uuid4().hex}"

    def chunk(text: str, reason: str | None = None) -> dict:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        return _response("text_completion", model_name, [choice], id_=id_)

    try:
        async for item in _streamed(generation, request, pieces=True):
            if isinstance(item, str):
                yield chunk(item)
                continue
            yield chunk("", item.finish_reason)
            if include_usage:
                yield {**_response("text_completion", model_name, [], id_=id_), "usage": _usage(item)}
    except Exception as exc:  # the stream has started: the error can only be reported in it
        yield _error_event(exc)
