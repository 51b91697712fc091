"""UPS-RS routes: /workitems and its Workitem resources (PS3.18 11; docs/workitems.md)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.dicom.uids import uid_problem
from dicom_core.dicom.workitem import MAX_WORKITEM_BYTES
from dicom_core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from dicom_core.http.context import base_url, body_at_most, partition_of, services_for, uid_param
from dicom_core.http.media_types import MediaType
from dicom_core.http.negotiation import choose
from dicom_core.http.routing import Route
from dicom_core.operations.workitems import (
    change_workitem_state,
    create_workitem,
    request_cancellation,
    retrieve_workitem,
    search_workitems,
    update_workitem,
)

_RESPONSE_TYPES = ["application/dicom+json", "application/json"]
_BODY_TYPES = ("application/dicom+json", "application/json")


async def _body(request: Request) -> bytes:
    """The request body as DICOM JSON bytes, at most MAX_WORKITEM_BYTES; 415 for another media type."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_WORKITEM_BYTES:
        raise PayloadTooLarge(f"the body ({declared} bytes) is larger than a workitem may be ({MAX_WORKITEM_BYTES} bytes)")
    content_type = request.headers.get("content-type")
    media_type = MediaType.parse(content_type).type if content_type else None
    if media_type is not None and media_type not in _BODY_TYPES:
        raise UnsupportedMediaType(f"Content-Type {media_type[:80]} is not supported; send application/dicom+json")
    too_large = f"the body is larger than a workitem may be ({MAX_WORKITEM_BYTES} bytes)"
    body = await body_at_most(request, MAX_WORKITEM_BYTES, too_large)
    if body.strip() and media_type is None:
        raise UnsupportedMediaType("the request has a body but no Content-Type; send application/dicom+json")
    return body


def _query_uid(request: Request, names: tuple[str, ...], label: str) -> str | None:
    """A UID given as the bare query (``?1.2.3``, PS3.18 11.4.1.1 and 11.6.1) or as ``name=1.2.3``; None when absent."""
    pairs = parse_qsl(request.url.query, keep_blank_values=True)
    found = []
    for name, value in pairs:
        if name in names:
            if not value:
                raise BadRequest(f"query parameter {name} has no value; give the {label}")
            found.append(value)
        elif not value and name:
            found.append(name)
        else:
            raise BadRequest(f"query parameter {name[:80]!r} is not understood here; give the {label} as ?{{uid}}")
    if len(found) > 1:
        raise BadRequest(f"the query names {len(found)} values; give one {label}")
    if not found:
        return None
    if problem := uid_problem(found[0]):
        raise BadRequest(f"{label} {found[0][:80]!r} in the URL is not a valid UID: {problem}")
    return found[0]


def _json(document: object, media_type: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=200, media_type=media_type, headers=headers)


def _warned(status: int, warning: str | None) -> Response:
    return Response(status_code=status, headers={"Warning": warning} if warning else None)


async def create(request: Request) -> Response:
    partition = partition_of(request)
    uid = _query_uid(request, ("AffectedSOPInstanceUID",), "Workitem UID")
    body = await _body(request)
    uid = await create_workitem(await services_for(request), partition, uid, body)
    location = f"{base_url(request)}/workitems/{uid}"
    return Response(status_code=201, headers={"Location": location, "Content-Location": location})


async def search(request: Request) -> Response:
    media_type = choose(request.headers.get("accept"), _RESPONSE_TYPES)
    result = await search_workitems(await services_for(request), partition_of(request), request.query_params.multi_items())
    # 200 with [] when nothing matches, as QIDO-RS here (PS3.18 8.3.4.4 allows 204 too; Azure sends 204).
    return _json(result.matches, media_type, {"Warning": result.warning} if result.warning else None)


async def retrieve(request: Request) -> Response:
    media_type = choose(request.headers.get("accept"), _RESPONSE_TYPES)
    dataset = await retrieve_workitem(
        await services_for(request), partition_of(request), uid_param(request, "workitem", "Workitem UID")
    )
    return _json([dataset], media_type)


async def update(request: Request) -> Response:
    partition = partition_of(request)
    uid = uid_param(request, "workitem", "Workitem UID")
    transaction_uid = _query_uid(request, ("TransactionUID",), "Transaction UID")
    body = await _body(request)
    await update_workitem(await services_for(request), partition, uid, transaction_uid, body)
    return Response(status_code=200, headers={"Content-Location": f"{base_url(request)}/workitems/{uid}"})


async def change_state(request: Request) -> Response:
    partition = partition_of(request)
    uid = uid_param(request, "workitem", "Workitem UID")
    body = await _body(request)
    return _warned(200, await change_workitem_state(await services_for(request), partition, uid, body))


async def cancel_request(request: Request) -> Response:
    partition = partition_of(request)
    uid = uid_param(request, "workitem", "Workitem UID")
    body = await _body(request)
    return _warned(202, await request_cancellation(await services_for(request), partition, uid, body))


ROUTES = [
    Route("create_workitem", "/workitems", ("POST",), create),
    Route("search_workitems", "/workitems", ("GET",), search),
    Route("retrieve_workitem", "/workitems/{workitem}", ("GET",), retrieve),
    Route("update_workitem", "/workitems/{workitem}", ("POST",), update),
    Route("change_workitem_state", "/workitems/{workitem}/state", ("PUT",), change_state),
    Route("cancel_workitem", "/workitems/{workitem}/cancelrequest", ("POST",), cancel_request),
]
