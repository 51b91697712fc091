"""The local ASGI application: the route table served by Starlette, the health check and the operations worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_core.events import run_operations_forever
from dicom_core.http.context import provide_services
from dicom_core.http.errors import error_response
from dicom_core.http.routes import route_table
from dicom_core.operations import describing
from dicom_core.operations.analytics import run_analytics_sync
from dicom_core.operations.health import run_health_checks
from dicom_core.services import Services
from dicom_core.settings import Settings


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no DICOMweb resource at {request.url.path}; resources live under /v2")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.url.path}")


class _ProvideServices:
    """ASGI middleware: every request's handlers use the app's services (http/context.py)."""

    def __init__(self, app: ASGIApp, holder: dict[str, Services]) -> None:
        self.app = app
        self.holder = holder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "services" in self.holder:
            provide_services(scope, self.holder["services"])
        await self.app(scope, receive, send)


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The app over ``settings``: it opens the lake and index at startup and closes them at shutdown.

    With ``services`` (already open, e.g. a test's), the app uses those and leaves them open.
    """
    holder: dict[str, Services] = {} if services is None else {"services": services}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = "services" not in holder
        if owned:
            holder["services"] = await Services.open(settings)
        describing.start(holder["services"].settings.limits)
        timers = [
            asyncio.create_task(run_health_checks(holder["services"])),
            asyncio.create_task(run_analytics_sync(holder["services"])),
            asyncio.create_task(run_operations_forever(holder["services"])),
        ]
        try:
            yield
        finally:
            for timer in timers:
                timer.cancel()
            for timer in timers:
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
            if owned:
                await holder.pop("services").close()

    routes = [StarletteRoute(route.path, route.endpoint, methods=list(route.methods), name=route.name) for route in route_table()]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(_ProvideServices, holder=holder)],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
