"""One small app per framework, the same two routes in each: ``GET /items/{item_id}`` (an int,
answered with the tenant that called) and ``POST /echo`` (the body's length).

``ROUTES[framework]`` is how each framework spells the first route's template, as the usage
report shows it. Django is configured here (settings are global to the process): importing
this module configures it, with ``tenant_gateway.django_routes`` as its only middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import django
import litestar
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from fastapi import FastAPI, Request
from litestar.params import FromPath
from quart import Quart
from quart import request as quart_request
from starlette.types import ASGIApp, Receive, Scope, Send

from tenant_gateway import get_current_tenant, quart_routes

ROUTES = {
    "fastapi": "/items/{item_id}",
    "litestar": "/items/{item_id}",
    "django": "/items/<int:item_id>",
    "quart": "/items/<int:item_id>",
    "raw": "/items/{item_id}",
}


OPEN_PLAN = {
    "plans": {
        "open": {
            "max_users": None,
            "monthly_calls": None,
            "burst_per_second": None,
            "price_cents": 0,
        }
    }
}
"""A plan whose calls are counted in process until a flush: what is lost unless flushed."""


def item_answer(item_id: int) -> dict[str, Any]:
    return {"id": item_id, "tenant": get_current_tenant().id}


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return item_answer(item_id)

    @api.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return api


@litestar.get("/items/{item_id:int}")
async def litestar_item(item_id: FromPath[int]) -> dict[str, Any]:
    return item_answer(item_id)


@litestar.post("/echo", status_code=200)
async def litestar_echo(request: litestar.Request[Any, Any, Any]) -> dict[str, int]:
    return {"bytes": len(await request.body())}


def litestar_app() -> litestar.Litestar:
    return litestar.Litestar(route_handlers=[litestar_item, litestar_echo])


def quart_app() -> Quart:
    app = Quart(__name__)

    @app.get("/items/<int:item_id>")
    async def item(item_id: int) -> dict[str, Any]:
        return item_answer(item_id)

    @app.post("/echo")
    async def echo() -> dict[str, int]:
        return {"bytes": len(await quart_request.get_data())}

    return quart_routes(app)


async def django_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse(item_answer(item_id))


async def django_echo(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"bytes": len(request.body)})


urlpatterns = [path("items/<int:item_id>", django_item), path("echo", django_echo)]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["tenant_gateway.django_routes"],
        INSTALLED_APPS=[],
    )
    django.setup()


def django_app() -> ASGIApp:
    return get_asgi_application()  # type: ignore[no-any-return]


def raw_app() -> ASGIApp:
    """No framework: routes by hand, and leaves its template where the gateway reads it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        status, body = 404, b'{"detail":"not found"}'
        parts = scope["path"].split("/")
        if scope["method"] == "GET" and len(parts) == 3 and parts[1] == "items":
            scope["path_template"] = "/items/{item_id}"
            status, body = 200, b"{}"
        elif scope["method"] == "POST" and scope["path"] == "/echo":
            scope["path_template"] = "/echo"
            received, more = 0, True
            while more:
                message = await receive()
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
            status, body = 200, b'{"bytes":%d}' % received
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


APPS: dict[str, Callable[[], Any]] = {
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "django": django_app,
    "quart": quart_app,
    "raw": raw_app,
}
