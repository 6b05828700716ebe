"""The documentation: the README and ``docs/`` (the MkDocs site; ``mkdocs build --strict`` in
``scripts/test`` checks its links too) stay inside the repository, speak of the gateway rather
than of how they were written, and the admin API reference is what the code produces now."""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")]
)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}

NARRATION = [
    r"\b(?:this|the previous|an earlier|the last|the next) session\b",
    r"\bsessions? ago\b",
    r"\bthe brief\b",
    r"\bissue #?\d+",
    r"\bSPEC\b",
    r"\bshared/",
    r"\b(?:was|were|has been|have been) added\b",
    r"\bpreviously\b",
    r"\buntil now\b",
    r"\bsince reverted\b",
    r"\bno longer has\b",
    r"\bas before\b",
    r"\bearlier versions?\b",
    r"\bwent from\b",
    r"\bwe (?:measured|added|changed|found|tried|fixed)\b",
    r"\b(?:is|are) now\b",
    r"\bmeasured (?:on|in) \d",
    r"\(\d{4}-\d{2}-\d{2}[,)]",
    r"\ba day later\b",
    r"\btried and not kept\b",
]
"""Phrases that tell the story of the work instead of what the gateway does. Dates are allowed
where they are data (a log line's timestamp), not where they say when a figure was taken."""

CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"https?://([^/\s)\]>\"'`]+)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(path: Path) -> str:
    """The text without code: fenced blocks and inline code are examples, not links."""
    return CODE.sub("", path.read_text(encoding="utf-8"))


def _anchors(path: Path) -> set[str]:
    """Anchors that work both on the site (Python-Markdown's toc) and in a repository browser
    (GitHub's rule): a heading whose two slugs differ is linked to by neither."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    found = set()
    for heading in HEADING.findall(text):
        plain = heading.replace("`", "")
        ascii_text = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()
        site = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_text).strip().lower())
        browser = re.sub(r"[^\w\- ]", "", plain.lower()).replace(" ", "-")
        if site == browser:
            found.add(site)
    return found


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    path = ROOT / "scripts" / "docs_admin_api.py"
    spec = importlib.util.spec_from_file_location("docs_admin_api", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_admin_api"] = module
    spec.loader.exec_module(module)
    return module


def test_the_admin_api_reference_is_what_the_code_produces(generator: ModuleType) -> None:
    committed = (ROOT / "docs" / "admin-api.md").read_text(encoding="utf-8")
    assert committed == generator.render(), (
        "docs/admin-api.md is stale: run .venv/bin/python scripts/docs_pages.py"
    )


def test_the_reference_names_every_operation_and_error_code(generator: ModuleType) -> None:
    """Not merely a stable rendering: each operation of the served document, and codes the
    gate and the admin API answer with, are on the page."""
    from tenant_gateway.admin.openapi import openapi_document

    page = (ROOT / "docs" / "admin-api.md").read_text(encoding="utf-8")
    for path, item in openapi_document("/api/v1/tenants")["paths"].items():
        for method in set(item) & {"get", "put", "post", "patch", "delete"}:
            assert f"### {method.upper()} {path}\n" in page
            assert f"`{item[method]['operationId']}`" in page
    codes = {code for _, code in generator.problem_codes()}
    assert {"quota_exceeded", "validation_error", "lock_timeout", "not_ready"} <= codes
    assert (400, "validation_error") in generator.problem_codes()  # a status passed by name


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_no_link_leaves_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    outside = [host for host in URL.findall(text) if host.split(":")[0] not in LOCAL_HOSTS]
    assert outside == [], f"{_name(path)} links outside the repository: {outside}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_relative_links_reach_a_file_and_its_heading(path: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(path)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in _anchors(resolved)):
            broken.append(target)
    assert broken == [], f"{_name(path)} has broken links: {broken}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_no_document_tells_how_it_was_written(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = [m.group(0) for p in NARRATION for m in re.finditer(p, text, re.IGNORECASE)]
    assert found == [], f"{_name(path)} narrates its own making: {found}"


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, "the README links into docs/; details belong on a page there"


def test_code_points_to_the_documentation_not_to_documents_outside_it() -> None:
    """Help texts and docstrings name the docs page, never a specification outside the repo."""
    sources = [
        p
        for folder in ("tenant_gateway", "tests", "benchmarks", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if p != Path(__file__).resolve()
    ]
    outside = [
        _name(p)
        for p in sources
        if re.search(r"\bSPEC §|shared/SPEC|README\W+(?:Plans|Performance|Scaling)", p.read_text())
    ]
    assert outside == []
