#!/usr/bin/env python3
"""Write the pages of ``docs/`` that are generated from the code: ``configuration.md`` (the
configuration reference, ``tenant_gateway.reference``) and ``admin-api.md`` (the admin API
reference, ``docs_admin_api``). ``tests/test_configuration_reference.py`` and
``tests/test_docs.py`` fail while a committed page differs from what this writes.

    .venv/bin/python scripts/docs_pages.py           # write them
    .venv/bin/python scripts/docs_pages.py --check   # exit 1 if one is not up to date
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import docs_admin_api  # beside this script: its directory is on the path

from tenant_gateway import reference

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES: dict[str, Callable[[], str]] = {
    "configuration.md": reference.render,
    "admin-api.md": docs_admin_api.render,
}


def main(argv: list[str]) -> int:
    stale = 0
    for name, render in PAGES.items():
        target, text = DOCS / name, render()
        if "--check" not in argv:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
        elif not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"docs/{name} is not up to date: run scripts/docs_pages.py")
            stale += 1
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
