#!/usr/bin/env python3
"""Write ``docs/configuration.md``, the configuration reference, from the code
(``tenant_gateway.reference``). ``tests/test_configuration_reference.py`` fails while the
committed file differs.

    .venv/bin/python scripts/docs_configuration.py           # write it
    .venv/bin/python scripts/docs_configuration.py --check   # exit 1 if it is not up to date
"""

from __future__ import annotations

import sys
from pathlib import Path

from tenant_gateway.reference import render

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is not up to date: run scripts/docs_configuration.py")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
