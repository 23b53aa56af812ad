"""The tree's shape: no import cycle between modules or between rooms (every import counted, those
inside functions included), and the CLI speaks only the public API."""

import ast
from pathlib import Path

import mechlab

ROOT = Path(mechlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _owner(name: str) -> str:
    """The mechlab module ``name`` lives in (``mechlab.sites.Site`` → ``mechlab.sites``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> set[str]:
    """The mechlab modules ``path`` imports, anywhere in it (``mechlab`` itself left out)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechlab"):
            for alias in node.names:
                found.add(_owner(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found.update(_owner(a.name) for a in node.names if a.name.startswith("mechlab"))
    return found - {"mechlab"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_back_through_others() -> None:
    graph = {name: imports(path) - {name} for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_no_room_imports_itself_back_through_other_rooms() -> None:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph.setdefault(_room(name), set()).update(
            _room(m) for m in imports(path) if _room(m) != _room(name)
        )
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cli_imports_only_the_public_api() -> None:
    for name, path in MODULES.items():
        if name.startswith("mechlab.cli"):
            outside = {m for m in imports(path) if not m.startswith("mechlab.cli")}
            assert outside == set(), f"{name} imports {outside}; use mechlab.<name> instead"
