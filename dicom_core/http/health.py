"""GET /health/check: the latest outcome of the 30-second lake health check (anonymous, no partition form)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_core.http.auth import Access
from dicom_core.http.context import services_for
from dicom_core.http.routing import Route
from dicom_core.operations.health import HEALTHY, health_status


async def health_check(request: Request) -> Response:
    """200 with the status when Healthy, 503 when Degraded (load balancers and probes read the status code)."""
    status = await health_status(await services_for(request))
    return JSONResponse(status.to_json(), status_code=200 if status.status == HEALTHY else 503)


ROUTES = [Route("health_check", "/health/check", ("GET",), health_check, partitioned=False, access=Access.PUBLIC)]
