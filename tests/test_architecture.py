"""The layout rules of docs/architecture.md, checked on the source: which subpackage
of control/ may import which, and how big a module and a function may grow (in control/,
the agent's agent/ and the shared/ both programs import)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "control"
# The size rules hold every program's code; the layers below are control's own.
SIZED = (CONTROL, ROOT / "agent", ROOT / "shared")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Layers, lowest first. A module may import its own layer and the ones below it,
# never one above. The foundation is control's top-level helper modules.
LAYERS: tuple[tuple[str, ...], ...] = (
    # backups: pure decisions the settings use too (BACKUP_RETENTION), like plans.
    ("errors", "clock", "settings", "keyring", "logs", "health", "plans", "backups"),
    ("db",),
    # leadership: the singletons' lease, below everything the app hands it to run.
    ("users", "workers", "billing", "dns", "backup_jobs", "leadership"),
    # edge: the firewall uses the Hetzner client (capacity) and Cloudflare's (dns).
    ("capacity", "volumes", "edge"),
    ("metrics", "fleet"),
    # appkeys names the app's state for the routes, so it sits with them.
    ("api", "appkeys", "portal"),
    ("app", "singleton_jobs"),
    ("__main__", "cli"),
)
# Within the domain layer, who may use whom (the rest of that layer is off limits).
DOMAIN_USES: dict[str, set[str]] = {
    "users": set(),
    "workers": {"users", "backup_jobs"},
    "billing": {"users"},
    "dns": set(),
    "backup_jobs": set(),
    "leadership": set(),
}


def _unit(module: str) -> str:
    """`control.db.store` -> `db`; `control.fleet` -> `fleet`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise AssertionError(f"control.{unit} is in no layer of tests/test_architecture.py")


def _modules(*packages: Path) -> list[Path]:
    found = (p for package in packages for p in package.rglob("*.py"))
    return sorted(p for p in found if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            if module == "control":
                found.update(f"control.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("control.")}


@pytest.mark.parametrize("path", _modules(CONTROL), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    name = _name(path)
    unit = _unit(name)
    if not unit:
        return
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for imported in sorted(_imports(tree, package)):
        other = _unit(imported)
        if other == unit:
            continue
        assert _layer(other) <= _layer(unit), f"{name} imports {imported}, a higher layer"
        if unit in DOMAIN_USES and other in DOMAIN_USES:
            assert other in DOMAIN_USES[unit], f"{name} may not import {imported}"


@pytest.mark.parametrize("path", _modules(*SIZED), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_fit_on_a_screen(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, (
        f"{path.name} is over {MAX_MODULE_LINES} lines"
    )
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} is {length} lines"


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in CONTROL.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns" in doc and "May import" in doc, f"{init} lacks its ownership docstring"
