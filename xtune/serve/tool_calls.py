"""Tool calls in a generated answer, for chat templates whose tool-call format is known.

Formats (the text the template writes for an assistant ``tool_calls`` turn, so the model learns it):

- ``hermes`` (``qwen2_5``, ``qwen3``, and a tokenizer's own template that writes ``<tool_call>`` tags):
  ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``, one block per call, text around them.
- ``llama3`` (``llama3``): the whole answer is ``{"name": ..., "parameters": {...}}``.

Text that looks like a call but does not parse stays in the answer's content: a malformed call is
shown to the client, never dropped.
"""

import json
import re
import uuid
from dataclasses import dataclass

from xtune.chat.stopping import builtin_template_name

_FORMATS = {"qwen2_5": "hermes", "qwen3": "hermes", "llama3": "llama3"}
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class ParsedAnswer:
    """An answer split into its text and its tool calls (OpenAI's ``tool_calls`` entries)."""

    content: str | None
    tool_calls: list[dict]


def tool_call_format(tokenizer, template: str) -> str | None:
    """The tool-call format of ``template`` (``auto``: the built-in the tokenizer's template is, else
    ``hermes`` when its template writes ``<tool_call>`` tags), or None when it has none."""
    name = template if template != "auto" else builtin_template_name(tokenizer)
    if name is not None:
        return _FORMATS.get(name)
    return "hermes" if "<tool_call>" in (getattr(tokenizer, "chat_template", None) or "") else None


def _call(name, arguments) -> dict | None:
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _load(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_tool_calls(answer: str, fmt: str | None) -> ParsedAnswer:
    """Split ``answer`` into content and tool calls in format ``fmt`` (None: no calls)."""
    if fmt == "hermes":
        calls, kept, last = [], [], 0
        for match in _HERMES.finditer(answer):
            body = _load(match.group(1))
            call = _call(body.get("name"), body.get("arguments")) if isinstance(body, dict) else None
            if call is None:
                continue  # stays in the content below
            calls.append(call)
            kept.append(answer[last : match.start()])
            last = match.end()
        if calls:
            content = ("".join(kept) + answer[last:]).strip()
            return ParsedAnswer(content or None, calls)
    elif fmt == "llama3":
        body = _load(answer.strip())
        if isinstance(body, dict):
            call = _call(body.get("name"), body.get("parameters", body.get("arguments")))
            if call is not None:
                return ParsedAnswer(None, [call])
    return ParsedAnswer(answer, [])
