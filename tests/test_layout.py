"""The code's layout is its architecture: each module uses only those before it on the path from data to
report, and the speed code (`fast/`) is imported in one place."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tinymnist"
# the path, in order; a module may import only those before it
ORDER = ["errors", "files", "data", "recipes", "judge", "augment", "ghost", "nets", "model", "fast", "runtime",
         "engine", "records", "run", "summary", "figures", "predict", "export", "bench", "report", "ship", "serve",
         "sweep", "search", "cli", "__main__"]


def placed(path: Path) -> str:
    """The name `path` has in ORDER: a module's, or its subpackage's (`fast/`, `report/`: each is placed as one
    module, and within it its modules import each other freely)."""
    return path.stem if path.parent == PACKAGE else path.parent.name


def internal_imports(path: Path) -> set[str]:
    """The package's own modules that `path` imports (top level of the package: `fast.x` counts as `fast`)."""
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


def test_the_speed_code_is_imported_from_one_place():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if placed(p) != "fast" and "fast" in internal_imports(p))
    assert users == ["runtime.py"]

