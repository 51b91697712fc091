"""Azure Functions entry point (Python v2 programming model).

Thin by design: it binds triggers to dicom_core. Every entry of the route table
becomes one HTTP-triggered function named after it, using the HTTP streams
extension (azurefunctions-extensions-http-fastapi) so request and response
bodies stream instead of being buffered and capped at ~100 MB.
"""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from dicom_core.http.errors import Handler
from dicom_core.http.routes import route_table

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _bind(name: str, endpoint: Handler):
    async def handle(req: Request) -> Response:
        return await endpoint(req)

    # The worker indexes functions by their Python name too: give each its route's name.
    handle.__name__ = handle.__qualname__ = name
    return handle


for _route in route_table():
    app.function_name(_route.name)(
        app.route(route=_route.path.lstrip("/"), methods=list(_route.methods))(_bind(_route.name, _route.endpoint))
    )
