"""DELETE routes for a study, a series and an instance (Azure DICOM service v2 delete API).

204 when deleted; 404 naming the level that is not stored.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.http.context import scope_of, services_for
from dicom_core.http.routing import Route
from dicom_core.operations.delete import delete


async def delete_resource(request: Request) -> Response:
    await delete(await services_for(request), scope_of(request))
    return Response(status_code=204)


ROUTES = [
    Route("delete_study", "/studies/{study}", ("DELETE",), delete_resource),
    Route("delete_series", "/studies/{study}/series/{series}", ("DELETE",), delete_resource),
    Route("delete_instance", "/studies/{study}/series/{series}/instances/{instance}", ("DELETE",), delete_resource),
]
