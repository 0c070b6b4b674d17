"""The layers import one way (docs/architecture.md): composition, services, then shared's own layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# shared's layers, bottom first: a module may import its own layer and those below it, never one above.
LAYERS = ("shared.infra", "shared.log", "shared.domain", "shared.readmodel", "shared.service")


def _modules(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` → the modules it imports (``from a.b import c`` counts as ``a.b.c``)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[name] = imported
    return found


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")), None)


def test_shared_layers_import_downwards_only() -> None:
    wrong = []
    for module, imported in _modules("shared").items():
        own = _layer(module)
        for target in imported:
            if target.startswith(("services", "orquesta")):
                wrong.append(f"{module} imports {target} (shared never imports a service)")
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs > own:
                wrong.append(f"{module} ({LAYERS[own]}) imports {target} ({LAYERS[theirs]}, a layer above)")
    assert not wrong, "\n".join(wrong)


def test_every_module_of_shared_sits_in_a_layer() -> None:
    """No flat bag of modules at shared's top: each concept is in its layer's package."""
    loose = [m for m in _modules("shared") if m != "shared" and _layer(m) is None]
    assert not loose, loose


def test_a_service_uses_no_other_service_and_not_the_composition_root() -> None:
    wrong = []
    for module, imported in _modules("services").items():
        service = ".".join(module.split(".")[:2])
        for target in imported:
            if target.startswith("orquesta"):
                wrong.append(f"{module} imports the composition root ({target})")
            elif target.startswith("services.") and not target.startswith(service + ".") and target != service:
                wrong.append(f"{module} reaches into another service ({target})")
    assert not wrong, "\n".join(wrong)
