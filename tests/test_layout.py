"""The code's layout is its architecture: each module uses only those before it on the path from data to
report, and the speed code (`fast/`) is imported in one place."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tinymnist"
# the path, in order; a module may import only those before it
ORDER = ["errors", "files", "data", "recipes", "judge", "augment", "ghost", "nets", "usernet", "model", "fast",
         "runtime", "engine", "records", "run", "summary", "figures", "predict", "export", "bench", "report", "ship",
         "serve", "sweep", "search", "cli", "__main__"]
# within a subpackage, its own path: a module may import only those before it (its __init__ may import all);
# a subpackage not named here is placed as one module and its modules import each other freely
INNER = {
    "fast": ["dropout", "flat", "kernels"],
    "records": ["provenance", "record", "locks", "checkpoints", "states"],
    "report": ["common", "tables", "bench", "sections", "pages", "folder"],
    "serve": ["request", "models", "server", "loadtest"],
}


def placed(path: Path) -> str:
    """The name `path` has in ORDER: a module's, or its subpackage's (`fast/`, `records/`, `report/`: each is
    placed as one module, and within it its modules follow INNER)."""
    return path.stem if path.parent == PACKAGE else path.parent.name


def internal_imports(path: Path) -> set[str]:
    """The package's own modules that `path` imports (top level of the package: `fast.x` counts as `fast`);
    for a module of a subpackage, not its imports from within the subpackage (`sibling_imports`)."""
    found = set()
    inside = path.parent != PACKAGE
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = node.module.split(".")[0] if node.module else None
            if inside and node.level == 1:
                continue  # within the subpackage
            if base:
                found.add(base)
            else:
                found.update(alias.name for alias in node.names)
    return found


# the package's own __init__ imports the API lazily; a subpackage's __init__ is checked like its modules
@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_modules_before_it(path):
    name = placed(path)
    assert name in ORDER, f"{name} is not placed on the path in ORDER"
    later = {m for m in internal_imports(path) if ORDER.index(m) >= ORDER.index(name) and m != name}
    assert not later, f"{path.name} imports {sorted(later)}, which stand after it"


def sibling_imports(path: Path) -> set[str]:
    """The modules of its own subpackage that a subpackage's module imports (`from .x import ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else (alias.name for alias in node.names))
    return found


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.parent.name in INNER),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_within_a_subpackage_each_module_imports_only_those_before_it(path):
    inner = INNER[path.parent.name]
    if path.stem == "__init__":
        assert sibling_imports(path) <= set(inner), f"{path.name} imports modules not placed in INNER"
        return
    assert path.stem in inner, f"{path.parent.name}/{path.name} is not placed in INNER"
    later = {m for m in sibling_imports(path) if m not in inner or inner.index(m) >= inner.index(path.stem)}
    assert not later, f"{path.parent.name}/{path.name} imports {sorted(later)}, which stand after it"


def test_the_speed_code_is_imported_from_one_place():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if placed(p) != "fast" and "fast" in internal_imports(p))
    assert users == ["runtime.py"]

