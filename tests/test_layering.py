"""The package's layering (the design's floor table, below): each floor imports only floors below it.

Every `import` in every module counts, function-level and lazy ones included: an upward import
hidden in a function is still a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "moshi_mlx"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Floor of each top-level unit (a subpackage or a module of the package); higher imports lower.
# Within one unit imports are free. The package's own `__init__`/`__main__` re-export everything.
LAYERS: dict[str, int] = {
    "__init__": 8, "__main__": 8,
    "cli": 7,
    "serve": 6, "train": 6,
    "audio": 5, "api": 5,
    "weights": 4, "generate": 4,
    "models": 3,
    "modules": 2, "hub": 2,
    "config": 1, "sampling": 1, "tokenizer": 1,
    "errors": 0, "files": 0,
}


def unit(module: str) -> str:
    """`moshi_mlx.cli.chat` -> `cli`; the package itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for each import of the package in `path`."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == root.name:  # `from moshi_mlx import x`: submodule x, or a name of the top floor
                for a in node.names:
                    if (root / a.name).is_dir() or (root / f"{a.name}.py").is_file():
                        found.append((node.lineno, f"{target}.{a.name}"))
                    elif not (a.name.startswith("__") and a.name.endswith("__")):  # __version__ is metadata
                        found.append((node.lineno, target))
            else:
                found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == root.name or m.startswith(root.name + ".")]


def violations(root: Path, layers: dict[str, int]) -> list[str]:
    """One line per import that goes up (or sideways into another unit of the same floor)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        src_unit = "__main__" if path.name == "__main__.py" and path.parent == root else unit(src)
        if src_unit not in layers:
            problems.append(f"{path}: unit {src_unit!r} has no floor in the layer table")
            continue
        for line, target in imported_modules(path, root):
            dst_unit = unit(target)
            if dst_unit == src_unit:
                continue
            if dst_unit not in layers:
                problems.append(f"{path}:{line}: imports {target}, whose unit {dst_unit!r} has no floor")
            elif layers[dst_unit] >= layers[src_unit]:
                problems.append(f"{path}:{line}: {src_unit} (floor {layers[src_unit]}) imports {target} "
                                f"(floor {layers[dst_unit]})")
    return problems


def test_no_module_imports_a_higher_or_same_floor():
    assert violations(ROOT, LAYERS) == []


def test_every_unit_of_the_package_has_a_floor():
    units = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("source,text", [
    ("modules/attention.py", "from moshi_mlx.audio import io\n"),
    ("modules/attention.py", "def f():\n    from ..models import lm\n"),  # lazy and relative
    ("config.py", "from . import sampling\n"),  # sideways on the same floor
    ("models/lm.py", "import moshi_mlx.generate as g\n"),
    ("hub.py", "from moshi_mlx import weights\n"),
    ("weights/__init__.py", "from .. import Lm\n"),  # the package's re-exports are its top floor
    ("files.py", "from .errors import MoshiError\n"),
])
def test_a_synthetic_upward_import_is_caught(tmp_path, source, text):
    root = tmp_path / PACKAGE
    for rel in ("__init__.py", "modules/__init__.py", "modules/attention.py", "models/__init__.py",
                "models/lm.py", "audio/__init__.py", "audio/io.py", "config.py", "sampling.py", "hub.py",
                "weights/__init__.py", "generate.py", "files.py", "errors.py"):
        _write(root, rel, "")
    assert violations(root, LAYERS) == []
    _write(root, source, text)
    found = violations(root, LAYERS)
    assert len(found) == 1 and found[0].startswith(str(root / source)), found


def test_downward_and_same_unit_imports_pass(tmp_path):
    root = tmp_path / PACKAGE
    _write(root, "__init__.py", "from .cli import main\n")
    _write(root, "cli/__init__.py", "from . import main\nfrom ..audio.io import read\nfrom moshi_mlx.files import w\n")
    _write(root, "cli/main.py", "from .common import x\nimport moshi_mlx.cli.common\n")
    _write(root, "cli/common.py", "")
    _write(root, "audio/io.py", "from ..models.mimi import Mimi\nimport numpy\n")
    _write(root, "models/mimi.py", "from ..modules import conv\n")
    _write(root, "modules/conv.py", "from ..config import X\n")
    _write(root, "config.py", "from .errors import E\n")
    assert violations(root, LAYERS) == []
