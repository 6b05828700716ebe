"""Small wrapped apps for the tests."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tenant_gateway import current_tenant, get_current_tenant


async def whoami(request: Request) -> Response:
    tenant = request.scope["state"]["tenant"]
    var = current_tenant.get()
    return JSONResponse(
        {
            "scope_state": tenant.id,
            "context_var": var.id if var else None,
            "get_current_tenant": get_current_tenant().id,
        }
    )


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["item_id"]})


async def echo_body(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


async def fail(request: Request) -> Response:
    return JSONResponse({"error": "boom"}, status_code=503)


async def public(request: Request) -> Response:
    return JSONResponse({"tenant": request.scope.get("state", {}).get("tenant") is not None})


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"tenant": get_current_tenant().id})
    await websocket.close()


def echo_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/items/{item_id}", item),
            Route("/echo", echo_body, methods=["POST"]),
            Route("/fail", fail),
            Route("/public", public),
            WebSocketRoute("/ws", ws),
        ]
    )
