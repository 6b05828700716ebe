"""Row-level security under attack (docs/isolation.md): catalogue guard, cross-tenant probes as the
runtime role, pool hygiene, random interleavings, and the FastAPI dependency example."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import asyncpg
import pytest
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tenant_gateway import Tenant, TenantGateway, get_current_tenant, tenant_transaction
from tenant_gateway.demo import create_projects_table
from tenant_gateway.postgres.database import OWNER_ROLE, RUNTIME_ROLE, Database
from tenant_gateway.postgres.isolation import is_isolated, isolate_table

from .conftest import PG_ADMIN_URL, _url_with_database, unavailable

TASKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    project_id text NOT NULL,
    title      text NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);
"""


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module", params=["superuser", "table-owner login"])
def isolated_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database migrated by the gateway, with the demo ``projects`` and a ``tasks`` child
    table under isolation, logged into as a superuser or as a non-superuser owner."""
    suffix = uuid.uuid4().hex[:10]
    name = f"tg_iso_{suffix}"
    login = f"tg_iso_login_{suffix}"
    try:
        if request.param == "superuser":
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            url = _url_with_database(PG_ADMIN_URL, name)
        else:
            asyncio.run(_admin(f'CREATE ROLE "{login}" LOGIN CREATEROLE'))
            asyncio.run(_admin(f'CREATE DATABASE "{name}" OWNER "{login}"'))
            url = _url_with_database(PG_ADMIN_URL, name).replace("postgres@", f"{login}@")
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)

    async def prepare() -> None:
        database = Database(url)
        await database.connect()
        await database.close()
        await create_projects_table(url)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(TASKS_SCHEMA)
            await isolate_table(conn, "tasks")
        finally:
            await conn.close()

    try:
        asyncio.run(prepare())
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if request.param != "superuser":
            asyncio.run(_admin(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"'))


@pytest.fixture
async def database(isolated_db: str) -> AsyncIterator[Database]:
    db = Database(isolated_db, max_size=4)
    await db.connect()
    yield db
    await db.close()


async def seed(database: Database, tenant_id: str, *names: str) -> list[str]:
    ids = []
    async with database.tenant_transaction(tenant_id) as conn:
        for name in names:
            project_id = f"prj_{uuid.uuid4().hex[:8]}"
            await conn.execute(
                "INSERT INTO projects (tenant_id, id, name) VALUES ($1, $2, $3)",
                tenant_id,
                project_id,
                name,
            )
            ids.append(project_id)
    return ids


def new_tenant() -> str:
    return f"tenant_{uuid.uuid4().hex[:12]}"


# -- the catalogue guard -------------------------------------------------------------------


async def test_catalogue_guard(database: Database) -> None:
    async with database.connection() as conn:
        tables = await conn.fetch(
            """
            SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
              AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                          AND a.attname = 'tenant_id' AND NOT a.attisdropped)
            """
        )
        names = {t["relname"] for t in tables}
        assert {"tg_users", "tg_api_keys", "tg_plan_changes", "projects", "tasks"} <= names
        for table in tables:
            assert table["relrowsecurity"] and table["relforcerowsecurity"], table["relname"]
            policies = await conn.fetch(
                "SELECT polname, polqual IS NOT NULL AS using_, polwithcheck IS NOT NULL AS check_,"
                " polroles = '{0}' AS for_everyone,"
                " pg_get_expr(polqual, polrelid) AS qual FROM pg_policy WHERE polrelid = $1",
                table["oid"],
            )
            scoped = [p for p in policies if p["for_everyone"]]
            assert scoped, f"{table['relname']} has no policy for every role"
            for policy in scoped:
                assert policy["using_"] and policy["check_"], (table["relname"], policy["polname"])
                assert "current_setting('tenant_gateway.tenant_id'" in policy["qual"]
            # no unique index on a tenant table may leave tenant_id out
            unique_without_tenant = await conn.fetch(
                """
                SELECT i.indexrelid::regclass::text AS name FROM pg_index i
                WHERE i.indrelid = $1 AND i.indisunique
                  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid
                                  AND a.attname = 'tenant_id' AND a.attnum = ANY (i.indkey))
                """,
                table["oid"],
            )
            assert not unique_without_tenant, (table["relname"], unique_without_tenant)
        # foreign keys between tenant tables carry tenant_id
        foreign_keys = await conn.fetch(
            """
            SELECT conname, conrelid::regclass::text AS child FROM pg_constraint k
            WHERE contype = 'f' AND connamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = k.conrelid
                              AND a.attname = 'tenant_id' AND a.attnum = ANY (k.conkey))
            """
        )
        assert not foreign_keys
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcanlogin,"
            " pg_has_role($1, $2, 'MEMBER') AS owner_member FROM pg_roles WHERE rolname = $1",
            RUNTIME_ROLE,
            OWNER_ROLE,
        )
        assert role is not None
        assert not role["rolsuper"] and not role["rolbypassrls"] and not role["owner_member"]
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles"
            " WHERE rolname = $1)",
            RUNTIME_ROLE,
        )
        assert owned == 0
        truncatable = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            " AND has_table_privilege($1, c.oid, 'TRUNCATE')",
            RUNTIME_ROLE,
        )
        assert not truncatable
        unsafe_views = await conn.fetch(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'v'"
            " AND NOT coalesce(c.reloptions::text[] && ARRAY['security_invoker=true',"
            " 'security_invoker=on', 'security_invoker=1'], false)"
        )
        assert not unsafe_views


# -- cross-tenant probes as the runtime role -----------------------------------------------


async def test_cross_tenant_probes_affect_nothing(database: Database) -> None:
    a, b = new_tenant(), new_tenant()
    (b_project,) = await seed(database, b, "b-secret")
    await seed(database, a, "a-own")
    async with database.tenant_transaction(a) as conn:
        assert await conn.fetchval("SELECT current_user") == RUNTIME_ROLE
        assert [r["name"] for r in await conn.fetch("SELECT name FROM projects")] == ["a-own"]
        assert await conn.fetchrow("SELECT * FROM projects WHERE id = $1", b_project) is None
        assert (
            await conn.execute("UPDATE projects SET name = 'pwned' WHERE id = $1", b_project)
            == "UPDATE 0"
        )
        assert await conn.execute("DELETE FROM projects WHERE id = $1", b_project) == "DELETE 0"
    async with database.tenant_transaction(b) as conn:
        rows = await conn.fetch("SELECT name FROM projects")
    assert [r["name"] for r in rows] == ["b-secret"]


async def test_writes_into_another_tenant_fail(database: Database) -> None:
    a, b = new_tenant(), new_tenant()
    (b_project,) = await seed(database, b, "b-secret")
    (a_project,) = await seed(database, a, "a-own")
    async with database.tenant_transaction(a) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO projects (tenant_id, id, name) VALUES ($1, 'x', 'planted')", b
                )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("UPDATE projects SET tenant_id = $1 WHERE id = $2", b, a_project)
        # a child row cannot point at B's project (the foreign key carries tenant_id)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO tasks (tenant_id, id, project_id, title)"
                    " VALUES ($1, 't', $2, 'x')",
                    a,
                    b_project,
                )
        # the same primary key as B's project is free in A: uniqueness never reveals B's rows
        await conn.execute(
            "INSERT INTO projects (tenant_id, id, name) VALUES ($1, $2, 'same id')", a, b_project
        )
        for table in ("tg_tenants", "tg_users", "tg_api_keys", "tg_plan_changes"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.fetch(f"SELECT * FROM {table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("TRUNCATE projects")
    async with database.tenant_transaction(b) as conn:
        assert [r["name"] for r in await conn.fetch("SELECT name FROM projects")] == ["b-secret"]


@pytest.mark.parametrize("context", [None, "", "garbage", "' OR '1'='1"])
async def test_no_or_bad_context_sees_and_writes_nothing(
    database: Database, context: str | None
) -> None:
    await seed(database, new_tenant(), "somebody's")
    async with database.connection() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {RUNTIME_ROLE}")
        if context is not None:
            await conn.execute("SELECT set_config('tenant_gateway.tenant_id', $1, true)", context)
        assert await conn.fetchval("SELECT count(*) FROM projects") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO projects (tenant_id, id, name) VALUES ('t', 'x', 'y')"
                )


async def test_tenant_transaction_needs_a_request() -> None:
    from tenant_gateway import NoTenantContext

    with pytest.raises(NoTenantContext):
        async with tenant_transaction():
            pass


# -- pool hygiene -----------------------------------------------------------------------------


async def _context_at_acquire(database: Database) -> tuple[Any, Any]:
    async with database.connection() as conn:
        return (
            await conn.fetchval("SELECT current_setting('tenant_gateway.tenant_id', true)"),
            await conn.fetchval("SELECT current_user = session_user"),
        )


async def test_pool_is_clean_after_an_exception(isolated_db: str) -> None:
    database = Database(isolated_db, min_size=1, max_size=1)
    await database.connect()
    try:
        a, b = new_tenant(), new_tenant()
        await seed(database, a, "a1")
        await seed(database, b, "b1")
        with pytest.raises(RuntimeError):
            async with database.tenant_transaction(a) as conn:
                await conn.execute(
                    "INSERT INTO projects (tenant_id, id, name) VALUES ($1, 'half', 'x')", a
                )
                raise RuntimeError("the app failed mid-transaction")
        setting, same_user = await _context_at_acquire(database)
        assert setting in (None, "") and same_user
        async with database.tenant_transaction(b) as conn:
            assert [r["name"] for r in await conn.fetch("SELECT name FROM projects")] == ["b1"]
        async with database.tenant_transaction(a) as conn:
            assert [r["name"] for r in await conn.fetch("SELECT name FROM projects")] == ["a1"]
    finally:
        await database.close()


async def test_pool_is_clean_after_a_cancellation(isolated_db: str) -> None:
    database = Database(isolated_db, min_size=1, max_size=1)
    await database.connect()
    try:
        a, b = new_tenant(), new_tenant()
        await seed(database, b, "b1")
        started = asyncio.Event()

        async def slow() -> None:
            async with database.tenant_transaction(a) as conn:
                started.set()
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(slow())
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        setting, same_user = await asyncio.wait_for(_context_at_acquire(database), 10)
        assert setting in (None, "") and same_user
        async with database.tenant_transaction(b) as conn:
            assert [r["name"] for r in await conn.fetch("SELECT name FROM projects")] == ["b1"]
    finally:
        await database.close()


# -- random interleavings -----------------------------------------------------------------------


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schedule=st.lists(
        st.tuples(
            st.integers(0, 3), st.sampled_from(["insert", "read", "fail"]), st.integers(0, 3)
        ),
        min_size=4,
        max_size=24,
    )
)
def test_random_interleavings_never_cross_tenants(
    isolated_db: str, schedule: list[tuple[int, str, int]]
) -> None:
    tenants = [new_tenant() for _ in range(4)]

    async def one(tenant_index: int, operation: str, pause: int, database: Database) -> None:
        tenant = tenants[tenant_index]
        try:
            async with database.tenant_transaction(tenant) as conn:
                await asyncio.sleep(pause / 1000)
                if operation == "insert":
                    await conn.execute(
                        "INSERT INTO projects (tenant_id, id, name) VALUES ($1, $2, $1)",
                        tenant,
                        uuid.uuid4().hex,
                    )
                rows = await conn.fetch("SELECT tenant_id, name FROM projects")
                assert all(r["tenant_id"] == tenant and r["name"] == tenant for r in rows)
                if operation == "fail":
                    raise LookupError("rolled back on purpose")
        except LookupError:
            pass

    async def run() -> None:
        database = Database(isolated_db, min_size=1, max_size=3)
        await database.connect()
        try:
            await asyncio.gather(*(one(t, op, p, database) for t, op, p in schedule))
        finally:
            await database.close()

    asyncio.run(run())


# -- the seed's FastAPI example -------------------------------------------------------------


def test_fastapi_depends_example_with_and_without_where(isolated_db: str) -> None:
    api = FastAPI()

    @api.get("/projects")
    async def projects(tenant: Annotated[Tenant, Depends(get_current_tenant)]) -> dict[str, Any]:
        async with tenant_transaction() as conn:
            filtered = await conn.fetch("SELECT * FROM projects WHERE tenant_id = $1", tenant.id)
            unfiltered = await conn.fetch("SELECT * FROM projects")
        return {
            "filtered": sorted(r["name"] for r in filtered),
            "unfiltered": sorted(r["name"] for r in unfiltered),
        }

    with TestClient(TenantGateway(api, database_url=isolated_db)) as client:
        keys = []
        for name in ("one", "two"):
            tenant = client.post(
                "/api/v1/tenants/register", json={"name": name, "admin_email": f"a@{name}.io"}
            ).json()
            asyncio.run(_seed_url(isolated_db, tenant["id"], f"{name}-project"))
            keys.append({"X-API-Key": tenant["api_key"]})
        for name, headers in zip(("one", "two"), keys, strict=True):
            body = client.get("/projects", headers=headers).json()
            assert body == {"filtered": [f"{name}-project"], "unfiltered": [f"{name}-project"]}


async def _seed_url(url: str, tenant_id: str, name: str) -> None:
    database = Database(url)
    await database.connect()
    try:
        await seed(database, tenant_id, name)
    finally:
        await database.close()


# -- sequences ------------------------------------------------------------------------------

NOTES_SCHEMA = """
CREATE TABLE notes (
    tenant_id text NOT NULL, id serial, body text NOT NULL, PRIMARY KEY (tenant_id, id)
);
CREATE TABLE marks (
    tenant_id text NOT NULL, id integer GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, id)
);
"""
SEQUENCE_USAGE = "SELECT has_sequence_privilege($1, $2, 'USAGE')"


def test_serial_columns_work_through_tenant_transaction(isolated_db: str) -> None:
    """A ``serial`` column's sequence is granted with its table (it was ``permission denied
    for sequence notes_id_seq``, a 500); an identity column's needs nothing and gets nothing.
    A table isolated before that grant existed reads as not isolated, and gets it."""
    api = FastAPI()

    @api.post("/notes")
    async def add_note(tenant: Annotated[Tenant, Depends(get_current_tenant)]) -> dict[str, int]:
        async with tenant_transaction() as conn:
            note = await conn.fetchval(
                "INSERT INTO notes (tenant_id, body) VALUES ($1, 'hi') RETURNING id", tenant.id
            )
            mark = await conn.fetchval(
                "INSERT INTO marks (tenant_id) VALUES ($1) RETURNING id", tenant.id
            )
            return {"note": note, "mark": mark, "seen": len(await conn.fetch("TABLE notes"))}

    async def create_tables() -> tuple[bool, bool, bool]:
        conn = await asyncpg.connect(isolated_db)
        try:
            await conn.execute(NOTES_SCHEMA)
            await isolate_table(conn, "notes")
            await isolate_table(conn, "marks")
            await conn.execute(f"REVOKE USAGE ON SEQUENCE notes_id_seq FROM {RUNTIME_ROLE}")
            revoked = await is_isolated(conn, "notes")
            await isolate_table(conn, "notes")
            return (
                revoked,
                await conn.fetchval(SEQUENCE_USAGE, RUNTIME_ROLE, "notes_id_seq"),
                await conn.fetchval(SEQUENCE_USAGE, RUNTIME_ROLE, "marks_id_seq"),
            )
        finally:
            await conn.close()

    async def drop_tables() -> None:
        conn = await asyncpg.connect(isolated_db)
        try:
            await conn.execute("DROP TABLE notes, marks")
        finally:
            await conn.close()

    assert asyncio.run(create_tables()) == (False, True, False)
    try:
        with TestClient(TenantGateway(api, database_url=isolated_db)) as client:
            seen = []
            for name in ("one", "two"):
                tenant = client.post(
                    "/api/v1/tenants/register", json={"name": name, "admin_email": f"a@{name}.io"}
                ).json()
                for _ in range(2):
                    answer = client.post("/notes", headers={"X-API-Key": tenant["api_key"]})
                    assert answer.status_code == 200, answer.text
                    seen.append(answer.json())
    finally:
        asyncio.run(drop_tables())
    assert [s["note"] for s in seen] == [1, 2, 3, 4]  # one sequence, shared by the tenants
    assert [s["mark"] for s in seen] == [1, 2, 3, 4]
    assert [s["seen"] for s in seen] == [1, 2, 1, 2]  # each tenant sees its own notes
