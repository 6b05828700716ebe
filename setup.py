"""Setuptools entry point: everything is declared in pyproject.toml, except this opt-in.

With ``TENANT_GATEWAY_COMPILE=1`` in the environment, the request hot path is also compiled
with mypyc into C extension modules that sit beside the (identical) Python sources and are
imported in their place: about 27 % fewer of the CPU instructions the gateway adds to a
request (README, Performance). It needs mypy and a C compiler where the package is built::

    TENANT_GATEWAY_COMPILE=1 pip install --no-build-isolation '.[dev]'

Without the variable the package is pure Python, as every editable install is.
"""

from __future__ import annotations

import os

from setuptools import setup  # type: ignore[import-untyped,unused-ignore]

HOT_PATH = (
    "middleware",
    "exchange",
    "metering",
    "ratelimit",
    "usage",
    "resolver",
    "headers",
    "keys",
)
"""The modules every request runs through, compiled when asked to."""


def compiled_modules() -> list[object]:
    if os.environ.get("TENANT_GATEWAY_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # an isolated build environment holds setuptools only
        raise SystemExit(
            "TENANT_GATEWAY_COMPILE=1 needs mypy where the package is built:"
            " pip install mypy, then pip install --no-build-isolation ."
        ) from exc
    return list(mypycify([f"tenant_gateway/{name}.py" for name in HOT_PATH], opt_level="3"))


if __name__ == "__main__":  # as setuptools runs it; tests import HOT_PATH without building
    setup(ext_modules=compiled_modules())
