#!/usr/bin/env python3
"""The package's layers, each module's size and what it imports, and every import that points
up a layer. ``tests/test_layers.py`` runs the same check.

    .venv/bin/python scripts/layers.py          # the table, then the violations (exit 1 if any)

A module may import from its own layer and the ones below it, never from one above. The layers,
lowest first:

- domain: values, rules and errors that need nothing else of the package;
- stores: where state lives (Protocols, memory, PostgreSQL, Redis);
- edge: what a request and the services do with the stores (keys, quota, usage, billing, events,
  transfers) and the wiring of it all;
- http: the ASGI middleware, the admin API, the demo app, problem+json;
- entry: the command line and the package's public face.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "tenant_gateway"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 400

LAYERS: dict[str, tuple[str, ...]] = {
    "domain": (
        "breaker",
        "client_limits",
        "clock",
        "exceptions",
        "flights",
        "keys",
        "models",
        "observations",
        "plans",
        "tallies",
    ),
    "stores": (
        "context",
        "directory",
        "invoices",
        "ledger",
        "postgres",
        "propagation",
        "quota",
        "ratelimit",
        "redis",
    ),
    "edge": (
        "background",
        "billing",
        "events",
        "headers",
        "lookups",
        "metering",
        "netpolicy",
        "resolver",
        "services",
        "settings",
        "stores",
        "transfers",
        "usage",
    ),
    "http": (
        "accesslog",
        "admin",
        "bodies",
        "console",
        "demo",
        "exchange",
        "frameworks",
        "lifespan",
        "metrics",
        "middleware",
        "problems",
        "tracing",
    ),
    "entry": ("__init__", "cli", "option", "options", "progress", "reference", "serve"),
}
"""Layer → modules (a package name stands for every module in it), lowest layer first."""

OVERSIZE_REASONS: dict[str, str] = {
    "directory": "the directory's contract, every method documented, beside the memory store"
    " that is its reference implementation: read together, apart they would repeat each other",
    "options": "the table of every setting, a row each (its keyword argument, flag, variable,"
    " default and meaning): split, a setting would be looked for in two places",
    "redis.counters": "one state machine: increments owed, batches sequence-numbered so a"
    " retry never applies one twice, hashes set aside and restored",
}
"""Modules allowed over ``MAX_LINES``, with the reason."""


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    """Dotted, without the package: ``postgres.directory``; the package itself is ``__init__``."""
    lines: int
    imports: frozenset[str]
    """The package's modules it imports (including under ``TYPE_CHECKING``)."""


def _name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imported(tree: ast.AST, known: set[str]) -> set[str]:
    found: set[str] = set()
    prefix = PACKAGE + "."
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            base = node.module
            # ``from tenant_gateway.admin import auth`` imports a module, not a name.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}"[len(prefix) :] in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name == PACKAGE:
                found.add("__init__")
            elif name.startswith(prefix):
                found.add(name[len(prefix) :])
    return found


def scan(root: Path = ROOT) -> dict[str, Module]:
    """Every module under ``root`` with its size and its imports of the package."""
    paths = {_name(path, root): path for path in sorted(root.rglob("*.py"))}
    known = set(paths)
    modules = {}
    for name, path in paths.items():
        text = path.read_text()
        imports = _imported(ast.parse(text), known) - {name}
        modules[name] = Module(name, len(text.splitlines()), frozenset(imports))
    return modules


def layer_of(module: str, layers: Mapping[str, Iterable[str]] = LAYERS) -> int | None:
    """The index of the module's layer (a package's modules share the package's), or None."""
    top = module.split(".")[0]
    for index, members in enumerate(layers.values()):
        if module in members or top in members:
            return index
    return None


def violations(
    modules: Mapping[str, Module], layers: Mapping[str, Iterable[str]] = LAYERS
) -> list[str]:
    """Each module with no layer, and each import that points to a higher layer."""
    found = []
    for module in modules.values():
        own = layer_of(module.name, layers)
        if own is None:
            found.append(f"{module.name}: in no layer (add it to LAYERS)")
            continue
        for target in sorted(module.imports):
            their = layer_of(target, layers)
            if their is not None and their > own:
                names = list(layers)
                found.append(
                    f"{module.name} ({names[own]}) imports {target} ({names[their]}), a layer above"
                )
    return found


def oversize(modules: Mapping[str, Module]) -> list[str]:
    return [
        f"{m.name}: {m.lines} lines (over {MAX_LINES})"
        for m in modules.values()
        if m.lines > MAX_LINES and m.name not in OVERSIZE_REASONS
    ]


def main() -> int:
    modules = scan()
    names = list(LAYERS)
    by_layer: dict[int, list[Module]] = {}
    for module in modules.values():
        index = layer_of(module.name)
        by_layer.setdefault(-1 if index is None else index, []).append(module)
    for index in sorted(by_layer):
        print(f"\n{names[index] if index >= 0 else '(no layer)'}")
        for module in sorted(by_layer[index], key=lambda m: m.name):
            imports = ", ".join(sorted(module.imports)) or "-"
            print(f"  {module.name:<26} {module.lines:>4}  {imports}")
    problems = violations(modules)
    for name, reason in OVERSIZE_REASONS.items():
        print(f"\nover {MAX_LINES} lines: {name} ({modules[name].lines}): {reason}")
    for line in oversize(modules):
        print(f"\nover {MAX_LINES} lines, no reason given: {line}")
    for line in problems:
        print(f"\nLAYER VIOLATION: {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
