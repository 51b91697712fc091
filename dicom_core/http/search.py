"""QIDO-RS routes: GET on /studies, /series, /instances and their study and series forms (PS3.18 10.6)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.dicom.query import Level
from dicom_core.http.context import base_url, partition_of, services_for, uid_param
from dicom_core.http.errors import Handler
from dicom_core.http.negotiation import choose
from dicom_core.http.routing import Route
from dicom_core.operations.search import SearchRequest, search

_RESPONSE_TYPES = ["application/dicom+json", "application/json"]


def _searching(level: Level) -> Handler:
    """The handler of searches for ``level`` matches (scoped to the study and series in the URL, if any)."""

    async def handle(request: Request) -> Response:
        response_type = choose(request.headers.get("accept"), _RESPONSE_TYPES)
        params = request.path_params
        result = await search(
            await services_for(request),
            SearchRequest(
                partition=partition_of(request),
                level=level,
                parameters=request.query_params.multi_items(),
                base_url=base_url(request),
                study=uid_param(request, "study", "StudyInstanceUID") if "study" in params else None,
                series=uid_param(request, "series", "SeriesInstanceUID") if "series" in params else None,
            ),
        )
        # 200 with [] when nothing matches (PS3.18 10.6.3.2); dicomweb-client and OHIF accept it.
        # dicomweb-client reads the body only when the type is exactly application/dicom+json
        # (docs/architecture.md, "Facts the code relies on").
        headers = {"Warning": result.warning} if result.warning else {}
        if result.erroneous:  # as Azure: the extended query tags of the query that some instance's value did not fit
            headers["erroneous-dicom-attributes"] = ",".join(result.erroneous)
        return Response(
            json.dumps(result.matches, separators=(",", ":"), ensure_ascii=False).encode(),
            status_code=200,
            media_type=response_type,
            headers=headers,
        )

    return handle


ROUTES = [
    Route("search_studies", "/studies", ("GET",), _searching(Level.STUDY)),
    Route("search_series", "/series", ("GET",), _searching(Level.SERIES)),
    Route("search_instances", "/instances", ("GET",), _searching(Level.INSTANCE)),
    Route("search_study_series", "/studies/{study}/series", ("GET",), _searching(Level.SERIES)),
    Route("search_study_instances", "/studies/{study}/instances", ("GET",), _searching(Level.INSTANCE)),
    Route("search_series_instances", "/studies/{study}/series/{series}/instances", ("GET",), _searching(Level.INSTANCE)),
]
