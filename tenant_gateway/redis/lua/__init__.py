"""The Redis scripts of the counter store, as files: ``load(name)`` is ``tally.lua`` (the rule
every script shares: what a tally may hold, ``tallies.py``) followed by ``<name>.lua``."""

from __future__ import annotations

from importlib import resources

__all__ = ["load"]


def load(name: str) -> str:
    folder = resources.files(__name__)
    prelude = (folder / "tally.lua").read_text(encoding="utf-8")
    return prelude + (folder / f"{name}.lua").read_text(encoding="utf-8")
