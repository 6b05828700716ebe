"""Property-based fuzzing of the admin API from its own OpenAPI document (schemathesis).

The schema is the one the gateway serves at ``/api/v1/tenants/openapi.json``; the gateway runs
in process on the embedded memory stores (schemathesis drives the ASGI app itself, one lifespan
for the whole run). Every generated case gets a freshly registered tenant, so a generated DELETE,
revocation or suspension cannot spoil later cases, and most generated ``{tenant_id}``,
``{user_id}`` and ``{key_id}`` values are swapped for that tenant's own ids, so the fuzzer
reaches the handlers instead of a 404: in the fuzzing phase by a ``flatmap_path_parameters``
hook (about 7 cases in 8; the rest keep the generated id), in the coverage phase by a
``map_case`` hook (every case except those probing the path parameters themselves). Cases run
with the tenant's admin key, and again, with fewer examples, with an operator JWT.

Checks on every response: no 5xx other than the 501 and 503 the document declares; the status
is one the document declares for the operation (``status_code_conformance``); an error is
``application/problem+json`` with a string ``code``. Deterministic: derandomized Hypothesis,
no example database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import status_code_conformance
from starlette.applications import Starlette

from tenant_gateway import TenantGateway

PREFIX = "/api/v1/tenants"
SECRET = "fuzz-operator-secret-0123456789abcdef"
TENANT_EXAMPLES = 50
OPERATOR_EXAMPLES = 15
DECLARED_SERVER_ERRORS = frozenset({501, 503})

# Placeholders the hooks put in place of generated ids; the test swaps in the real ones
# (URL-safe: schemathesis percent-encodes path parameters as it generates them).
OWN_TENANT = "OWN-TENANT-ID"
OWN_USER = "OWN-ADMIN-USER-ID"
OWN_KEY = "OWN-REGISTRATION-KEY-ID"
OWN = {"tenant_id": OWN_TENANT, "user_id": OWN_USER, "key_id": OWN_KEY}

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    }
)

# An import's body (a string of bytes in the document) goes as it is, like any other binary body.
schemathesis.serializer.alias("application/x-ndjson", "application/octet-stream")

# Every case registers a tenant anonymously, from one address: no sign-up limit here.
gateway = TenantGateway(Starlette(), admin_jwt_secret=SECRET, signup_rate=None)
schema = schemathesis.openapi.from_asgi(f"{PREFIX}/openapi.json", gateway, config=CONFIG)


FuzzCase = schemathesis.Case[Any]  # the operation type parameter is not needed here


def _own_mostly(name: str, generated: Any) -> st.SearchStrategy[Any]:
    own = OWN.get(name, generated)
    return st.integers(0, 7).map(lambda draw: generated if draw == 3 else own)


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Fuzzing phase: each id is the registered tenant's own in about 7 cases out of 8."""
    if not path_parameters:
        return st.just(path_parameters)
    return st.fixed_dictionaries(
        {name: _own_mostly(name, value) for name, value in path_parameters.items()}
    )


@schema.hook
def map_case(context: schemathesis.HookContext, case: FuzzCase) -> FuzzCase:
    """Coverage phase (fixed boundary values such as ``"0"``): the tenant's own ids, except in
    the cases that probe the path parameters themselves."""
    meta = case.meta
    if meta is None or meta.phase.name != "coverage" or not case.path_parameters:
        return case
    if getattr(meta.phase.data, "parameter_location", None) == "path":
        return case
    case.path_parameters = {
        name: OWN.get(name, value) for name, value in case.path_parameters.items()
    }
    return case


@dataclass(frozen=True, slots=True)
class Registered:
    tenant_id: str
    api_key: str
    user_id: str
    key_id: str


def _json(response: schemathesis.Response) -> Any:
    return response.json()


def register() -> Registered:
    """A new tenant on the professional plan, with its admin user's and first key's ids."""
    body: dict[str, Any] = {
        "name": "Fuzz Corp",
        "plan": "professional",
        "admin_email": "admin@fuzz.example",
    }
    registered = schema["/register"]["POST"].Case(body=body, media_type="application/json").call()
    assert registered.status_code == 201, registered.text
    tenant = _json(registered)
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    own = {"tenant_id": tenant["id"]}
    (user,) = _json(
        schema["/{tenant_id}/users"]["GET"].Case(path_parameters=own).call(headers=headers)
    )
    (key,) = _json(
        schema["/{tenant_id}/keys"]["GET"].Case(path_parameters=own).call(headers=headers)
    )
    return Registered(tenant["id"], tenant["api_key"], user["id"], key["id"])


def operator_token() -> str:
    now = int(time.time())  # within the gateway's default 24 h token lifetime
    claims = {"sub": "fuzz", "role": "operator", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def not_a_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: FuzzCase
) -> bool | None:
    status = response.status_code
    assert status < 500 or status in DECLARED_SERVER_ERRORS, (
        f"server error {status}: {response.text[:1000]}"
    )
    return None


def problem_details(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: FuzzCase
) -> bool | None:
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == "application/problem+json", (
        f"{response.status_code} with content-type {content_type!r}: {response.text[:500]}"
    )
    document = _json(response)
    assert isinstance(document, dict) and isinstance(document.get("code"), str), (
        f"{response.status_code} problem without a string `code`: {response.text[:500]}"
    )
    return None


CHECKS: list[schemathesis.CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    problem_details,
]


def fuzz(case: FuzzCase, credential: str | None) -> None:
    own = register()
    ids = {OWN_TENANT: own.tenant_id, OWN_USER: own.user_id, OWN_KEY: own.key_id}
    if case.path_parameters:
        case.path_parameters = {
            name: ids.get(value, value) if isinstance(value, str) else value
            for name, value in case.path_parameters.items()
        }
    token = own.api_key if credential is None else credential
    case.headers["Authorization"] = f"Bearer {token}"
    response = case.call()
    case.validate_response(response, checks=CHECKS)


FUZZ_SETTINGS = settings(
    max_examples=TENANT_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@FUZZ_SETTINGS
def test_admin_api_as_tenant(case: FuzzCase) -> None:
    fuzz(case, credential=None)


@schema.parametrize()
@settings(FUZZ_SETTINGS, max_examples=OPERATOR_EXAMPLES)
def test_admin_api_as_operator(case: FuzzCase) -> None:
    fuzz(case, credential=operator_token())


def _dangling_refs(node: Any, root: dict[str, Any], where: str = "#") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = root
            for part in ref.removeprefix("#/").split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            if not ref.startswith("#/") or target is None:
                found.append(f"{where}: {ref}")
        for key, value in node.items():
            found += _dangling_refs(value, root, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _dangling_refs(value, root, f"{where}/{index}")
    return found


def test_every_ref_resolves() -> None:
    """Every ``$ref`` in the served document points at something in it (else generators,
    client generators and validators cannot use the operation)."""
    assert _dangling_refs(schema.raw_schema, schema.raw_schema) == []
