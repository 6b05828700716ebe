"""JSON request bodies: read within a size limit, parsed strictly into a pydantic model, and
every failure a problem+json 4xx (400 not JSON, 413 too large, 422 invalid) with per-field
errors. Shared by the admin API and the demo app.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from tenant_gateway import problems
from tenant_gateway.headers import declared_over

__all__ = [
    "StrictBody",
    "clean_text",
    "field_errors",
    "limited_stream",
    "parse_body",
    "read_body",
]

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def clean_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from exc
    if _CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Body = TypeVar("Body", bound=StrictBody)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "(body)",
            "message": error["msg"],
        }
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing (413) at once if its declared length is over
    ``limit``, else as soon as what arrived passes it."""
    if declared_over(request.headers.get("content-length"), limit):
        raise problems.payload_too_large(limit)
    return _counted(request.stream(), limit)


async def _counted(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise problems.payload_too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def parse_body(
    request: Request, model: type[Body], limit: int, *, allow_empty: bool = False
) -> Body:
    """The body validated as ``model``; ``allow_empty`` treats no body as ``{}``."""
    raw = await read_body(request, limit)
    if allow_empty and not raw.strip():
        raw = b"{}"
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 too; RecursionError is absurdly deep nesting.
        raise problems.validation_error(
            "The body is not valid JSON.",
            [{"field": "(body)", "message": "expected a JSON object"}],
            status=400,
        ) from exc
    if not isinstance(document, dict):
        raise problems.validation_error(
            "The body must be a JSON object.",
            [{"field": "(body)", "message": "expected a JSON object"}],
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise problems.validation_error("The request body is invalid.", field_errors(exc)) from exc
    except RecursionError as exc:
        raise problems.validation_error(
            "The body is nested too deeply.", [{"field": "(body)", "message": "too deep"}]
        ) from exc
