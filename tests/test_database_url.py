"""``database_url``: the gateway's own query parameters (statement cache, pool sizes), and every
URL or login PostgreSQL cannot be used with refused in one line (issue 19)."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import pytest

from benchmarks.launch import free_port
from tenant_gateway import Settings, TenantGateway
from tenant_gateway.cli import main
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.postgres.database import Database
from tenant_gateway.postgres.url import parse_postgres_url

from .apps import echo_app
from .helpers import as_admin

BASE = "postgresql://gw:s3cret@db.internal:5433/app"


BAD_URLS = [
    ("mysql://gw@db/app", "must be postgresql://"),
    ("postgresql://gw@db:abc/app", "port"),
    ("postgresql://gw@db:0/app", "port"),
    ("postgresql://gw@db:65536/app", "port"),
    ("postgresql://gw@a:5432,b:x/app", "port"),
    ("postgresql://gw@[::1/app", "not a URL"),
    ("postgresql://gw@[::1]:99999/app", "port"),
    (f"postgresql://gw@db:{'9' * 5000}/app", "port"),
    (f"{BASE}?statement_cache_size=-1", "statement_cache_size"),
    (f"{BASE}?statement_cache_size=", "statement_cache_size"),
    (f"{BASE}?statement_cache_size=%C2%B2", "statement_cache_size"),  # "²" is a digit to int()
    (f"{BASE}?pool_min_size=1.5", "pool_min_size"),
    (f"{BASE}?pool_max_size=0", "pool_max_size"),
    (f"{BASE}?pool_max_size=100001", "pool_max_size"),
    (f"{BASE}?pool_max_size={'9' * 5000}", "pool_max_size"),
    (f"{BASE}?pool_min_size=4&pool_max_size=3", "pool_min_size (4) is more than pool_max_size"),
    (f"{BASE}?pool_min_size=11", "pool_max_size (10, the default)"),
    (f"{BASE}?pool_max_size=2&pool_max_size=3", "pool_max_size twice"),
]


def test_the_gateways_parameters_are_taken_out_of_the_url() -> None:
    url = parse_postgres_url(
        f"{BASE}?sslmode=require&statement_cache_size=0&pool_min_size=2&pool_max_size=20"
        "&application_name=gw"
    )
    assert url.dsn == f"{BASE}?sslmode=require&application_name=gw"
    assert (url.statement_cache_size, url.pool_min_size, url.pool_max_size) == (0, 2, 20)
    plain = parse_postgres_url(BASE)
    assert plain.dsn == BASE
    assert (plain.statement_cache_size, plain.pool_min_size, plain.pool_max_size) == (100, 1, 10)
    for url_text in ("postgres://h/db", "postgresql:///db", "postgresql://[::1]:5432,h2/db"):
        assert parse_postgres_url(url_text).dsn == url_text
        assert parse_postgres_url(url_text + "?pool_max_size=2").dsn == url_text


@pytest.mark.parametrize(("url", "named"), BAD_URLS)
def test_a_bad_url_is_a_configuration_error_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_postgres_url(url)
    message = str(raised.value)
    assert named in message and "\n" not in message and "s3cret" not in message
    assert len(message) < 300
    with pytest.raises(ConfigurationError):  # embedded: when the settings are made
        Settings(database_url=url)
    with pytest.raises(ConfigurationError):
        TenantGateway(echo_app(), database_url=url)


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["export", "--tenant", "t"]])
@pytest.mark.parametrize(("url", "named"), BAD_URLS[:2] + BAD_URLS[7:8] + BAD_URLS[-3:-2])
def test_a_bad_url_is_one_line_and_exit_2(
    command: list[str], url: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--database-url", url]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and named in err and "s3cret" not in err


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}").geturl()


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["export", "--tenant", "t"]])
def test_a_refused_login_or_connection_is_one_line(
    command: list[str], postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for url, named in (
        (_as_user(postgres_url, "tg_no_such_role"), 'role "tg_no_such_role" does not exist'),
        (postgres_url.rsplit("/", 1)[0] + "/tg_no_such_database", "does not exist"),
        (f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/app", "Connect call failed"),
    ):
        assert main([*command, "--database-url", url]) == 2, url
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and named in err, err
        assert "s3cret" not in err and "Traceback" not in err


async def test_the_url_sets_the_pool_and_the_statement_cache(postgres_url: str) -> None:
    async def named_statements(query: str) -> tuple[int, int, int]:
        database = Database(postgres_url + query)
        await database.connect()
        try:
            async with database.connection() as conn:
                for _ in range(3):
                    await conn.fetchval("SELECT $1::int + 1", 1)
                kept = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
                pool = database._pool
                assert pool is not None
                return kept, pool.get_min_size(), pool.get_max_size()
        finally:
            await database.close()

    uncached, cached = await asyncio.gather(
        named_statements("?statement_cache_size=0&pool_min_size=2&pool_max_size=3"),
        named_statements(""),
    )
    assert uncached == (0, 2, 3)  # not one statement left on the server connection
    assert cached[0] >= 1 and cached[1:] == (1, 10)
    assert Database(postgres_url + "?pool_max_size=3", max_size=5)._max_size == 5  # code wins


def test_a_login_that_may_not_migrate_is_one_line(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A login that owns its database but may neither create roles nor act as the gateway's
    owner role (which the test database's migrations have created already)."""
    suffix = uuid.uuid4().hex[:10]
    login, name = f"tg_weak_{suffix}", f"tg_weak_{suffix}"
    asyncio.run(as_admin(f'CREATE ROLE "{login}" LOGIN'))
    try:
        asyncio.run(as_admin(f'CREATE DATABASE "{name}" OWNER "{login}"'))
        url = _as_user(postgres_url.rsplit("/", 1)[0] + "/" + name, login)
        for command in (["migrate"], ["serve"]):
            assert main([*command, "--database-url", url]) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, err
            assert "may not apply the migrations" in err and "tenant_gateway_owner" in err
    finally:
        asyncio.run(as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(as_admin(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"'))
