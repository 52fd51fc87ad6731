"""The OpenAI request bodies ``xtune serve`` accepts, their checks, and OpenAI-shaped errors.

Bodies are validated with pydantic; a failure becomes one :class:`APIError` (400) naming the field as
``param``. Unknown fields are accepted and ignored, as OpenAI clients send fields (``user``,
``metadata``...) that do not change generation; fields that would change it and are not supported
(``n`` > 1, penalties, ``logprobs``, forced tool choice) are refused by name instead of ignored.
"""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xtune.hf.vision import IMAGE_PLACEHOLDER

# OpenAI caps stop sequences at 4; more text-matching criteria slow every decoding step.
MAX_STOP = 4


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 that names the field."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    received = first.get("input")
    shown = json.dumps(received)[:80] if isinstance(received, (str, int, float, bool, type(None))) else None
    detail = f" (got {shown})" if shown is not None and first["type"] != "missing" else ""
    return APIError(400, f"{param}: {first['msg']}{detail}", param=param, code="invalid_value")


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Body):
    name: str
    arguments: str = Field(description="the arguments as a JSON object, in a string (OpenAI's format)")


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ImageURL(_Body):
    url: str
    detail: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Fields shared by chat and text completions; ``top_k``, ``repetition_penalty`` and ``ignore_eos``
    are vLLM's extensions of the OpenAI API, with vLLM's names."""

    # Clients send null for "not set" (front ends fill every field of a form): None means the default.
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    ignore_eos: bool | None = False

    def check(self) -> None:
        """Refuse, by name, what would change the answer and is not implemented.

        Raises:
            APIError: 400 naming the field.
        """
        if self.n not in (None, 1):
            raise APIError(400, f"n={self.n}: this server returns one choice per request; send n=1.", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(
                    400,
                    f"{name} is not supported by xtune serve; leave it at 0 (repetition_penalty is).",
                    param=name,
                )
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by xtune serve.", param="logprobs")
        stops = self.stop_words()
        if len(stops) > MAX_STOP or not all(stops):
            raise APIError(400, f"stop takes up to {MAX_STOP} non-empty strings, got {stops!r}.", param="stop")

    def sampling(self) -> dict:
        """OpenAI's defaults where a field is not set: temperature 1, top_p 1, no top_k, no penalty."""
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": self.top_k or 0,
            "repetition_penalty": self.repetition_penalty or 1.0,
        }

    def stop_words(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None

    def check(self) -> None:
        super().check()
        if self.tool_choice not in (None, "auto", "none"):
            raise APIError(
                400,
                "tool_choice can be 'auto' or 'none' here; the model decides whether to call a tool.",
                param="tool_choice",
            )
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise APIError(400, "response_format must be {'type': 'text'} here.", param="response_format")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens differ; send one.", param="max_tokens")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def tool_list(self) -> list[dict] | None:
        """The tools for the chat template (OpenAI's format is the one HF templates read)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def check(self) -> None:
        super().check()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise APIError(400, "prompt: send one prompt per request (a string).", param="prompt")
        if self.echo or self.suffix:
            raise APIError(400, "echo and suffix are not supported by xtune serve.", param="echo")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def _text(content: str | list[ContentPart] | None, index: int, images: list[tuple[str, str]] | None) -> str:
    """The message's text; with ``images`` (the model reads them), each ``image_url`` part becomes an
    ``<image>`` marker in its place and its ``(param, url)`` is appended to ``images``."""
    if content is None or isinstance(content, str):
        return content or ""
    param = f"messages.{index}.content"
    text, previous = "", None
    for part in content:
        if part.type == "text" and part.text is not None:
            # text parts are lines; an image sits right against its neighbours, so [image, text] reads
            # "<image>text": what `xtune chat --image` asks and how training data places unmarked images
            text += ("\n" if previous == "text" else "") + part.text
            previous = "text"
        elif part.type == "image_url" and images is not None:
            if part.image_url is None:
                raise APIError(400, f"{param}: an image_url part needs image_url: {{url: ...}}.", param=param)
            images.append((param, part.image_url.url))
            text += IMAGE_PLACEHOLDER
            previous = "image"
        else:
            reads = "text only" if images is None else "text and images"
            message = f"messages[{index}].content: this model reads {reads}, got a '{part.type}' part."
            raise APIError(400, message, param=param)
    return text


def template_messages(messages: list[Message], images: list[tuple[str, str]] | None = None) -> list[dict]:
    """OpenAI messages as the chat template reads them (the conversation schema of training).

    ``developer`` is OpenAI's newer name for ``system``. Tool-call arguments, a JSON string in the API,
    become objects, as training data holds them.

    Args:
        messages: The request's messages.
        images: For a vision-language model, a list that receives ``(param, url)`` of every image part,
            in order; the part itself becomes an ``<image>`` marker. None: image parts are refused.

    Raises:
        APIError: 400 for a message without its content, with a part the model cannot read, or with
            arguments that are not a JSON object.
    """
    out = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if message.content is None and not (role == "assistant" and message.tool_calls):
            raise APIError(400, f"messages[{index}]: a {role} message needs content.", param=f"messages.{index}")
        entry: dict[str, Any] = {"role": role, "content": _text(message.content, index, images)}
        if role == "assistant" and message.tool_calls:
            entry["tool_calls"] = [_call(call, index) for call in message.tool_calls]
        if role == "tool":
            entry.update({key: value for key in ("tool_call_id", "name") if (value := getattr(message, key))})
        out.append(entry)
    return out


def _call(call: ToolCall, index: int) -> dict:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(
            400,
            f"messages[{index}].tool_calls: arguments of '{call.function.name}' must be a JSON object in a string.",
            param=f"messages.{index}.tool_calls",
        )
    return {"type": "function", "function": {"name": call.function.name, "arguments": arguments}}
