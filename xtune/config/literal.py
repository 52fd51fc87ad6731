"""Config values read as data, never run.

Two places read config text that is not the user's own config file, so nothing in it may run:
``--cfg-options`` values (``lr=1e-5``, ``param_scheduler=[dict(type='LinearLR', end=2)]``) and the
resolved config that mmengine stores in every checkpoint (``meta['cfg']``), which ``pth_to_hf`` and
resume compare with the current config. A checkpoint is data: its config text is parsed with
:mod:`ast` and only literals are taken from it — numbers, strings, ``None``/``True``/``False``, lists,
tuples, dicts and ``dict(key=literal, ...)`` (the spelling mmengine writes). Anything else (a call, a
name, an attribute, an import) is refused or skipped; nothing is ever executed.
"""

import ast
from typing import Any


class NotALiteral(ValueError):
    """The text holds something other than a literal (a call, a name, an operator...)."""


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):  # {**other}
            raise NotALiteral("'**' inside a dict")
        return {_value(key): _value(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(keyword.arg is None for keyword in node.keywords):
            raise NotALiteral("'**' inside dict(...)")
        return {keyword.arg: _value(keyword.value) for keyword in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if isinstance(operand, (int, float, complex)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    raise NotALiteral(f"'{ast.unparse(node)}' is not a literal")


def parse_literal(text: str) -> Any:
    """Parse one literal value (``1e-5``, ``[dict(type='LinearLR')]``, ``None``).

    Raises:
        NotALiteral: The text does not parse, or holds something other than literals.
    """
    try:
        return _value(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError as exc:
        raise NotALiteral(exc.msg) from None
    except (RecursionError, MemoryError):  # absurdly nested text
        raise NotALiteral("nested too deeply") from None


def read_assignments(text: str) -> dict[str, Any]:
    """The ``name = literal`` statements of a Python config text, as a dict; nothing is executed.

    Statements that are not a plain assignment of a literal (imports, calls, expressions, ``if``...)
    are skipped, so a crafted text yields at most some data.

    Raises:
        NotALiteral: The text is not valid Python.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise NotALiteral(f"line {exc.lineno}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise NotALiteral("nested too deeply") from None
    values: dict[str, Any] = {}
    for statement in tree.body:
        if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
            continue
        target = statement.targets[0]
        if not isinstance(target, ast.Name):
            continue
        try:
            values[target.id] = _value(statement.value)
        except (NotALiteral, RecursionError):
            continue
    return values
