"""What the usage report by route needs from frameworks that keep their route off the scope.

The gateway reads an answered call's route template from the ASGI scope: the template in
``scope["path_template"]`` (Litestar puts it there), else the ``path`` of ``scope["route"]``
(Starlette, FastAPI). Django and Quart match routes on their own request objects; the two
helpers here copy the template they matched into ``scope["path_template"]``. Neither
framework is imported until its helper is used.

- Django: ``MIDDLEWARE = ["tenant_gateway.frameworks.django_routes", …]``;
- Quart: ``quart_routes(app)`` once, after making the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["PATH_TEMPLATE", "django_routes", "quart_routes"]

PATH_TEMPLATE = "path_template"
"""The scope key the gateway reads an answered call's route template from."""

_App = TypeVar("_App", bound="Quart")


def _note(scope: object, template: str) -> None:
    if isinstance(scope, MutableMapping):
        scope[PATH_TEMPLATE] = template


def _note_django_route(request: Any) -> None:
    """``request.resolver_match.route`` (``items/<int:item_id>``, joined across includes) as
    a path: ``/items/<int:item_id>``. Set once the URL resolved, whatever answered."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if isinstance(route, str):
        _note(getattr(request, "scope", None), "/" + route)


def django_routes(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Django middleware: the URL pattern Django resolved a request to, for the gateway's usage
    by route. Runs in Django's sync and async modes alike (no thread hop)."""
    from asgiref.sync import iscoroutinefunction  # Django's own dependency

    async def async_middleware(request: Any) -> Any:
        response = await cast(Callable[[Any], Awaitable[Any]], get_response)(request)
        _note_django_route(request)
        return response

    def sync_middleware(request: Any) -> Any:
        response = get_response(request)
        _note_django_route(request)
        return response

    return async_middleware if iscoroutinefunction(get_response) else sync_middleware


# Django reads these from the middleware factory to choose the mode it runs it in.
vars(django_routes).update(sync_capable=True, async_capable=True)


def quart_routes(app: _App) -> _App:
    """Hand the gateway Quart's matched rule (``request.url_rule.rule``, e.g.
    ``/items/<int:item_id>``), for requests and websockets. The hook runs before the app's
    own ``before_request`` functions, so one that answers early still leaves the route."""
    from quart import request, websocket

    async def note_request_route() -> None:
        if request.url_rule is not None:
            _note(request.scope, request.url_rule.rule)

    async def note_websocket_route() -> None:
        if websocket.url_rule is not None:
            _note(websocket.scope, websocket.url_rule.rule)

    app.before_request_funcs[None].insert(0, note_request_route)
    app.before_websocket_funcs[None].insert(0, note_websocket_route)
    return app
