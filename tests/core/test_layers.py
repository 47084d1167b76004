"""The layering of docs/architecture.md holds in the code: every import (module level or inside a
function) of every module of core/unisam and of every adapter goes only where its layer's row allows,
PyTorch stays in models/ and train/, and the table names every top-level module there is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "unisam"
DOC = ROOT / "docs" / "architecture.md"
TORCH_LAYERS = {"models", "train", "entry"}


def layer_table() -> dict[str, tuple[list[str], set[str]]]:
    """layer -> (its modules, the layers / names it may import), from the doc's table."""
    text = DOC.read_text()
    table = text[text.index("<!-- layers") : text.index("<!-- /layers -->")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    layers = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if set(cells[0]) <= {"-", " "}:
            continue
        modules = re.findall(r"`([^`]+)`", cells[1])
        layers[cells[0]] = (modules, {c.strip() for c in cells[2].split(",")})
    return layers


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against ``package``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            if not node.module or (node.level and module.count(".") == 0):  # `from . import x`
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def core_modules() -> dict[str, tuple[Path, str]]:
    """Top-level name under unisam (``api``, ``runtime``, ``__init__``, ...) -> files and packages."""
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        package = ".".join(parts[:-1])
        top = parts[1] if len(parts) > 2 or parts[-1] != "__init__" else "__init__"
        out[str(path)] = (top.removesuffix(".py"), package)
    return out


def layer_of(top: str, layers) -> str:
    for name, (modules, _) in layers.items():
        if top in modules:
            return name
    raise AssertionError(f"unisam.{top} is in no layer of {DOC.name}: add it to the table")


def test_the_table_covers_every_module_and_only_existing_ones():
    layers = layer_table()
    assert {"base", "runtime", "api", "hub", "adapters"} <= set(layers)
    tops = {top for top, _ in core_modules().values()}
    listed = {m for name, (modules, _) in layers.items() if name != "adapters" for m in modules}
    assert listed == tops, f"in the doc only: {sorted(listed - tops)}; in the code only: {sorted(tops - listed)}"
    for folder in layers["adapters"][0]:
        assert (ROOT / folder).is_dir(), folder


@pytest.mark.parametrize("path", sorted(core_modules()), ids=lambda p: str(Path(p).relative_to(CORE)))
def test_core_imports_follow_the_layers(path):
    layers = layer_table()
    top, package = core_modules()[path]
    mine = layer_of(top, layers)
    allowed = layers[mine][1]
    for module in imports_of(Path(path), package):
        parts = module.split(".")
        if parts[0] == "torch" or parts[0] == "torchvision":
            assert mine in TORCH_LAYERS, f"{path} ({mine}) imports {module}: PyTorch only in models/ and train/"
        if parts[0] != "unisam" or len(parts) == 1:
            continue
        target = layer_of(parts[1], layers)
        assert target in allowed, f"{path} ({mine} layer) imports {module} ({target} layer); allowed: {sorted(allowed)}"


@pytest.mark.parametrize("folder", ["plugins/fiftyone", "plugins/labelstudio", "plugins/napari"])
def test_adapters_use_only_the_public_api(folder):
    allowed = layer_table()["adapters"][1]
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    for path in files:
        for module in imports_of(path, "adapter"):
            if module.split(".")[0] != "unisam":
                continue
            assert any(module == a or module.startswith(a + ".") and a != "unisam" for a in allowed), (
                f"{path.relative_to(ROOT)} imports {module}: adapters may import only {sorted(allowed)}"
            )


def test_the_scan_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a runtime module that reaches up into the API inside a function is caught."""
    source = tmp_path / "tiling.py"
    source.write_text("def f():\n    from ..api import segment\n    import unisam.runtime.cache\n")
    assert imports_of(source, "unisam.runtime") == {"unisam.api", "unisam.runtime.cache"}
    layers = layer_table()
    assert layer_of("api", layers) not in layers["runtime"][1]
