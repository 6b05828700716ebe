"""``tenant-gateway token``: an operator token minted from the configured secret, with the claims
the admin API verifies; and the admin API's answer when operator tokens are off (issue 20)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from benchmarks.launch import CLI, Server
from tenant_gateway import TenantGateway
from tenant_gateway.admin.auth import OperatorAuth, mint_operator_token
from tenant_gateway.cli import main
from tenant_gateway.exceptions import Problem

from .apps import echo_app

SECRET = "a-secret-of-at-least-thirty-two-characters"
OTHER = "another-secret-of-thirty-two-characters-or-more"
T = "/api/v1/tenants"


def token(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tenant-gateway token *args`` in a process of its own, with only ``env``'s TG_* set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TG_")}
    return subprocess.run(
        [*CLI, "token", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )


@pytest.fixture(autouse=True)
def no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TG_ADMIN_JWT_SECRET", "TG_ADMIN_JWT_MAX_LIFETIME"):
        monkeypatch.delenv(name, raising=False)


def test_the_minted_claims_are_the_ones_verified() -> None:
    now = time.time()
    minted = mint_operator_token(SECRET, "alice", 3600, now=now)
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims == {"sub": "alice", "role": "operator", "iat": int(now), "exp": int(now) + 3600}
    assert OperatorAuth(secret=SECRET, max_lifetime=3600).verify(minted) == "alice"
    with pytest.raises(Problem):  # one second longer than the gateway allows
        OperatorAuth(secret=SECRET, max_lifetime=3599).verify(minted)
    scoped = mint_operator_token(SECRET, "bob", 60, now=now, audience="gw", issuer="https://ops")
    assert OperatorAuth(secret=SECRET, audience="gw", issuer="https://ops").verify(scoped) == "bob"


@pytest.fixture(scope="module")
def gateway_server() -> Iterator[Server]:
    """``serve`` with operator tokens enabled by the flag, living up to 7 days (variable)."""
    server = Server("--admin-jwt-secret", SECRET, env={"TG_ADMIN_JWT_MAX_LIFETIME": "7d"})
    server.wait_ready()
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_a_minted_token_opens_the_operator_endpoints_of_a_served_gateway(
    gateway_server: Server,
) -> None:
    minted = token("--sub", "alice", env={"TG_ADMIN_JWT_SECRET": SECRET})
    assert minted.returncode == 0 and minted.stderr == "", minted.stderr
    (line,) = minted.stdout.splitlines()
    week = token("--sub", "ops", "--ttl", "7d", "--admin-jwt-secret", SECRET,
                 env={"TG_ADMIN_JWT_MAX_LIFETIME": "7d"})  # fmt: skip
    assert week.returncode == 0, week.stderr
    forged = token("--sub", "mallory", env={"TG_ADMIN_JWT_SECRET": OTHER})
    assert forged.returncode == 0
    with httpx.Client(base_url=gateway_server.base) as client:
        for good in (line, week.stdout.strip()):
            listed = client.get(f"{T}/", headers={"Authorization": f"Bearer {good}"})
            assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
        refused = client.get(f"{T}/", headers={"Authorization": f"Bearer {forged.stdout.strip()}"})
        assert refused.status_code == 401 and "Signature" in refused.json()["detail"]
    claims = jwt.decode(line, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 3600  # --ttl 1h


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (
            (),
            {},
            "needs the gateway's operator secret: set TG_ADMIN_JWT_SECRET or --admin-jwt-secret",
        ),
        (("--admin-jwt-secret", "short"), {}, "--admin-jwt-secret must be at least 32 characters"),
        ((), {"TG_ADMIN_JWT_SECRET": "short"}, "(from TG_ADMIN_JWT_SECRET) must be at least 32"),
        (("--ttl", "soon"), {"TG_ADMIN_JWT_SECRET": SECRET}, "--ttl must be a duration such as"),
        (("--ttl", "0m"), {"TG_ADMIN_JWT_SECRET": SECRET}, "--ttl must be a duration such as"),
        (
            ("--ttl", "7d"),
            {"TG_ADMIN_JWT_SECRET": SECRET},
            "--ttl 7d is longer than operator tokens may live (86400 s): shorten it, or raise"
            " --admin-jwt-max-lifetime (TG_ADMIN_JWT_MAX_LIFETIME)",
        ),
        (
            ("--ttl", "2h", "--admin-jwt-max-lifetime", "30m"),
            {"TG_ADMIN_JWT_SECRET": SECRET},
            "--ttl 2h is longer than operator tokens may live (1800 s)",
        ),
    ],
)
def test_token_errors_name_the_fix(
    args: tuple[str, ...],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["token", "--sub", "alice", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and said in err, err
    assert "'short'" not in err


def test_a_token_needs_a_subject(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TG_ADMIN_JWT_SECRET", SECRET)
    assert main(["token", "--sub", " "]) == 2
    assert "--sub must name who the token is for" in capsys.readouterr().err
    assert main(["token", "--sub", "ci", "--ttl", "none", "--admin-jwt-max-lifetime", "none"]) == 2
    assert main(["token", "--sub", "ci", "--ttl", "90d", "--admin-jwt-max-lifetime", "none"]) == 0
    minted = capsys.readouterr().out.strip()
    assert OperatorAuth(secret=SECRET, max_lifetime=None).verify(minted) == "ci"


async def test_without_operator_tokens_the_401_says_how_to_enable_them() -> None:
    gateway = TenantGateway(echo_app())
    bearer = {"Authorization": f"Bearer {mint_operator_token(SECRET, 'a', 60, now=time.time())}"}
    await gateway.startup()
    try:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get(f"{T}/", headers=bearer)
    finally:
        await gateway.shutdown()
    assert answer.status_code == 401
    detail = answer.json()["detail"]
    assert detail.startswith("Operator tokens are not enabled on this gateway: ")
    assert "TG_ADMIN_JWT_SECRET or --admin-jwt-secret" in detail
    assert "tenant-gateway token --sub NAME" in detail
