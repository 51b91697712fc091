"""Change feed routes: GET /changefeed and /changefeed/latest (Azure DICOM service v2).

The feed spans every partition (each entry names its PartitionName), as the Azure
service's does, so these routes have no /partitions/{partition} form.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_core.http.context import services_for
from dicom_core.http.routing import Route
from dicom_core.operations.changefeed import FeedQuery, latest_entry, read_feed


async def change_feed(request: Request) -> Response:
    query = FeedQuery.parse(request.query_params)
    return JSONResponse(await read_feed(await services_for(request), query))


async def latest(request: Request) -> Response:
    include_metadata = FeedQuery.parse(request.query_params).include_metadata
    entry = await latest_entry(await services_for(request), include_metadata)
    return Response(status_code=204) if entry is None else JSONResponse(entry)


ROUTES = [
    Route("change_feed", "/changefeed", ("GET",), change_feed, partitioned=False),
    Route("change_feed_latest", "/changefeed/latest", ("GET",), latest, partitioned=False),
]
