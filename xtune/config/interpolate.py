"""Knob references in configs: ``'${lr}'`` or ``'${warmup_ratio * max_epochs}'``.

A config's top-level knobs (``lr``, ``max_length``, ``batch_size``, ...) are the values users change.
The structured fields built from them (``optim_wrapper.optimizer.lr``, the dataset's ``max_length``)
refer to the knobs by name, so a knob changed anywhere (a leaf config, ``--cfg-options lr=1e-5``)
reaches every field derived from it. A reference that is the whole string keeps the knob's type;
one inside a longer string is formatted into it. Expressions are plain arithmetic on knob names.
"""

import ast
import copy
import operator
import re
from typing import Any

from xtune.errors import ConfigError

_REF = re.compile(r"\$\{([^{}]+)\}")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _eval(expr: str, knobs: dict, where: str, stack: tuple = ()) -> Any:
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse the reference '${{{expr}}}': {exc.msg}.") from None

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in knobs:
                raise ConfigError(
                    f"{where}: the reference '${{{expr}}}' names '{node.id}', which is not a top-level "
                    f"key of the config. Define `{node.id} = ...` at the top of the config."
                )
            if node.id in stack:
                cycle = " -> ".join((*stack, node.id))
                raise ConfigError(f"{where}: the knob references form a cycle: {cycle}. Break the cycle.")
            return resolve(knobs[node.id], knobs, where=node.id, _stack=(*stack, node.id))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            try:
                return _BINOPS[type(node.op)](left, right)
            except (TypeError, ZeroDivisionError) as exc:
                names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
                values = ", ".join(f"{name}={resolve(knobs[name], knobs, where=name)!r}" for name in names)
                raise ConfigError(
                    f"{where}: cannot compute '${{{expr}}}' with {values}: {exc}. Give those knobs numbers, "
                    f"or set {where} itself."
                ) from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "max"):
            args = [walk(a) for a in node.args]
            return int(*args) if node.func.id == "int" else max(*args)
        raise ConfigError(
            f"{where}: '${{{expr}}}' is not a knob name or arithmetic on knob names (+ - * / // %, int, max)."
        )

    return walk(tree)


def resolve(value: Any, knobs: dict, where: str = "config", _stack: tuple = ()) -> Any:
    """Return ``value`` with every ``${...}`` reference replaced by the knob's value.

    Args:
        value: Any config value: dicts and lists are walked recursively.
        knobs: The config's top-level keys and values.
        where: The dotted key of ``value``, for error messages.

    Raises:
        ConfigError: A reference names an unknown key or is not valid arithmetic.
    """
    if isinstance(value, dict):
        return type(value)((k, resolve(v, knobs, f"{where}.{k}", _stack)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(resolve(v, knobs, f"{where}[{i}]", _stack) for i, v in enumerate(value))
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _REF.fullmatch(value.strip())
    if whole:
        return copy.deepcopy(_eval(whole.group(1), knobs, where, _stack))
    return _REF.sub(lambda m: str(_eval(m.group(1), knobs, where, _stack)), value)
