"""Convert raw rows of every data format into the one conversation schema (see ``schema.py``).

Each format is a small pure function of one row. Any problem raises :class:`DataError` as
``"<file>, row <n>: <problem>. <how to fix>"`` (``line <n>`` for .jsonl and .txt files), so a bad row can
be found in the file, or skipped with ``skip_bad_rows``.

Formats (column names are defaults; ``DatasetSpec.columns`` maps them to other names):

* ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history``
  (a list of ``[query, answer]`` pairs that come before the instruction).
* ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns with roles ``human``/``user``,
  ``gpt``/``assistant``, ``system``, ``function_call`` (a JSON ``{"name", "arguments"}`` or a list of
  them) and ``observation``; optional ``system`` and ``tools``. ``DatasetSpec.tags`` renames the keys
  and roles; a tag that is set replaces both default names of its role.
* ``openai``: ``messages`` of ``{"role", "content", "tool_calls"}``; optional ``tools``.
* ``text``: ``text``.
* ``preference``: ``chosen`` and ``rejected`` replies after a prompt that is either alpaca style
  (``instruction``/``input``/``system``/``history``) or a conversation (``conversations`` in ShareGPT
  style or ``messages`` in OpenAI style). A reply is a string or one assistant turn.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any, NoReturn

import datasets

from xtune.dataset.dataset_info import DEFAULT_TAGS, FORMATS, MEDIA_COLUMNS, STAGE_COLUMNS, DatasetSpec
from xtune.dataset.loading import iter_rows
from xtune.errors import ConfigError, DataError

# Many ShareGPT files say user/assistant instead of human/gpt: accepted unless the tag is set.
_EXTRA_ROLE_NAMES = {"user_tag": ("user",), "assistant_tag": ("assistant",)}
_TAG_KIND = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
    "function_tag": "function_call",
    "observation_tag": "tool",
}
# "developer" is OpenAI's newer name for the system role.
_OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
PAIRS = "Write history as [[query, answer], ...]"


def _fail(where: str, problem: str, fix: str) -> NoReturn:
    raise DataError(f"{where}: {problem}. {fix}")


def row_location(row: dict[str, Any]) -> str:
    """Where a raw row comes from, for errors: ``<file>, line N`` (JSON Lines, text) or ``<file>, row N``."""
    source = str(row.get("_source", "<unknown source>"))
    unit = "line" if source.endswith((".jsonl", ".txt")) else "row"
    return f"{source}, {unit} {row.get('_row', '?')}"


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# A column that marks a row's format, for the hint in errors ("is this sharegpt data?"), first match wins.
FORMAT_GUESSES = {"conversations": "sharegpt", "messages": "openai", "instruction": "alpaca", "text": "text"}


def _format_hint(row: dict[str, Any]) -> str:
    found = [key for key in row if not key.startswith("_")]
    guess = next((fmt for key, fmt in FORMAT_GUESSES.items() if row.get(key) is not None), None)
    hint = f" (the row has columns {found}"
    return hint + (f"; is this {guess} data?)" if guess else ")")


# ----------------------------------------------------------------------------- columns and values


def _column(spec: DatasetSpec, name: str) -> str:
    return spec.columns.get(name, name)


def _required_str(row: dict[str, Any], spec: DatasetSpec, name: str, where: str) -> str:
    column = _column(spec, name)
    value = row.get(column)
    if value is None and column in row:
        _fail(
            where,
            f"column '{column}' is missing or null",
            "Give it a value, or drop the row (or set skip_bad_rows=True)",
        )
    if value is None:
        _fail(
            where,
            f"missing column '{column}' for {spec.data_format} data{_format_hint(row)}",
            f"Add it, map your column with columns={{'{name}': '<column>'}}, or set the right data_format",
        )
    if not isinstance(value, str):
        _fail(where, f"column '{column}' must be a string, got {_type(value)}", "Write it as text")
    if not value.strip():
        _fail(where, f"column '{column}' is empty", "Fill it in, or drop the row")
    return value


def _optional_str(row: dict[str, Any], spec: DatasetSpec, name: str, where: str) -> str:
    column = _column(spec, name)
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        _fail(where, f"column '{column}' must be a string, got {_type(value)}", "Write it as text")
    return value


def _has_name(function: Any) -> bool:
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])


def _arguments(value: Any, where: str, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            _fail(where, f"{what}: arguments are not valid JSON ({err.msg})", 'Write them as {"key": value}')
    if not isinstance(value, dict):
        _fail(where, f"{what}: arguments must be a JSON object, got {_type(value)}", 'Write {"key": value}')
    return value


def _tool_call(call: Any, where: str, what: str) -> dict[str, Any]:
    """One call, as ``{"name", "arguments"}`` or OpenAI's ``{"type": "function", "function": {...}}``."""
    function = call.get("function") if isinstance(call, dict) and "function" in call else call
    if isinstance(call, dict) and call.get("type", "function") != "function":
        _fail(where, f"{what}: unsupported tool call type {call['type']!r}", "Only function calls work")
    if not _has_name(function):
        _fail(where, f"{what} has no function name: {call!r}", 'Write {"name": ..., "arguments": {...}}')
    arguments = _arguments(function.get("arguments"), where, what)
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _tools(value: Any, where: str, column: str) -> list[dict[str, Any]] | None:
    """Normalise a tools column (JSON text or a list) to ``[{"type": "function", "function": {...}}]``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            _fail(where, f"column '{column}' is not valid JSON ({err.msg})", "Write a JSON list of functions")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        _fail(where, f"column '{column}' must be a list of tools, got {_type(value)}", "Write a JSON list")
    tools = []
    for i, tool in enumerate(value, 1):
        wrapped = isinstance(tool, dict) and "function" in tool
        function = tool["function"] if wrapped else tool
        if wrapped and tool.get("type", "function") != "function":
            _fail(where, f"tool {i} in '{column}' has type {tool['type']!r}", "Only function tools work")
        if not _has_name(function):
            _fail(where, f"tool {i} in '{column}' has no name", 'Write {"name", "description", "parameters"}')
        tools.append({"type": "function", "function": dict(function)})
    return tools or None


# ----------------------------------------------------------------------------- conversations


def _content(value: Any, where: str, turn: int, role: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"turn {turn} ({role}) content must be a string, got {_type(value)}", "Write it as text")
    return value


def _turns(row: dict[str, Any], spec: DatasetSpec, where: str, column: str) -> list[Any]:
    turns = row.get(column)
    if turns is None:
        _fail(
            where,
            f"missing column '{column}' for {spec.data_format} data{_format_hint(row)}",
            "Add it, map your column with columns={'messages': '<column>'}, or set the right data_format",
        )
    if not isinstance(turns, list):
        _fail(where, f"column '{column}' must be a list of turns, got {_type(turns)}", "Write a JSON list")
    if not turns:
        _fail(where, f"empty conversation in column '{column}'", "Add turns, or drop the row")
    return turns


@functools.lru_cache(maxsize=64)
def _role_names(tags: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """ShareGPT role name -> schema role (or "function_call"), for the given tag overrides."""
    given = dict(tags)
    names = {}
    for key, kind in _TAG_KIND.items():
        extra = () if key in given else _EXTRA_ROLE_NAMES.get(key, ())
        for name in (given.get(key, DEFAULT_TAGS[key]), *extra):
            names[name] = kind
    return names


def _sharegpt_messages(turns: list[Any], spec: DatasetSpec, where: str) -> tuple[list[dict], list[int]]:
    """ShareGPT turns -> messages, and the 1-based turn each message came from (for errors)."""
    tags = {**DEFAULT_TAGS, **spec.tags}
    role_of = _role_names(tuple(sorted(spec.tags.items())))
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    messages: list[dict[str, Any]] = []
    positions: list[int] = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or role_tag not in turn:
            keys = sorted(turn) if isinstance(turn, dict) else _type(turn)
            _fail(
                where,
                f"turn {i} has no '{role_tag}' key (got {keys})",
                f"Write turns as {{'{role_tag}': ..., '{content_tag}': ...}}, or set tags role_tag/content_tag"
                + (" (or use data_format='openai')" if isinstance(turn, dict) and "role" in turn else ""),
            )
        name = turn[role_tag]
        kind = role_of.get(name) if isinstance(name, str) else None
        if kind is None:
            _fail(
                where,
                f"turn {i} has unknown role {name!r}",
                f"Use one of {sorted(role_of)}, or set tags (user_tag, assistant_tag, ...) to your role names",
            )
        value = turn.get(content_tag)
        if kind == "function_call":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    _fail(
                        where,
                        f"turn {i} ({name}) is not valid JSON ({err.msg})",
                        'Write {"name": ..., "arguments": {...}} or a list of those',
                    )
            calls = value if isinstance(value, list) and value else [value]
            calls = [_tool_call(call, where, f"turn {i} ({name})") for call in calls]
            if messages and messages[-1]["role"] == "assistant":
                # Parallel calls arrive as consecutive turns; a reply may also go on to call a tool.
                messages[-1].setdefault("tool_calls", []).extend(calls)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
                positions.append(i)
            continue
        messages.append({"role": kind, "content": _content(value, where, i, name)})
        positions.append(i)
    return messages, positions


def _openai_messages(turns: list[Any], where: str) -> tuple[list[dict], list[int]]:
    messages = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            _fail(where, f"turn {i} must be an object, got {_type(turn)}", 'Write {"role", "content"}')
        role = _OPENAI_ROLES.get(turn.get("role"))
        if role is None:
            _fail(
                where,
                f"turn {i} has unknown role {turn.get('role')!r}",
                f"Use one of {sorted(_OPENAI_ROLES)} (sharegpt-style turns need data_format='sharegpt')",
            )
        calls = turn.get("tool_calls")
        if calls and role != "assistant":
            _fail(where, f"turn {i} ({role}) has tool_calls", "Only assistant turns may call tools")
        if calls:
            if not isinstance(calls, list):
                _fail(where, f"turn {i}: tool_calls must be a list, got {_type(calls)}", "Write a JSON list")
            content = turn.get("content")
            message = {"role": role, "content": "" if content is None else _content(content, where, i, role)}
            message["tool_calls"] = [_tool_call(c, where, f"turn {i} tool call {k}") for k, c in enumerate(calls, 1)]
        else:
            message = {"role": role, "content": _content(turn.get("content"), where, i, role)}
        messages.append(message)
    return messages, list(range(1, len(messages) + 1))


def _order_problem(role: str, prev: str | None, open_calls: int) -> tuple[str, str] | None:
    """What is wrong with a ``role`` turn after a ``prev`` turn, as (problem, fix), or None.

    As lenient as LLaMA-Factory, which checks only that user/observation turns and assistant/function
    turns alternate: a tool result may follow an assistant reply without a call (glaive_toolcall data
    has such rows) or open the conversation, and a user may speak after a tool call; each renders
    with the meaning it has there.
    """
    if role == "system" and prev is not None:
        return "is a system turn after the start", "Only the first turn may be a system prompt"
    if role == "user" and prev == "user":
        return "is a second user turn in a row", "Merge the two, or add the assistant's reply between them"
    if role == "user" and prev == "tool":
        return "is a user turn right after a tool result", "Add the assistant's answer to the result first"
    if role == "assistant" and prev in (None, "system"):
        return "is an assistant turn at the start", "Start the conversation with a user turn"
    if role == "assistant" and prev == "assistant":
        if open_calls:
            return "follows a tool call that has no tool result", "Add the tool result (observation) first"
        return "is a second assistant turn in a row", "Merge the two, or add the user turn between them"
    if role == "tool" and prev == "user":
        return "is a tool result right after a user turn", "Add the assistant's tool call (function_call) first"
    if role == "tool" and prev == "tool" and not open_calls:
        return "is one tool result more than the tool calls made", "Drop it, or add the missing tool call"
    return None


def _check_order(messages: list[dict], positions: list[int], where: str, ends_with: str) -> None:
    """Reject conversations no chat template can render: wrong role order, empty turns.

    ``ends_with`` is ``"assistant"`` for SFT samples and ``"prompt"`` for preference prompts (which end
    with a user turn or a tool result). An SFT sample may end with a tool call: the model learns to call.
    """
    if all(m["role"] == "system" for m in messages):
        _fail(where, "empty conversation (no user turn)", "Add a user turn and the assistant's reply")
    prev = None
    open_calls = 0  # calls of the last assistant turn that have no tool result yet
    for message, turn in zip(messages, positions):
        role = message["role"]
        if role in ("user", "assistant") and not message["content"].strip() and not message.get("tool_calls"):
            _fail(where, f"turn {turn} ({role}) is empty", "Fill it in, or drop the row")
        problem = _order_problem(role, prev, open_calls)
        if problem:
            _fail(where, f"turn {turn} {problem[0]}", problem[1])
        if role == "tool":
            open_calls = max(0, open_calls - 1)
        else:
            open_calls = len(message.get("tool_calls", ()))
        prev = role
    if ends_with == "assistant" and prev != "assistant":
        _fail(where, f"conversation ends with a {prev} turn", "End it with the assistant's reply")
    if ends_with == "prompt" and prev not in ("user", "tool"):
        _fail(where, f"prompt ends with a {prev} turn", "End it with the turn that chosen/rejected answer")


def _with_system(messages: list[dict], system: str, where: str, column: str) -> list[dict]:
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"] != system:
            _fail(where, f"both column '{column}' and a system turn give a system prompt", "Keep one of them")
        return messages
    return [{"role": "system", "content": system}, *messages]


def _parse_turns(turns: list[Any], spec: DatasetSpec, where: str) -> tuple[list[dict], list[int]]:
    if spec.data_format == "openai":
        return _openai_messages(turns, where)
    if spec.data_format == "preference":
        # Preference conversations come in either style; the first turn's keys tell which.
        role_tag = spec.tags.get("role_tag", DEFAULT_TAGS["role_tag"])
        first = turns[0] if isinstance(turns[0], dict) else {}
        if role_tag not in first and "role" in first:
            return _openai_messages(turns, where)
    return _sharegpt_messages(turns, spec, where)


def _messages_column(row: dict[str, Any], spec: DatasetSpec) -> str | None:
    if "messages" in spec.columns:
        return spec.columns["messages"]
    order = ("messages", "conversations") if spec.data_format == "openai" else ("conversations", "messages")
    found = next((name for name in order if row.get(name) is not None), None)
    if found is None and spec.data_format != "preference":
        return order[0]  # reported as missing
    return found


# ----------------------------------------------------------------------------- formats


def _alpaca_prompt(row: dict[str, Any], spec: DatasetSpec, where: str) -> list[dict]:
    instruction = _required_str(row, spec, "instruction", where)
    query = _optional_str(row, spec, "input", where)
    system = _optional_str(row, spec, "system", where)
    history = row.get(_column(spec, "history")) or []
    messages = [{"role": "system", "content": system}] if system else []
    if not isinstance(history, list):
        _fail(where, f"column '{_column(spec, 'history')}' must be a list, got {_type(history)}", PAIRS)
    for i, pair in enumerate(history, 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            _fail(where, f"history item {i} is not a [query, answer] pair of strings: {pair!r}", PAIRS)
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": f"{instruction}\n{query}" if query else instruction})
    return messages


def _reply(row: dict[str, Any], spec: DatasetSpec, name: str, where: str) -> dict[str, Any]:
    """A chosen or rejected reply: a string, or one assistant turn (alone or in a one-item list)."""
    column = _column(spec, name)
    value = row.get(column)
    if isinstance(value, str):
        return {"role": "assistant", "content": _required_str(row, spec, name, where)}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        if value is None:
            _required_str(row, spec, name, where)  # raises the missing-column error
        _fail(where, f"column '{column}' must be text or one assistant turn, got {_type(value)}", "Fix it")
    messages, _ = _parse_turns([value], spec, where)
    message = messages[0]
    if message["role"] != "assistant":
        _fail(where, f"column '{column}' is a {message['role']} turn", "chosen/rejected must be assistant turns")
    if not message["content"].strip() and not message.get("tool_calls"):
        _fail(where, f"column '{column}' is empty", "Fill it in, or drop the row")
    return message


def convert_row(row: dict[str, Any], spec: DatasetSpec, uses: tuple[str, ...] = ()) -> dict[str, Any]:
    """Convert one raw row (with ``_source`` and ``_row``) into a schema sample.

    ``uses`` names the media columns (:data:`MEDIA_COLUMNS`) the caller reads itself (the vision
    dataset reads ``images``); any other media column in the row is an error, not dropped.

    Returns:
        ``{"messages", "tools"}`` for alpaca, sharegpt and openai; ``{"text"}`` for text;
        ``{"messages", "chosen", "rejected", "tools"}`` for preference.

    Raises:
        DataError: The row is malformed; the message names the file and row and says how to fix it.
    """
    where = row_location(row)
    fmt = spec.data_format
    for media in MEDIA_COLUMNS:
        if media in uses:
            continue
        column = _column(spec, media)
        if media == "images" and media not in spec.columns and row.get(column) in (None, "", []):
            column = "image"  # LLaVA's JSON names its one image so
        if row.get(column) not in (None, "", []):
            _fail(
                where,
                f"column '{column}' holds {media}, which is used by {STAGE_COLUMNS[media]}; training on the text "
                f"alone would drop them silently",
                f"Remove the column (and its <{media[:-1]}> markers) to train on the text, or use another dataset",
            )
    if fmt == "text":
        return {"text": _required_str(row, spec, "text", where)}
    tools = _tools(row.get(_column(spec, "tools")), where, _column(spec, "tools"))
    if fmt == "alpaca":
        messages = _alpaca_prompt(row, spec, where)
        messages.append({"role": "assistant", "content": _required_str(row, spec, "output", where)})
        return {"messages": messages, "tools": tools}
    if fmt not in ("sharegpt", "openai", "preference"):
        raise ConfigError(f"unknown data format {fmt!r}. Valid formats: {', '.join(FORMATS)}.")
    column = _messages_column(row, spec)
    if column is None:  # alpaca-style preference prompt
        messages = _alpaca_prompt(row, spec, where)
    else:
        messages, positions = _parse_turns(_turns(row, spec, where, column), spec, where)
        _check_order(messages, positions, where, "prompt" if fmt == "preference" else "assistant")
        system = _optional_str(row, spec, "system", where)
        messages = _with_system(messages, system, where, _column(spec, "system"))
    if fmt != "preference":
        return {"messages": messages, "tools": tools}
    chosen = _reply(row, spec, "chosen", where)
    rejected = _reply(row, spec, "rejected", where)
    return {"messages": messages, "chosen": chosen, "rejected": rejected, "tools": tools}


def convert_rows(
    rows: Iterable[dict[str, Any]], spec: DatasetSpec, skip_bad_rows: bool = False, uses: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """Convert many rows; with ``skip_bad_rows`` a bad row is left out and its error message kept.

    ``uses``: the media columns the caller reads itself (see :func:`convert_row`).

    ``rows`` may be the dataset :func:`~xtune.dataset.loading.load_rows` returns (read in batches).

    Returns:
        The samples, and the error messages of the rows that were skipped.

    Raises:
        DataError: The first bad row, unless ``skip_bad_rows``.
    """
    samples: list[dict[str, Any]] = []
    skipped: list[str] = []
    for row in iter_rows(rows) if isinstance(rows, datasets.Dataset) else rows:
        try:
            samples.append(convert_row(row, spec, uses))
        except DataError as err:
            if not skip_bad_rows:
                raise
            skipped.append(str(err))
    return samples, skipped


def fill_placeholders(sample: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """Replace ``{{name}}`` placeholders in every text of a sample; unknown names are left as they are.

    Used for identity data such as "I am {{name}}, made by {{author}}".
    """

    def fill(text: str) -> str:
        if "{{" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    def fill_message(message: dict[str, Any]) -> dict[str, Any]:
        return {**message, "content": fill(message["content"])}

    out = dict(sample)
    if "text" in out:
        out["text"] = fill(out["text"])
    if "messages" in out:
        out["messages"] = [fill_message(m) for m in out["messages"]]
    for key in ("chosen", "rejected"):
        if key in out:
            out[key] = fill_message(out[key])
    return out
