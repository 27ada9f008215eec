"""The layering the packages promise: `scripts` holds entry points only, `core` depends on nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.paths import CONFIG_DIR, SOURCE_ROOT

PACKAGES = ("core", "datamodules", "models", "calibration", "evaluation", "export", "tracking", "scripts")


def imported_packages(path: Path) -> set[str]:
    """Every top-level package a module imports, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def modules_of(package: str) -> list[Path]:
    return sorted((SOURCE_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "scripts"])
def test_no_package_imports_the_entry_points(package):
    importers = [str(m.relative_to(SOURCE_ROOT)) for m in modules_of(package) if "scripts" in imported_packages(m)]
    assert not importers, f"these modules import scripts/, which only entry points may live in: {importers}"


def test_core_imports_nothing_else_of_ours():
    outward = {str(m.relative_to(SOURCE_ROOT)): imported_packages(m) - {"core"} for m in modules_of("core")}
    assert not any(outward.values()), {m: sorted(p) for m, p in outward.items() if p}


def test_no_config_targets_an_entry_point():
    targets = [
        (str(path.relative_to(CONFIG_DIR)), line.split(":", 1)[1].strip())
        for path in CONFIG_DIR.rglob("*.yaml")
        for line in path.read_text().splitlines()
        if line.strip().startswith("_target_:")
    ]
    assert targets, "no _target_ found: the scan is broken"
    assert not [t for t in targets if t[1].startswith("scripts.")], targets


def test_the_scan_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from scripts.cli import main\n    import core.errors\n")
    assert imported_packages(module) == {"scripts", "core"}
