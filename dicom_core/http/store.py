"""STOW-RS routes: POST and PUT on /studies and /studies/{study} (PS3.18 10.5)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.errors import PayloadTooLarge
from dicom_core.http.context import base_url, partition_of, services_for, uid_param
from dicom_core.http.multipart import DICOM, check_store_media_type, read_multipart, read_single_part
from dicom_core.http.negotiation import choose
from dicom_core.http.routing import Route
from dicom_core.operations.store import StoreRequest, store_instances

_RESPONSE_TYPES = ["application/dicom+json", "application/json"]


async def store(request: Request) -> Response:
    # Check everything that needs no body first: a refused request reads nothing.
    response_type = choose(request.headers.get("accept"), _RESPONSE_TYPES)
    partition = partition_of(request)
    study = uid_param(request, "study", "StudyInstanceUID") if "study" in request.path_params else None
    media_type = check_store_media_type(request.headers.get("content-type"))
    services = await services_for(request)
    limits = services.settings.limits
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise PayloadTooLarge(
            f"the request body ({declared} bytes) exceeds the maximum request size of {limits.max_request_bytes} "
            "bytes (setting DICOM_MAX_REQUEST_BYTES); split it into several requests"
        )
    if media_type.type == DICOM:
        parts = read_single_part(request.stream(), limits)
    else:
        parts = read_multipart(request.stream(), media_type.parameters["boundary"], limits)
    result = await store_instances(
        services,
        StoreRequest(partition=partition, study_uid=study, upsert=request.method == "PUT", base_url=base_url(request)),
        parts,
    )
    # dicomweb-client reads the body only when the type is exactly application/dicom+json
    # (docs/architecture.md, "Facts the code relies on").
    return Response(
        _json_bytes(result.to_dicom_json()),
        status_code=result.status,
        media_type=response_type,
    )


def _json_bytes(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


ROUTES = [
    Route("store_instances", "/studies", ("POST", "PUT"), store),
    Route("store_study_instances", "/studies/{study}", ("POST", "PUT"), store),
]
