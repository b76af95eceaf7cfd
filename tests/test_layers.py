"""The package's modules import each other in layers, bottom to top, and never in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "weightslab"

# Bottom to top; a module may import its own layer (without cycles) and the layers below it.
LAYERS: list[set[str]] = [
    {"errors", "util"},
    {"storage"},
    {"format"},
    {"policy"},
    {"registry"},
    {"store"},
    {"system"},
    {"inspect"},
    {"analysis"},
    {"cli", "ui"},  # the dashboard serves what the command prints, and reuses its formatting
    {"components", "integrations", "__init__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports run at import time: top level, and inside if/try blocks other than ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level(node.body)
            found += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level(block)
    return found


def _imports(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported weightslab module: line}}``; ``from x import y`` counts ``x.y`` if a module."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        targets: dict[str, int] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                found = [(a.name, node.lineno) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found = [(base, node.lineno)]
                found += [
                    (f"{base}.{a.name}", node.lineno) for a in node.names if f"{base}.{a.name}" in modules
                ]
            for target, line in found:
                # the package's __init__ runs before any submodule anyway: it is the top, not a dependency
                if target in modules and target not in (name, "weightslab"):
                    targets.setdefault(target, line)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer; add its folder to LAYERS")


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_imports_form_layers_without_cycles() -> None:
    modules = _modules()
    graph = _imports(modules)
    problems = [f"cycle: {' <-> '.join(cycle)}" for cycle in _cycles(graph)]
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            if _layer(target) > _layer(module):
                where = modules[module].relative_to(PACKAGE.parent)
                problems.append(f"{where}:{line}: {module} imports {target} from a higher layer")
    assert not problems, "\n".join(problems)


# -- the storage seam ---------------------------------------------------------------------------------
# Every byte of a checkpoint root goes through a weightslab.storage.base.Storage: the modules above it
# never touch the file system themselves, so another backend (an object store) can be dropped in.
# weightslab/storage/ is the seam; weightslab/registry/ (it watches the user's own YAML file, not a
# root) and weightslab/cli/ are outside the rule.
ABOVE_THE_SEAM = ("store", "format", "system", "inspect", "analysis/local.py")

OS_CALLS = frozenset(
    {"open", "replace", "rename", "remove", "unlink", "rmdir", "mkdir", "makedirs", "fsync", "listdir"}
    | {"scandir", "stat", "walk"}
)
PATH_METHODS = frozenset(
    {"read_bytes", "read_text", "write_bytes", "write_text", "open", "unlink", "rename", "replace"}
    | {"rmdir", "mkdir", "iterdir", "rglob", "glob", "stat", "exists", "is_file", "is_dir", "touch"}
)
# Module names whose attributes share a name with a Path method.
NOT_PATHS = frozenset({"dataclasses", "re", "json", "yaml"})

# Modules allowed file I/O although above the seam, each with its reason.
IO_ALLOWED: dict[str, str] = {
    # the export goes to the user's own destination folder, outside any root, with its own fsync +
    # rename and the user's umask (safetensors' writer needs a real path there)
    "weightslab/inspect/export.py": "writes the user's export file",
    # sniffs the format from the first bytes, then torch.load / safe_open on the user's own file
    "weightslab/inspect/importing_formats.py": "reads the user's import source",
}


def _io_modules() -> list[Path]:
    found: list[Path] = []
    for part in ABOVE_THE_SEAM:
        target = PACKAGE / part
        found += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return found


def _io_hits(path: Path) -> list[str]:
    """``file:line call`` for each file-system call in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(PACKAGE.parent).as_posix()
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, what = node.func, None
        if isinstance(func, ast.Name) and func.id == "open":
            what = "open("
        elif isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id == "os":
                what = f"os.{func.attr}(" if func.attr in OS_CALLS else None
            elif isinstance(owner, ast.Name) and owner.id in NOT_PATHS:
                what = None  # dataclasses.replace(...): not file I/O
            elif func.attr == "replace" and len(node.args) != 1:
                what = None  # str.replace(old, new); Path.replace takes one target
            elif func.attr in PATH_METHODS and not _through_storage(owner):
                what = f".{func.attr}("
        if what is not None:
            out.append(f"{rel}:{node.lineno} {what}")
    return out


def _through_storage(owner: ast.expr) -> bool:
    """``self.storage.exists(...)``, ``storage.is_file(...)``, ``LocalStorage().is_dir(...)``, or the
    manifest store's ``exists``: a call through the seam."""
    names = ("storage", "_storage", "manifests")
    if isinstance(owner, ast.Attribute):
        return owner.attr in names
    if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name):
        return owner.func.id.endswith("Storage")
    return isinstance(owner, ast.Name) and owner.id in names


def test_no_file_io_above_the_storage_seam() -> None:
    hits = [h for path in _io_modules() for h in _io_hits(path) if h.split(":")[0] not in IO_ALLOWED]
    assert not hits, "file I/O above the storage seam; go through a Storage:\n" + "\n".join(hits)
