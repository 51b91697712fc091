"""Extended query tags, operations and partitions: the Azure DICOM v2 management routes (docs/extended-query-tags.md).

None has a partition form: tags and operations are the service's, not a partition's.
Reading them is a read; adding, changing and deleting tags are writes, as Azure's roles
have them (docs/security.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.errors import BadRequest, NotFound, UnsupportedMediaType
from dicom_core.http.auth import Access
from dicom_core.http.context import base_url, body_at_most, partition_of, root_url, services_for
from dicom_core.http.errors import Handler
from dicom_core.http.media_types import MediaType
from dicom_core.http.negotiation import choose
from dicom_core.http.routing import Route
from dicom_core.operations import extended_tags
from dicom_core.operations.jobs import operation_json
from dicom_core.operations.partitions import list_partitions
from dicom_core.services import Services
from dicom_core.storage.records import OperationRecord

_RESPONSE_TYPES = ["application/json"]
_MAX_BODY = 1024 * 1024  # 128 tags take a few KiB


async def json_body(request: Request) -> object:
    """The request body as JSON (``application/json``), at most 1 MiB; 400, 413 or 415 say what is wrong."""
    content_type = request.headers.get("content-type")
    if content_type is None or MediaType.parse(content_type).type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    body = await body_at_most(request, _MAX_BODY, f"the body is larger than {_MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None


def json_response(document: object, request: Request, status: int = 200) -> Response:
    media_type = choose(request.headers.get("accept"), _RESPONSE_TYPES)
    return Response(json.dumps(document, separators=(",", ":")).encode(), status_code=status, media_type=media_type)


def _page(request: Request, maximum: int) -> tuple[int, int]:
    params = request.query_params
    unknown = set(params) - {"limit", "offset"}
    if unknown:
        raise BadRequest(f"query parameter {sorted(unknown)[0][:40]!r} is not understood here; use limit and offset")
    return extended_tags.page_bounds(params.get("limit"), params.get("offset"), maximum)


def operation_accepted(operation: OperationRecord, request: Request) -> Response:
    """202 Accepted with the operation's id and the URL to follow it at (Azure DICOM v2)."""
    return json_response({"id": operation.id, "href": f"{root_url(request)}/operations/{operation.id}"}, request, 202)


def starting(start: Callable[[Services, object, str], Awaitable[OperationRecord]]) -> Handler:
    """A handler that starts an operation from the JSON body, in the URL's partition, and answers 202."""

    async def handler(request: Request) -> Response:
        choose(request.headers.get("accept"), _RESPONSE_TYPES)
        operation = await start(await services_for(request), await json_body(request), partition_of(request))
        return operation_accepted(operation, request)

    return handler


async def add_tags(request: Request) -> Response:
    choose(request.headers.get("accept"), _RESPONSE_TYPES)
    services = await services_for(request)
    return operation_accepted(await extended_tags.add_tags(services, await json_body(request)), request)


async def list_tags(request: Request) -> Response:
    limit, offset = _page(request, extended_tags.MAX_PAGE)
    return json_response(await extended_tags.list_tags(await services_for(request), limit, offset, base_url(request)), request)


async def get_tag(request: Request) -> Response:
    tag = await extended_tags.get_tag(await services_for(request), request.path_params["tag"], base_url(request))
    return json_response(tag, request)


async def update_tag(request: Request) -> Response:
    choose(request.headers.get("accept"), _RESPONSE_TYPES)
    services = await services_for(request)
    body = await json_body(request)
    return json_response(await extended_tags.update_tag(services, request.path_params["tag"], body, base_url(request)), request)


async def delete_tag(request: Request) -> Response:
    await extended_tags.delete_tag(await services_for(request), request.path_params["tag"])
    return Response(status_code=204)


async def tag_errors(request: Request) -> Response:
    limit, offset = _page(request, extended_tags.MAX_ERRORS_PAGE)
    errors = await extended_tags.tag_errors(await services_for(request), request.path_params["tag"], limit, offset)
    return json_response(errors, request)


async def get_operation(request: Request) -> Response:
    operation_id = request.path_params["operation"]
    services = await services_for(request)
    record = await services.operations.get(operation_id) if operation_id.isalnum() and len(operation_id) <= 64 else None
    if record is None:
        raise NotFound(f"operation {operation_id[:80]} is not known")
    return json_response(operation_json(record, base_url(request)), request)


async def partitions(request: Request) -> Response:
    return json_response(await list_partitions(await services_for(request)), request)


ROUTES = [
    Route("add_extended_query_tags", "/extendedquerytags", ("POST",), add_tags, partitioned=False),
    Route("list_extended_query_tags", "/extendedquerytags", ("GET",), list_tags, partitioned=False),
    Route("get_extended_query_tag", "/extendedquerytags/{tag}", ("GET",), get_tag, partitioned=False),
    Route("update_extended_query_tag", "/extendedquerytags/{tag}", ("PATCH",), update_tag, partitioned=False),
    Route(
        "delete_extended_query_tag", "/extendedquerytags/{tag}", ("DELETE",), delete_tag, partitioned=False, access=Access.WRITE
    ),
    Route("extended_query_tag_errors", "/extendedquerytags/{tag}/errors", ("GET",), tag_errors, partitioned=False),
    Route("get_operation", "/operations/{operation}", ("GET",), get_operation, partitioned=False),
    Route("list_partitions", "/partitions", ("GET",), partitions, partitioned=False),
]
