"""POST /v2/export (also under /v2/partitions/{partition}): start an export operation (docs/export.md)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.http.context import partition_of, root_url, services_for
from dicom_core.http.extended_tags import json_body, json_response
from dicom_core.http.negotiation import choose
from dicom_core.http.routing import Route
from dicom_core.operations.export import start_export

_RESPONSE_TYPES = ["application/json"]


async def export(request: Request) -> Response:
    choose(request.headers.get("accept"), _RESPONSE_TYPES)
    partition = partition_of(request)
    operation = await start_export(await services_for(request), await json_body(request), partition)
    return json_response({"id": operation.id, "href": f"{root_url(request)}/operations/{operation.id}"}, request, 202)


ROUTES = [Route("export", "/export", ("POST",), export)]
