"""Layers only point down (``scripts/layers.py``): domain ← stores ← edge ← http ← entry."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "layers.py"


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["layers"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_from_a_layer_above_its_own(layers: ModuleType) -> None:
    assert layers.violations(layers.scan()) == []


def test_no_module_is_over_the_size_limit_without_a_reason(layers: ModuleType) -> None:
    assert layers.oversize(layers.scan()) == []


def test_every_layer_names_modules_that_exist(layers: ModuleType) -> None:
    """A module renamed or removed must leave the map too, or the map stops meaning much."""
    modules = layers.scan()
    tops = {name.split(".")[0] for name in modules}
    stale = [m for members in layers.LAYERS.values() for m in members if m not in tops]
    assert stale == [], stale


def test_an_import_pointing_up_is_reported(layers: ModuleType, tmp_path: Path) -> None:
    """The check itself can fail: a store that raises the HTTP layer's problems, and a module
    in no layer, are both reported."""
    package = tmp_path / "tenant_gateway"
    (package / "postgres").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "problems.py").write_text("from tenant_gateway.exceptions import Problem\n")
    (package / "exceptions.py").write_text("class Problem(Exception): ...\n")
    (package / "postgres" / "__init__.py").write_text("")
    (package / "postgres" / "directory.py").write_text(
        "from tenant_gateway import problems\nfrom tenant_gateway.models import Tenant\n"
    )
    (package / "models.py").write_text("Tenant = object\n")
    (package / "scratch.py").write_text("import tenant_gateway.postgres.directory\n")
    found = layers.violations(layers.scan(package))
    assert found == [
        "postgres.directory (stores) imports problems (http), a layer above",
        "scratch: in no layer (add it to LAYERS)",
    ]
