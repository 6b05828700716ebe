"""The demo app that ``tenant-gateway serve`` wraps: tenant-scoped projects (docs/index.md).

With a database it keeps projects in a ``projects`` table under row-level security and reads
it only through ``tenant_transaction()``; without one, in process memory keyed by tenant.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Protocol

import asyncpg
from pydantic import AfterValidator, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenant_gateway import problems
from tenant_gateway.bodies import StrictBody, clean_text, parse_body
from tenant_gateway.clock import format_timestamp
from tenant_gateway.context import get_current_tenant
from tenant_gateway.exceptions import Problem
from tenant_gateway.keys import is_id, new_id
from tenant_gateway.postgres.database import (
    POOLER_ERRORS,
    store_unavailable,
    tenant_transaction,
)
from tenant_gateway.postgres.isolation import is_isolated, isolate_table
from tenant_gateway.postgres.schema import DDL_ATTEMPTS, DDL_LOCK_TIMEOUT, run_ddl
from tenant_gateway.postgres.url import parse_postgres_url

__all__ = ["PROJECTS_SCHEMA", "build_demo_app"]

PROJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
"""

Project = dict[str, str]


class ProjectRequest(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(clean_text)]


class Projects(Protocol):
    async def create(self, name: str) -> Project: ...

    async def list_json(self) -> bytes:
        """The tenant's projects as a JSON array, oldest first."""
        ...

    async def get(self, project_id: str) -> Project | None: ...

    async def delete(self, project_id: str) -> bool: ...


def _new_project(name: str) -> Project:
    now = datetime.now(UTC).replace(microsecond=0)
    return {"id": new_id("prj"), "name": name, "created_at": format_timestamp(now)}


class MemoryProjects:
    def __init__(self) -> None:
        self._by_tenant: dict[str, dict[str, Project]] = {}

    def _mine(self) -> dict[str, Project]:
        return self._by_tenant.setdefault(get_current_tenant().id, {})

    async def create(self, name: str) -> Project:
        project = _new_project(name)
        self._mine()[project["id"]] = project
        return project

    async def list_json(self) -> bytes:
        return json.dumps(list(self._mine().values()), separators=(",", ":")).encode()

    async def get(self, project_id: str) -> Project | None:
        return self._mine().get(project_id)

    async def delete(self, project_id: str) -> bool:
        return self._mine().pop(project_id, None) is not None


def _row(record: asyncpg.Record) -> Project:
    return {
        "id": record["id"],
        "name": record["name"],
        "created_at": format_timestamp(record["created_at"]),
    }


_LIST_JSON = """
SELECT coalesce(json_agg(json_build_object(
    'id', id, 'name', name,
    'created_at', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
  ) ORDER BY created_at, id), '[]')::text
FROM projects
"""


class PostgresProjects:
    """No ``WHERE tenant_id``: row-level security does the filtering."""

    async def create(self, name: str) -> Project:
        async with tenant_transaction() as conn:
            record = await conn.fetchrow(
                "INSERT INTO projects (tenant_id, id, name) VALUES ($1, $2, $3)"
                " RETURNING id, name, created_at",
                get_current_tenant().id,
                new_id("prj"),
                name,
            )
        if record is None:  # INSERT … RETURNING always answers a row
            raise RuntimeError("INSERT returned no row")
        return _row(record)

    async def list_json(self) -> bytes:
        # Rendered by PostgreSQL: a tenant with many projects costs the database, not the
        # event loop every other tenant's requests share.
        async with tenant_transaction() as conn:
            listing: str = await conn.fetchval(_LIST_JSON)
        return listing.encode()

    async def get(self, project_id: str) -> Project | None:
        async with tenant_transaction() as conn:
            record = await conn.fetchrow(
                "SELECT id, name, created_at FROM projects WHERE id = $1", project_id
            )
        return None if record is None else _row(record)

    async def delete(self, project_id: str) -> bool:
        async with tenant_transaction() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM projects WHERE id = $1 RETURNING id", project_id
            )
        return deleted is not None


async def create_projects_table(
    database_url: str,
    *,
    lock_timeout: float = DDL_LOCK_TIMEOUT,
    attempts: int = DDL_ATTEMPTS,
) -> None:
    """The demo's own migration: create ``projects`` and put it under tenant isolation.

    Every worker runs it at start-up, often while exports read the table: once the table is in
    place it is only read from the catalogue (no DDL, so no lock to wait for), and otherwise
    its DDL gives up on a held lock after ``lock_timeout`` s, ``attempts`` times, then raises
    ``StoreBusy`` (see ``run_ddl``)."""
    url = parse_postgres_url(database_url)
    conn = await asyncpg.connect(url.dsn, statement_cache_size=url.statement_cache_size)
    try:
        if await is_isolated(conn, "projects"):
            return

        async def apply() -> None:
            # workers starting together take turns
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tenant_gateway.demo'))")
            await conn.execute(PROJECTS_SCHEMA)
            await isolate_table(conn, "projects")

        await run_ddl(
            conn, apply, "the demo's table projects", lock_timeout=lock_timeout, attempts=attempts
        )
    except POOLER_ERRORS as exc:  # behind PgBouncer without ?statement_cache_size=0
        raise store_unavailable(database_url, exc) from exc
    finally:
        await conn.close()


def build_demo_app(database_url: str | None = None) -> Starlette:
    projects: Projects = PostgresProjects() if database_url else MemoryProjects()

    async def create(request: Request) -> Response:
        body = await parse_body(request, ProjectRequest, 64 * 1024)
        return JSONResponse(await projects.create(body.name), status_code=201)

    async def list_all(request: Request) -> Response:
        return Response(await projects.list_json(), media_type="application/json")

    def project_id(request: Request) -> str:
        """The path's id, or 404 without a query when it cannot be one (NUL, too long…)."""
        value: str = request.path_params["project_id"]
        if not is_id(value):
            raise problems.not_found("No such project.")
        return value

    async def get_one(request: Request) -> Response:
        project = await projects.get(project_id(request))
        if project is None:
            raise problems.not_found("No such project.")
        return JSONResponse(project)

    async def delete(request: Request) -> Response:
        if not await projects.delete(project_id(request)):
            raise problems.not_found("No such project.")
        return Response(status_code=204)

    async def problem(request: Request, exc: Exception) -> Response:
        if isinstance(exc, Problem):
            return problems.problem_response(exc)
        return problems.problem_response(  # never a plain-text 500 with a stack trace
            Problem(500, "internal_error", "Internal error", "An unexpected error occurred.")
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if database_url:
            await create_projects_table(database_url)
        yield

    return Starlette(
        routes=[
            Route("/api/v1/projects", create, methods=["POST"]),
            Route("/api/v1/projects", list_all, methods=["GET"]),
            Route("/api/v1/projects/{project_id}", get_one, methods=["GET"]),
            Route("/api/v1/projects/{project_id}", delete, methods=["DELETE"]),
        ],
        exception_handlers={Problem: problem, Exception: problem},
        lifespan=lifespan,
    )
