"""xtune.hf is the bottom layer: it imports no other part of xtune, and the packages' imports form no circle."""

import ast
from pathlib import Path

import xtune

PACKAGE = Path(xtune.__file__).parent


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``xtune.*`` modules ``path`` imports (every import, or only those run when it is imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("xtune.")}


def _room(module: str) -> str:
    """``xtune.hf.load`` -> ``hf``; the top-level modules (errors, paths, registry) are rooms of their own."""
    return module.split(".")[1]


def test_hf_imports_nothing_above_it():
    allowed = {"hf", "errors"}
    for path in (PACKAGE / "hf").glob("*.py"):
        rooms = {_room(name) for name in _imports(path, top_level_only=False)}
        assert rooms <= allowed, f"{path.name} imports xtune.{sorted(rooms - allowed)}"


def test_the_package_import_graph_has_no_circles():
    """Imports that run at import time only: a circle among them breaks whichever module is imported first."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        room = relative.parts[1] if len(relative.parts) > 1 else "xtune"
        targets = {_room(name) for name in _imports(path, top_level_only=True)} - {room}
        graph.setdefault(room, set()).update(targets)
    done: set[str] = set()

    def visit(room: str, trail: list[str]) -> None:
        if room in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(room) :], room]))
        if room in done:
            return
        for target in sorted(graph.get(room, ())):
            visit(target, [*trail, room])
        done.add(room)

    for room in sorted(graph):
        visit(room, [])
    assert "hf" in graph and "model" in graph
