"""The local ASGI application: the route table served by Starlette."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from dicom_core.http.errors import error_response
from dicom_core.http.routes import route_table
from dicom_core.operations.analytics import run_analytics_sync
from dicom_core.operations.health import run_health_checks
from dicom_core.services import Services
from dicom_core.settings import Settings


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no DICOMweb resource at {request.url.path}; resources live under /v2")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.url.path}")


def create_app(settings: Settings | None = None) -> Starlette:
    """The app, opening the lake and index connections at startup and closing them at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.services = await Services.open(settings or Settings.from_environment())
        timers = [
            asyncio.create_task(run_health_checks(app.state.services)),
            asyncio.create_task(run_analytics_sync(app.state.services)),
        ]
        try:
            yield
        finally:
            for timer in timers:
                timer.cancel()
            for timer in timers:
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
            await app.state.services.close()

    routes = [StarletteRoute(route.path, route.endpoint, methods=list(route.methods), name=route.name) for route in route_table()]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
